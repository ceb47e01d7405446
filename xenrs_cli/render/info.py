"""Table view of ``xenrs info``."""

from __future__ import annotations

import json

from rich.text import Text

from xenrs_cli.render.console import Table, stdout
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
    tables = []
    if any(c["cr3"] is not None for c in obj.get("cpus", [])):
        tables.append(("page tables (CR3, paging mode)", _records_table(obj["cpus"])))
    for key, value in obj["details"].items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, _records_table(value)))  # pt_loads, notes, cpus: a table each
        elif isinstance(value, dict):
            head.add_row(key, "  ".join(f"{k} {_scalar(v)}" for k, v in value.items()))
        elif isinstance(value, list):
            head.add_row(key, ", ".join(_scalar(v) for v in value))
        else:
            head.add_row(key, _scalar(value))
    con.print(head)
    for key, table in tables:
        table.title = key
        con.print(table)
    t = Table(title="extents", title_justify="left", header_style="bold", box=None,
              pad_edge=False)
    for col in ("GPA start", "GPA end", "size", "status", "file offset", "detail"):
        t.add_column(col, justify="right" if col in ("size", "file offset") else "left",
                     no_wrap=col != "detail")
    for e in obj["extents"]:
        foff = "—" if e["file_offset"] is None else f"0x{e['file_offset']:x}"
        t.add_row(e["gpa"], e["end"], _size(e["size"]),
                  Text(e["status"], style=STATUS_STYLES.get(e["status"], "")), foff, e["detail"])
    con.print(t)


def _scalar(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _records_table(rows: list[dict]) -> Table:
    """A list of records (PT_LOADs, notes, vCPUs) as a table with the union of their keys."""
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    t = Table(title_justify="left", header_style="bold", box=None, pad_edge=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*(_scalar(r.get(c)) for c in columns))
    return t
