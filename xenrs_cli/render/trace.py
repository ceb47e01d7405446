"""Table and image views of a simulated update (``xenrs simulate``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text

from xenrs_cli.apply import images
from xenrs_cli.layouts import PAGE_SIZE, Layout
from xenrs_cli.render.console import Table, stdout
from xenrs_cli.render.decode import FIELD_STYLES
from xenrs_cli.simulate import Scenario
from xenrs_cli.trace import Barrier, Record, Reject, Write


def _split_at(layout: Layout, gpa: int) -> int | None:
    first = PAGE_SIZE - gpa % PAGE_SIZE
    return first if first < layout.size else None


def heading(s: Scenario, source: str) -> Text:
    layout = s.layout_obj
    head = Text()
    head.append(f"{s.model}", style="bold")
    head.append(f"  {s.event}  layout {layout.name} ({layout.size} bytes) at 0x{s.gpa:x}")
    split = _split_at(layout, s.gpa)
    if split is not None:
        head.append(f", crosses a page at +{split} (0x{s.gpa + split:x})", style="yellow")
    head.append(f"  XEN_RUNSTATE_UPDATE {'on' if s.update_flag else 'off'}")
    head.append(f"\n{source}", style="dim")
    return head


def trace_table(records: Sequence[Record]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for col, just in (("seq", "right"), ("group", "right"), ("page", "right"), ("GPA", "left"),
                      ("offset", "right"), ("len", "right"), ("field", "left"),
                      ("bytes", "left"), ("why", "left")):
        t.add_column(col, justify=just, no_wrap=col in ("GPA", "bytes"),
                     min_width=28 if col == "why" else None)
    for r in records:
        if isinstance(r, Write):
            names = r.field.split(",")
            style = FIELD_STYLES.get(names[0], "")
            shown = r.field if len(names) <= 2 else f"{names[0]} … {names[-1]}"
            t.add_row(str(r.seq), str(r.group), str(r.page), f"0x{r.gpa:x}", f"+{r.offset}",
                      str(r.len), Text(shown, style=style), _hex(r.data), Text(r.why, style="dim"))
        elif isinstance(r, Barrier):
            t.add_row(str(r.seq), str(r.group), "", Text("smp_wmb()", style="bold blue"),
                      "", "", "", "", "")
        else:
            t.add_row(str(r.seq), "", "", Text(f"REFUSED {r.errno}", style="bold red"), "", "",
                      "", "", r.why)
    return t


def _hex(data: bytes, limit: int = 4) -> str:
    return data[:limit].hex(" ") + (" …" if len(data) > limit else "")


def images_view(s: Scenario, records: Sequence[Record]) -> Text:
    """The struct after each write: changed bytes reversed, bytes written with their old value
    underlined, each byte in its field's colour, ``┃`` at the page boundary."""
    layout = s.layout_obj
    style_at = [""] * layout.size
    for f in layout.fields:
        for i in range(f.offset, f.end):
            style_at[i] = FIELD_STYLES[f.name]
    split = _split_at(layout, s.gpa)
    out = Text()
    prev = s.before
    out.append("before ", style="bold")
    _row(out, prev, prev, set(), style_at, split)
    writes = [r for r in records if isinstance(r, Write)]
    for w, img in zip(writes, images(s.before, s.gpa, records)):
        out.append(f"{w.seq:>6} ", style="bold")
        span = set(range(w.offset, w.offset + w.len))
        _row(out, prev, img, span, style_at, split)
        prev = img
    legend = Text("       ")
    for f in layout.fields:
        legend.append(f.name, style=FIELD_STYLES[f.name])
        legend.append("  ")
    legend.append("\n       ")
    legend.append("changed", style="reverse")
    legend.append("  ")
    legend.append("rewritten, same value", style="underline")
    if split is not None:
        legend.append("   ┃ 4 KiB page boundary", style="bold red")
    out.append(legend)
    return out


IMAGE_ROW = 24  # bytes per line: a 48-byte struct in two lines of an 80-column terminal


def _row(out: Text, prev: bytes, img: bytes, span: set[int], style_at: list[str],
         split: int | None) -> None:
    for i, b in enumerate(img):
        if i and i % IMAGE_ROW == 0:
            out.append("\n       ")
            out.append("┃" if i == split else " ", style="bold red")
        elif i == split:
            out.append("┃", style="bold red")
        elif i:
            out.append(" ")
        style = style_at[i]
        if b != prev[i]:
            style += " reverse"
        elif i in span:
            style += " underline"
        out.append(f"{b:02x}", style=style)
    out.append("\n")


def render_trace(s: Scenario, records: Sequence[Record], source: str, show_images: bool) -> None:
    con = stdout()
    con.print(heading(s, source))
    con.print(trace_table(records))
    if show_images and not any(isinstance(r, Reject) for r in records):
        con.print(images_view(s, records))
    con.print()
