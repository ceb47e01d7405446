"""``xenrs sweep``: the race verdict at every page offset of one page (SPEC §5).

4096 placements, but few distinct questions: the checker's answer depends only on the writer
units (group, struct offset, bytes; a ``copy`` is per byte, so where KVM or Xen splits a
memcpy at the page boundary does not matter), the before and final images, and where a
64-byte line boundary cuts one of the reader's loads. Offsets whose canonical problem is the
same share one check; the canonical key is exactly the checker's input, so this is exact, not
an approximation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from xenrs_cli.layouts import PAGE_SIZE, LAYOUTS
from xenrs_cli.race import Problem, check, problem
from xenrs_cli.readers import load_split_matters
from xenrs_cli.trace import Reject

OK, TORN, REFUSED = "ok", "torn", "refused"


@dataclass(frozen=True, slots=True)
class OffsetResult:
    offset: int
    verdict: str              # ok, torn or refused
    cause: str | None = None  # writer or reader when torn


@dataclass(slots=True)
class SweepSummary:
    model: str
    layout: str
    reader: str
    update_flag: bool
    results: list[OffsetResult] = field(default_factory=list)
    checks: int = 0           # distinct problems actually checked

    def count(self, verdict: str, cause: str | None = None) -> int:
        return sum(1 for r in self.results
                   if r.verdict == verdict and (cause is None or r.cause == cause))

    def torn_ranges(self) -> list[list[int]]:
        return ranges(r.offset for r in self.results if r.verdict == TORN)

    def to_json_dict(self) -> dict:
        """SPEC §5's summary record, fields in the documented order."""
        return {"model": self.model, "layout": self.layout, "reader": self.reader,
                "update_flag": self.update_flag, "offsets": len(self.results),
                "refused": self.count(REFUSED), "torn": self.count(TORN),
                "torn_writer": self.count(TORN, "writer"),
                "torn_reader": self.count(TORN, "reader"),
                "torn_offsets": self.torn_ranges()}


def ranges(offsets) -> list[list[int]]:
    """Inclusive ``[first, last]`` runs of ascending integers."""
    out: list[list[int]] = []
    for o in offsets:
        if out and out[-1][1] == o - 1:
            out[-1][1] = o
        else:
            out.append([o, o])
    return out


def canonical(p: Problem) -> tuple:
    """The checker's input with what cannot change its answer taken out: trace sequence
    numbers, the order of units inside a group, and a line boundary no reader load spans."""
    units = tuple(sorted((u.group, u.offset, u.data) for u in p.units))
    return (p.layout, p.reader, p.before, p.final, units,
            load_split_matters(LAYOUTS[p.layout], p.reader, p.split))


def _signature(records, gpa: int, layout) -> tuple:
    """What :func:`xenrs_cli.race.problem` reads from a trace, cheaply: each write's group, kind,
    struct offset and bytes, where a line boundary cuts a store, and the area's line split."""
    from xenrs_cli.readers import CACHE_LINE, line_split

    def cut(r) -> int:
        c = -r.gpa % CACHE_LINE
        return c if r.kind == "store" and 0 < c < r.len else 0

    return (line_split(gpa, layout),) + tuple((r.group, r.kind, r.offset, r.data, cut(r))
                                              for r in records if r.op == "write")


def sweep(scenario, reader: str, page: int,
          progress: Callable[[int], None] | None = None) -> SweepSummary:
    """Run the race check for ``scenario`` at every offset of the page at ``page``."""
    from xenrs_cli.simulate import simulate

    layout = LAYOUTS[scenario.layout]
    base = page - page % PAGE_SIZE
    out = SweepSummary(scenario.model, scenario.layout, reader, scenario.update_flag)
    seen: dict[tuple, tuple[bool, str | None]] = {}
    keys: dict[tuple, tuple] = {}  # trace signature -> canonical problem
    for offset in range(PAGE_SIZE):
        gpa = base + offset
        records = simulate(replace(scenario, gpa=gpa))
        if any(isinstance(r, Reject) for r in records):
            out.results.append(OffsetResult(offset, REFUSED))
        else:
            sig = _signature(records, gpa, layout)
            key = keys.get(sig)
            if key is None:
                p = problem(layout, gpa, scenario.before, records, reader)
                key = keys[sig] = canonical(p)
                if key not in seen:
                    v = check(p, witness=False)
                    seen[key] = (v.torn, v.cause)
            torn, cause = seen[key]
            out.results.append(OffsetResult(offset, TORN if torn else OK, cause))
        if progress is not None:
            progress(offset)
    out.checks = len(seen)
    return out


def matrix() -> Iterator[tuple[str, str, bool]]:
    """``sweep --all``: every model × layout × flag setting, in a fixed order.

    ``kvm-6.1`` and ``xen-phys`` have no flag switch (SPEC §4: they always set
    ``XEN_RUNSTATE_UPDATE``), so they get one configuration per layout, not a duplicate.
    """
    from xenrs_cli.models import ALWAYS_FLAG, MODELS

    for model in MODELS:
        for layout in LAYOUTS:
            for flag in (True,) if model in ALWAYS_FLAG else (True, False):
                yield model, layout, flag
