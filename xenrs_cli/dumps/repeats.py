"""Runs of one fixed-size item repeated in a table of such items, found at C speed.

A dump's page table says which pages are zeros without storing them each: every kdump zero
page has the descriptor of the one stored zero page, every zero page of a QEMU migration stream
an index entry of one value. ``scan`` passes such runs by (``Segment.zero_runs``); finding them
costs a ``bytes.find`` per run and a few ``startswith`` at its end, never a step per page.
"""

from __future__ import annotations

from collections.abc import Iterator

PROBE = 1 << 12  # items compared at a time within a run


def repeats(table: bytes, item: bytes, probe: int = PROBE) -> Iterator[tuple[int, int]]:
    """Maximal runs ``[i, j)``, in items, of ``item`` in ``table`` (whole items, in order)."""
    size = len(item)
    whole = item * probe
    i = table.find(item)
    while i >= 0:
        if i % size:  # a match across two items: look from the next one
            i = table.find(item, i - i % size + size)
            continue
        j = i + size
        while j < len(table):
            left = len(table) - j
            if table.startswith(whole if left >= len(whole) else whole[:left], j):
                j += min(left, len(whole))
            else:
                j = _run_end(table, j, whole, size)
                break
        yield i // size, j // size
        i = table.find(item, j)


def _run_end(table: bytes, j: int, whole: bytes, size: int) -> int:
    """The end of the run of copies at ``j`` of ``table``, whose next ``len(whole)`` bytes at
    most are known to hold a mismatch: a binary search over how many items match."""
    lo, hi = 0, min(len(whole), len(table) - j) // size  # lo items match; hi do not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if table.startswith(whole[:mid * size], j):
            lo = mid
        else:
            hi = mid
    return j + lo * size
