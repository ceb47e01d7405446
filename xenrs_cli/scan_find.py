"""The readings that pass ``scan``'s rules, window by window, and the tasks a scan is cut into.

:class:`Finder` is the per-window half of :class:`~xenrs_cli.scan.Scanner`: it streams a GPA
range (:func:`~xenrs_cli.scan_windows.streams`, :func:`~xenrs_cli.scan_windows.windows`), finds
the possible ``state_entry_time`` fields of each window
(:func:`~xenrs_cli.scan_windows.entry_positions`) and keeps the readings that pass SPEC §6's
rules and, unless ``--loose``, those of :mod:`xenrs_cli.scan_rules`. What it needs of the scan
is plain data, so it runs the same in this process or in a forked one
(:mod:`xenrs_cli.scan_parallel`); the scanner settles overlapping readings and reports.

:func:`plan` cuts a scan's range into tasks of about :data:`TASK_BYTES` present bytes each. A
task tests the starts in its range and reads up to ``REACH`` bytes past it, so a record across
a cut is found whole, once, by the task its start belongs to: the readings of the tasks, in
order, are those of one scan over the whole range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from xenrs_cli.accounting import Accounting
from xenrs_cli.address_space import AddressSpace, Status
from xenrs_cli.layouts import Layout, decode
from xenrs_cli.scan_rules import MAX_ENTRY_TIME, UPTIME, failed_rule
from xenrs_cli.scan_stats import ScanStats
from xenrs_cli.scan_windows import (REACH, SEAM, check_layout, entry_positions, streams,
                                    window_size, windows)

# Present bytes per task: on the real Xen dom0 dump a dense task is ~50 ms of work, and tasks
# of 4 MiB kept two processes within 1 % of each other (16 MiB: one waited 25 % of the time).
TASK_BYTES = 4 << 20

Found = list[tuple[int, Layout]]  # (GPA, layout) of the readings that pass, ascending


class Finder:
    """The window test of one scan: its layouts and alignments, entry-time threshold and
    accepted accountings, and the scratch arrays reused across windows."""

    def __init__(self, np, checks: list[tuple[Layout, int]], threshold: int,
                 accept: frozenset[Accounting], loose: bool, chunk_size: int) -> None:
        self.np, self.checks, self.threshold = np, checks, threshold
        self.accept, self.loose, self.chunk_size = accept, loose, chunk_size
        # Byte shifts (GPA mod 8) at which an allowed start puts state_entry_time.
        self.shifts = sorted({s for l, a in checks for s in range(8)
                              if (s - l.entry_offset) % a == 0})
        # for each shift, how far before the entry time each layout read there has its state
        self.state_before = {s: tuple(sorted({l.entry_offset for l, a in checks
                                              if (s - l.entry_offset) % a == 0}))
                             for s in self.shifts}
        self.buffer = bytearray(window_size(chunk_size))  # every window is read into it
        words = (chunk_size + SEAM + REACH) // 8 + 1  # the largest window, in words
        self.scratch = (np.empty(words, dtype=bool), np.empty(words, dtype=bool),
                        np.empty(words, dtype=np.uint64))

    def found(self, space: AddressSpace, start: int, stop: int, end: int, stats: ScanStats,
              advance: Callable[[int], None] | None = None) -> Iterator[Found]:
        """Per window, the readings that start in ``[start, stop)``, reading bytes up to
        ``end`` (the scan's end): candidates and rejections are counted in ``stats``, and so
        are bytes by provenance over ``[start, min(stop + REACH, end))``."""
        skipped = advance or (lambda n: None)
        spans = space.runs(start, min(stop + REACH, end))
        for stream in streams(spans, stats, skipped):
            for gpa, core_len, data in windows(stream, self.chunk_size, stop, self.buffer):
                found = self.window(data, gpa, core_len, stats)
                del data  # the window's buffer is the next window's
                yield found
                if advance is not None:
                    advance(core_len)

    def window(self, data, gpa: int, core_len: int, stats: ScanStats) -> Found:
        """The readings that start in the core ``[gpa, gpa + core_len)`` of one window."""
        np = self.np
        buf = np.frombuffer(data, dtype=np.uint8)
        found: Found = []
        below = None if self.loose else MAX_ENTRY_TIME
        for shift, entries, beyond, passed in entry_positions(
                np, buf, gpa, self.shifts, self.threshold, self.scratch, below,
                self.state_before, core_len):
            # fields of the core only: those of the tail are the next window's
            stats.candidates += passed + beyond
            if beyond:
                stats.reject(UPTIME.name, beyond, [])
            for layout, align in self.checks:
                if entries.size and (shift - layout.entry_offset) % align == 0:
                    found += self._vetted(check_layout(
                        np, buf, gpa, core_len, entries, layout, self.threshold, self.accept,
                        None if self.loose else stats), layout, buf, gpa, stats)
        found.sort(key=lambda r: (r[0], r[1].name))
        return found

    def _vetted(self, gpas: list[int], layout: Layout, buf, base: int,
                stats: ScanStats) -> Found:
        """The candidates of a window that also pass :func:`~xenrs_cli.scan_rules.failed_rule`
        (the rules numpy did not apply); the others are counted as rejected."""
        if self.loose:
            return [(g, layout) for g in gpas]
        out = []
        for g in gpas:
            rule = failed_rule(decode(layout, bytes(buf[g - base:g - base + layout.size])))
            if rule is None:
                out.append((g, layout))
            else:
                stats.reject(rule.name, 1, [g])
        return out


def plan(space: AddressSpace, start: int, end: int,
         task_bytes: int | None = None) -> tuple[list[tuple[int, int]], dict[str, Any]]:
    """The tasks ``[(a, b), …]`` tiling ``[start, end)``, cut every ``task_bytes`` present
    bytes, and the scan's bytes by provenance (what :func:`streams` counts in one pass). One
    walk of the spans: the tasks are as many as the present bytes call for, whatever the
    range claims."""
    task_bytes = task_bytes or TASK_BYTES
    counted = {s.value: 0 for s in Status}
    cuts, acc = [start], 0
    for sp in space.runs(start, end):
        counted[sp.status.value] += sp.size
        if sp.status is not Status.PRESENT:
            continue
        pos = sp.gpa
        while acc + (sp.end - pos) >= task_bytes:
            pos += task_bytes - acc
            acc = 0
            if pos < end:
                cuts.append(pos)
        acc += sp.end - pos
    return list(zip(cuts, cuts[1:] + [end])), counted
