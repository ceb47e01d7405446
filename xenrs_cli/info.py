"""The ``info`` record of a dump: format, page size, extents, page counts and format details."""

from __future__ import annotations

from typing import Any

from xenrs_cli.dumps import Dump


def describe(d: Dump, name: str) -> dict[str, Any]:
    """One JSON-friendly record: fixed keys first, then the format's own ``details``."""
    extents = []
    totals: dict[str, int] = {}
    for e in d.space.extents():
        extents.append({"gpa": f"0x{e.gpa:x}", "end": f"0x{e.gpa + e.size:x}", "size": e.size,
                        "status": e.status.value, "file_offset": e.file_offset,
                        "detail": e.detail})
        totals[e.status.value] = totals.get(e.status.value, 0) + e.size
    out: dict[str, Any] = {
        "dump": name,
        "format": d.format,
        "variant": d.variant,
        "file_size": d.file.size,
        "page_size": d.page_size,
        "gpa_end": f"0x{d.space.end:x}",
        "bytes": totals,
        "vcpus": d.details.get("vcpus"),
        "extents": extents,
        "details": {k: v for k, v in d.details.items() if k != "vcpus"},
    }
    if d.cpus:  # SPEC §8: each vCPU's page-table root and mode, where the dump records them
        out["cpus"] = [_cpu(c) for c in d.cpus]
    return out


def _cpu(c) -> dict[str, Any]:
    """A vCPU's page-table root and paging mode (SPEC §8), where the dump records them."""
    from xenrs_cli.paging import mode_of

    return {"vcpu": c.index, "cr3": None if c.cr3 is None else f"0x{c.cr3:x}",
            "paging": mode_of(c), "source": c.source}
