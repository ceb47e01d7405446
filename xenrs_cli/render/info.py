"""Table view of ``xenrs info``."""

from __future__ import annotations

import json

from rich.table import Table
from rich.text import Text

from xenrs_cli.render.console import stdout
from xenrs_cli.render.decode import STATUS_STYLES


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def render_info(obj: dict) -> None:
    con = stdout()
    head = Table(box=None, show_header=False, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("dump", obj["dump"])
    head.add_row("format", obj["format"] + (f" ({obj['variant']})" if obj["variant"] else ""))
    head.add_row("file size", _size(obj["file_size"]))
    head.add_row("page size", str(obj["page_size"]))
    head.add_row("vCPUs", "—" if obj["vcpus"] is None else str(obj["vcpus"]))
    for status, n in obj["bytes"].items():
        head.add_row(Text(status, style=STATUS_STYLES.get(status, "")), _size(n))
    for key, value in obj["details"].items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value) if len(json.dumps(value)) < 100 else _multiline(value)
        head.add_row(key, str(value))
    con.print(head)
    t = Table(title="extents", title_justify="left", header_style="bold", box=None,
              pad_edge=False)
    for col in ("GPA start", "GPA end", "size", "status", "file offset", "detail"):
        t.add_column(col, justify="right" if col in ("size", "file offset") else "left")
    for e in obj["extents"]:
        foff = "—" if e["file_offset"] is None else f"0x{e['file_offset']:x}"
        t.add_row(e["gpa"], e["end"], _size(e["size"]),
                  Text(e["status"], style=STATUS_STYLES.get(e["status"], "")), foff, e["detail"])
    con.print(t)


def _multiline(value) -> str:
    if isinstance(value, dict):
        return "\n".join(f"{k}: {json.dumps(v)}" for k, v in value.items())
    return "\n".join(json.dumps(v) for v in value)
