"""What a scan went through: bytes by provenance, candidates, hits, and what the rules rejected.

Shared by :mod:`xenrs_cli.scan` (which decides) and :mod:`xenrs_cli.scan_windows` (which streams
and counts bytes), so that neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xenrs_cli.address_space import Status
from xenrs_cli.decode import hexaddr

EXAMPLES = 3  # GPAs kept per rejection rule, for the summary


@dataclass
class ScanStats:
    """Bytes of the scanned range by provenance, and what was found."""

    range_start: int = 0
    range_end: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Status})
    candidates: int = 0  # 8-byte windows that passed the entry-time test
    hits: int = 0
    readings_dropped: int = 0  # shifted or twin readings of a record (see Scanner._resolve)
    # Readings SPEC §6's rules accept that no hypervisor writes (xenrs_cli.scan_rules): counts
    # per rule, and the lowest few GPAs of each (whatever order the parts of a scan ran in).
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_examples: dict[str, list[int]] = field(default_factory=dict)

    def reject(self, rule: str, count: int, examples: list[int]) -> None:
        """Count ``count`` readings rejected by ``rule``; ``examples`` are GPAs of some (the
        lowest of a window's, or all)."""
        self.rejected[rule] = self.rejected.get(rule, 0) + count
        kept = self.rejected_examples.setdefault(rule, [])
        kept[:] = sorted(set(kept).union(examples))[:EXAMPLES]

    def add(self, part: ScanStats) -> None:
        """Count the candidates and rejections of a part of the scan (a task,
        :mod:`xenrs_cli.scan_find`); not its bytes (a task reads past its range: they overlap).
        Hits and dropped readings are counted here, where readings are settled."""
        self.candidates += part.candidates
        for rule, count in part.rejected.items():
            self.reject(rule, count, part.rejected_examples.get(rule, []))

    def pages(self, status: Status, page_size: int) -> int:
        return -(-self.bytes[status.value] // page_size)

    def to_json_dict(self, page_size: int) -> dict[str, Any]:
        return {"range": [hexaddr(self.range_start), hexaddr(self.range_end)],
                "bytes": dict(self.bytes),
                "pages": {s.value: self.pages(s, page_size) for s in Status},
                "candidates": self.candidates, "hits": self.hits,
                "readings_dropped": self.readings_dropped,
                "rejected": dict(self.rejected)}
