"""Records of a simulated runstate update: the ordered guest-memory writes (SPEC §4).

The simulator returns a list of these frozen records and nothing else; rendering, applying
them to an image and checking them for torn reads are separate consumers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Write:
    """One guest-memory write as the model issues it (never across a 4 KiB page).

    ``kind`` is ``store`` for a single C assignment (flag byte, ``state``,
    ``state_entry_time``, Xen's ``write_atomic``) and ``copy`` for a memcpy or struct copy.
    ``offset`` is the struct offset of the first byte; ``page`` is 0 or 1 (which page of the
    area); ``group`` counts the barriers before this record.
    """

    seq: int
    group: int
    kind: str
    gpa: int
    offset: int
    data: bytes
    page: int
    field: str
    why: str

    op = "write"

    @property
    def len(self) -> int:
        return len(self.data)


@dataclass(frozen=True, slots=True)
class Barrier:
    """``smp_wmb()``: every write of group ``group`` is visible before any of ``group + 1``."""

    seq: int
    group: int
    kind: str = "smp_wmb"

    op = "barrier"


@dataclass(frozen=True, slots=True)
class Reject:
    """The model refuses the registration (``errno`` as the kernel or Xen returns it)."""

    errno: str
    why: str
    seq: int = 0

    op = "reject"


Record = Write | Barrier | Reject


def to_json_dict(rec: Record) -> dict[str, Any]:
    """The SPEC §4 JSON object of a record, fields in the documented order."""
    if isinstance(rec, Write):
        return {"seq": rec.seq, "op": "write", "kind": rec.kind, "group": rec.group,
                "gpa": f"0x{rec.gpa:x}", "offset": rec.offset, "len": rec.len, "page": rec.page,
                "data": rec.data.hex(), "field": rec.field, "why": rec.why}
    if isinstance(rec, Barrier):
        return {"seq": rec.seq, "op": "barrier", "group": rec.group, "kind": rec.kind}
    return {"seq": rec.seq, "op": "reject", "errno": rec.errno, "why": rec.why}
