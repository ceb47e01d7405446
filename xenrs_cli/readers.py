"""The guest readers of SPEC §5 as programs of load units, for the race checker.

Linux ``drivers/xen/time.c`` ``xen_get_runstate_snapshot_cpu_delta()`` reads
``state_entry_time`` (R1), copies the whole struct (C), reads ``state_entry_time`` again (R2),
and accepts iff the two reads are equal and bit 63 (``XEN_RUNSTATE_UPDATE``) of the first is
clear. ``get64()`` does the 64-bit read as one plain load on a 64-bit kernel (``linux64``) and
as hi, lo, hi 32-bit loads, retried until the two hi words agree, on a 32-bit one
(``linux32``).

A program is a tuple of loads in time order, each one or two :class:`ReaderUnit`. Only the *accepted* iteration of the
retry loops is modelled: a failed iteration only lets time pass, which the checker already
allows between any two units. A load that crosses a 64-byte cache line is two units that may
happen in either order (x86 gives no single-copy atomicity across lines), so a reader has
several total orders: :func:`programs` lists them all (for brute force), :func:`slots`
gives the compact form the checker searches.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from xenrs_cli.layouts import Layout

CACHE_LINE = 64

READERS = ("linux64", "linux32")

# What a unit's bytes are for: ``set`` records the value R1 validates (and the flag check),
# ``check`` must see exactly the recorded bytes (get64's second hi, all of R2), ``copy`` is C.
SET, CHECK, COPY = "set", "check", "copy"


@dataclass(frozen=True, slots=True)
class ReaderUnit:
    """One load (or the part of a load within one cache line) of the reader, at one instant."""

    phase: str        # R1, C or R2
    label: str        # e.g. "R1", "R1.hi", "R2.lo[4..5]", "C[17]"
    offset: int       # struct offset of the first byte
    size: int
    role: str         # SET, CHECK or COPY

    @property
    def end(self) -> int:
        return self.offset + self.size


def default_reader(layout: Layout) -> str:
    """SPEC §5: ``linux64`` reads the 64-bit layout, ``linux32`` (a 32-bit guest) compat."""
    return "linux64" if layout.has_padding else "linux32"


def line_split(gpa: int, layout: Layout) -> int | None:
    """The struct offset of the 64-byte line boundary inside the area, or ``None``.

    The struct is smaller than a line, so there is at most one; a page boundary is also a line
    boundary, and lines sit at the same offsets in guest-virtual and guest-physical pages.
    """
    cut = -gpa % CACHE_LINE
    return cut if 0 < cut < layout.size else None


def _load(phase: str, name: str, offset: int, size: int, role: str,
          split: int | None) -> tuple[ReaderUnit, ...]:
    """One load: a single unit, or its two line halves (which may run in either order)."""
    if split is None or not offset < split < offset + size:
        return (ReaderUnit(phase, name, offset, size, role),)
    return (ReaderUnit(phase, f"{name}[{offset}..{split - 1}]", offset, split - offset, role),
            ReaderUnit(phase, f"{name}[{split}..{offset + size - 1}]", split,
                       offset + size - split, role))


def _get64(phase: str, entry: int, reader: str, first: str,
           split: int | None) -> list[tuple[ReaderUnit, ...]]:
    """``get64(&state->state_entry_time)`` as a list of loads."""
    if reader == "linux64":
        return [_load(phase, phase, entry, 8, first, split)]
    # BITS_PER_LONG < 64: h = p32[1]; l = p32[0]; h2 = p32[1]; while (h2 != h).
    return [_load(phase, f"{phase}.hi", entry + 4, 4, first, split),
            _load(phase, f"{phase}.lo", entry, 4, first, split),
            _load(phase, f"{phase}.hi'", entry + 4, 4, CHECK, split)]


def copy_units(layout: Layout) -> tuple[ReaderUnit, ...]:
    """C: ``*res = __READ_ONCE(*state)``, one unit per byte in ascending address order.

    The padding of the 64-bit layout is copied too but never compared (SPEC §5 rule 4), so it
    is left out of the program; the witness shows what it held.
    """
    pad = set(range(*_padding_span(layout)))
    return tuple(ReaderUnit("C", f"C[{b}]", b, 1, COPY) for b in range(layout.size)
                 if b not in pad)


def _padding_span(layout: Layout) -> tuple[int, int]:
    if not layout.has_padding:
        return (0, 0)
    f = layout.field("padding")
    return (f.offset, f.end)


def slots(layout: Layout, reader: str, split: int | None,
          atomic: bool = False) -> tuple[tuple[ReaderUnit, ...], ...]:
    """The reader's program as loads in time order; a load of two units runs them in either
    order. ``atomic`` takes every load as one unit (SPEC §5 rule 5, to tell a writer-caused
    tear from one that only the reader's split load lets through)."""
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}")
    cut = None if atomic else split
    return tuple(_get64("R1", layout.entry_offset, reader, SET, cut)
                 + [(u,) for u in copy_units(layout)]
                 + _get64("R2", layout.entry_offset, reader, CHECK, cut))


def programs(layout: Layout, reader: str, split: int | None,
             atomic: bool = False) -> list[tuple[ReaderUnit, ...]]:
    """Every total order of the reader's units (each split load in both orders)."""
    loads = slots(layout, reader, split, atomic)
    options = [[load] if len(load) == 1 else [load, load[::-1]] for load in loads]
    return [tuple(u for load in combo for u in load) for combo in itertools.product(*options)]


def load_split_matters(layout: Layout, reader: str, split: int | None) -> int | None:
    """``split`` if it cuts one of the reader's loads, else ``None`` (for sweep's memo key)."""
    if split is None:
        return None
    e = layout.entry_offset
    spans = [(e, e + 8)] if reader == "linux64" else [(e, e + 4), (e + 4, e + 8)]
    return split if any(a < split < b for a, b in spans) else None
