"""Table and hex views of a decoded runstate area."""

from __future__ import annotations

from rich.text import Text

from xenrs_cli.decode import Decoded
from xenrs_cli.render.console import Table, stdout

# One colour per field, shared by the field table and the hex view.
FIELD_STYLES = {
    "state": "bold cyan",
    "padding": "dim",
    "state_entry_time": "bold magenta",
    "time[0]": "green",
    "time[1]": "yellow",
    "time[2]": "blue",
    "time[3]": "red",
}
STATUS_STYLES = {"present": "green", "zero-filled": "yellow", "excluded": "red", "absent": "red"}


def _value(obj: dict, key: str) -> str:
    v = obj[key]
    return "—" if v is None else str(v)


def _ns(v: int | None) -> str:
    if v is None:
        return "—"
    return f"{v:,} ns ({v / 1e9:,.3f} s)"


def field_table(d: Decoded, obj: dict) -> Table:
    t = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    t.add_column("field")
    t.add_column("offset", justify="right")
    t.add_column("value")
    t.add_column("")
    times = obj["time"]
    values = {
        "state": (f"{obj['state']} ({obj['state_code']})" if obj["state"] is not None else "—",
                  ""),
        "padding": (obj["padding"] or "—", ""),
        "state_entry_time": (_ns(obj["state_entry_time"]),
                             "XEN_RUNSTATE_UPDATE set" if obj["update_in_progress"] else ""),
        "time[0]": (_ns(times["running"]), "running"),
        "time[1]": (_ns(times["runnable"]), "runnable"),
        "time[2]": (_ns(times["blocked"]), "blocked"),
        "time[3]": (_ns(times["offline"]), "offline"),
    }
    for f in d.layout.fields:
        value, note = values[f.name]
        style = FIELD_STYLES[f.name]
        if f.name in d.missing:
            note = "not in dump"
        t.add_row(Text(f.name, style=style), f"+{f.offset}", value, Text(note, style="dim"))
    return t


def summary(obj: dict) -> Text:
    s = Text()
    ok, kind = obj["consistent"], obj["accounting"]
    s.append("accounting ")
    if ok is None:
        s.append("unknown", style="yellow")
    elif kind == "exact":
        s.append("exact (sum of time[] = state_entry_time)", style="green")
    elif kind == "offset":
        s.append(f"offset (sum of time[] {_ns(obj['unaccounted'])} behind state_entry_time)",
                 style="green" if ok else "bold red")
    else:
        s.append(f"broken (sum of time[] {obj['time_sum']:,})", style="bold red")
    s.append(f"   steal {_ns(obj['steal'])}")
    return s


def pieces_table(obj: dict) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False, title_justify="left")
    for col in ("gpa", "struct bytes", "file offset", "status"):
        t.add_column(col)
    for p in obj["pieces"]:
        end = p["offset"] + p["len"] - 1
        foff = "—" if p["file_offset"] is None else f"0x{p['file_offset']:x}"
        t.add_row(p["gpa"], f"{p['offset']}..{end}", foff,
                  Text(p["status"], style=STATUS_STYLES[p["status"]]))
    return t


def hex_view(d: Decoded, va: int | None = None) -> Text:
    """16 bytes a row, addressed by GPA (by ``va`` for a struct found by virtual address, whose
    pages need not be adjacent in GPA); each byte in its field's colour; ``│`` at the page
    boundary; bytes not present shown as ``??``."""
    style_at = {}
    for f in d.layout.fields:
        for i in range(f.offset, f.end):
            style_at[i] = FIELD_STYLES[f.name]
    missing = set()
    for p in d.pieces:
        if p.status.value != "present":
            missing.update(range(p.offset, p.offset + p.len))
    split = d.split_at
    out = Text()
    base = d.gpa if va is None else va
    start = base - base % 16
    end = base + d.layout.size
    for row in range(start, end, 16):
        out.append(f"0x{row:012x}  ", style="dim")
        for gpa in range(row, row + 16):
            i = gpa - base
            sep = "│" if split is not None and i == split else " "
            if gpa % 16 == 8 and sep == " ":
                sep = "  "
            out.append(sep, style="bold red" if sep == "│" else "")
            if 0 <= i < d.layout.size:
                text = "??" if i in missing else f"{d.raw[i]:02x}"
                style = style_at[i] + (" reverse" if i == d.layout.flag_offset else "")
                out.append(text, style=style)
            else:
                out.append("  ")
        out.append("\n")
    legend = Text("  ")
    for f in d.layout.fields:
        legend.append(f.name, style=FIELD_STYLES[f.name])
        legend.append("  ")
    legend.append("\n  ")
    legend.append("reversed", style="reverse")
    legend.append(": the flag byte (bit 63)")
    if split is not None:
        legend.append("   │: 4 KiB page boundary", style="bold red")
    if va is not None:
        legend.append("   addresses: virtual", style="dim")
    out.append(legend)
    return out


def render_decoded(d: Decoded, obj: dict, show_hex: bool) -> None:
    con = stdout()
    head = Text()
    if obj.get("vcpu") is not None:
        head.append(f"vCPU {obj['vcpu']}  ", style="bold")
    if obj.get("va") is not None:  # SPEC §8: translated from a guest virtual address
        by = f"{obj['cr3_from']}: " if obj.get("cr3_from") not in (None, "--cr3") else ""
        head.append(f"VA {obj['va']}", style="bold")
        from xenrs_cli.paging import MODE_NAMES

        mode = MODE_NAMES[obj["paging"]]
        head.append(f" ({by}CR3 {obj['cr3']}, {mode} paging) → ", style="dim")
    head.append(f"GPA {obj['gpa']}", style="bold")
    head.append(f"  {'64-bit' if d.layout.name == '64' else 'compat (32-bit)'}")
    head.append(" (inferred)" if d.layout_inferred else "", style="dim")
    head.append(f", {d.layout.size} bytes")
    if d.split_at is not None:
        head.append(f", crosses a page at +{d.split_at}", style="yellow")
    head.append(f"\n{obj['dump']} · flag byte at {obj['flag_byte_gpa']}", style="dim")
    con.print(head)
    con.print(field_table(d, obj))
    con.print(summary(obj))
    for w in obj["warnings"]:
        con.print(Text(f"! {w}", style="yellow"))
    con.print(pieces_table(obj))
    if show_hex:
        con.print(hex_view(d, int(obj["va"], 16) if obj.get("va") else None))
    con.print()
