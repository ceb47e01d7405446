"""Table views of ``xenrs race`` (verdict, witness timeline, copied fields) and ``xenrs sweep``
(summary, and the page as a 64 x 64 map: one row per cache line)."""

from __future__ import annotations

from rich.text import Text

from xenrs_cli.layouts import PAGE_SIZE, decode
from xenrs_cli.race_report import RaceReport, field_sources, timeline, torn_fields
from xenrs_cli.render.console import Table, stdout
from xenrs_cli.render.decode import FIELD_STYLES

MAP_CELLS = {"ok": (".", "green"), "refused": ("x", "dim"), "writer": ("W", "bold red"),
             "reader": ("R", "bold yellow")}
SOURCE_STYLES = {"before": "cyan", "after": "green", "both": "dim", "neither": "bold red"}


def render_race(rep: RaceReport) -> None:
    out = stdout()
    head = Text()
    head.append(f"{rep.model}", style="bold")
    head.append(f"  layout {rep.layout} at 0x{rep.gpa:x}  reader {rep.reader}  "
                f"XEN_RUNSTATE_UPDATE {'on' if rep.update_flag else 'off'}  {rep.event}")
    out.print(head)
    v = rep.verdict
    if rep.refused is not None:
        out.print(Text(f"REFUSED {rep.refused.errno}: {rep.refused.why}", style="bold red"))
        return
    if not v.torn:
        out.print(Text("not torn: no interleaving lets the reader accept a torn snapshot",
                       style="bold green"))
        return
    why = ("the hypervisor's writes alone let it through" if v.cause == "writer" else
           "only the reader's own split load of state_entry_time lets it through")
    out.print(Text(f"TORN (cause: {v.cause}): {why}", style="bold red"))
    out.print(_timeline_table(v.witness))
    w = v.witness
    out.print(f"R1 = R2 = 0x{w.r1:016x} (bit 63 clear: accepted)")
    out.print(_copy_table(rep))


def _timeline_table(w) -> Table:
    t = Table(title="witness (minimal: fewest writer units visible when the reader finishes)",
              title_justify="left", box=None, header_style="bold", pad_edge=False)
    for col, just, width in (("t", "right", 3), ("writer unit", "left", 26),
                             ("reader unit", "left", 11), ("bytes seen / written", "left", 20)):
        t.add_column(col, justify=just, no_wrap=col != "bytes seen / written", min_width=width,
                     overflow="fold")
    for row in timeline(w):
        if row["actor"] == "writer":
            part = {"line 0": " L0", "line 1": " L1"}.get(row["part"], "")
            what = (f"#{row['seq']} g{row['group']} {row['kind']}{part} "
                    f"+{row['offset']}..{row['offset'] + row['len'] - 1}")
            style = FIELD_STYLES.get(row["field"].split(",")[0], "")
            t.add_row(str(row["step"]), Text(what, style=style), "", _hex(row["data"]))
        else:
            t.add_row(str(row["step"]), "", Text(row["unit"], style="bold"),
                      _hex(row["seen"]))
    return t


def _copy_table(rep: RaceReport) -> Table:
    p, w = rep.problem, rep.verdict.witness
    lay = p.lay
    torn = set(torn_fields(p, w))
    got, before, after = decode(lay, w.copy), decode(lay, p.before), decode(lay, p.final)
    t = Table(title="the copy the reader accepted", title_justify="left", box=None,
              header_style="bold", pad_edge=False)
    for col in ("field", "copied", "before", "after", "from", "torn"):
        t.add_column(col, justify="right" if col in ("copied", "before", "after") else "left")
    for name, src in field_sources(p, w).items():
        vals = [_value(name, x) for x in (got, before, after)]
        t.add_row(Text(name, style=FIELD_STYLES.get(name, "")), *vals,
                  Text(src, style=SOURCE_STYLES[src]),
                  Text("TORN", style="bold red") if name in torn else "")
    return t


def _value(name: str, info) -> str:
    if name == "state":
        return f"{info.state_name} ({info.state})"
    if name == "state_entry_time":
        flag = " |UPDATE" if info.update_in_progress else ""
        return f"{info.state_entry_time}{flag}"
    return str(info.time[int(name[5])])


def _hex(h: str, limit: int = 8) -> str:
    b = bytes.fromhex(h)
    return b[:limit].hex(" ") + (" …" if len(b) > limit else "")


def render_sweep(summaries: list, page: int, show_map: bool) -> None:
    out = stdout()
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("model", "layout", "reader", "flag", "refused", "torn", "writer", "reader ",
                "torn offsets"):
        t.add_column(col, justify="right" if col in ("refused", "torn", "writer", "reader ")
                     else "left", overflow="fold")
    for s in summaries:
        d = s.to_json_dict()
        ranges = ", ".join(f"0x{a:03x}" if a == b else f"0x{a:03x}-0x{b:03x}"
                           for a, b in d["torn_offsets"])
        t.add_row(d["model"], d["layout"], d["reader"], "on" if d["update_flag"] else "off",
                  str(d["refused"]), Text(str(d["torn"]), style="bold red" if d["torn"] else
                                          "green"),
                  str(d["torn_writer"]), str(d["torn_reader"]),
                  _short(ranges))
    out.print(t)
    if show_map:
        for s in summaries:
            out.print(_page_map(s, page))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(",", 1)[0] + ", …"


def _page_map(s, page: int) -> Text:
    base = page - page % PAGE_SIZE
    text = Text(f"\n{s.model} {s.layout} flag {'on' if s.update_flag else 'off'}, page "
                f"0x{base:x}: a row per 64-byte line, a column per offset in it\n"
                ". ok  W torn (writer)  R torn (reader)  x refused\n", style="dim")
    text.append("       " + "".join(f"{c:<8x}" for c in range(0, 64, 8)) + "\n", style="dim")
    for line in range(PAGE_SIZE // 64):
        text.append(f"0x{line * 64:03x}  ", style="dim")
        for r in s.results[line * 64:(line + 1) * 64]:
            key = r.cause if r.verdict == "torn" else r.verdict
            ch, style = MAP_CELLS[key]
            text.append(ch, style=style)
        text.append("\n")
    return text
