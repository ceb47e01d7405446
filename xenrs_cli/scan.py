"""Find runstate areas without a known GPA (SPEC §6 ``scan``), streaming the dump.

A candidate at GPA ``g`` for a layout is: ``state`` in 0..3, ``state_entry_time`` (bit 63
cleared) nonzero and at least ``min_entry_time``, and an accounting ``--hypervisor`` accepts
(SPEC §7, :mod:`xenrs_cli.accounting`: KVM's exact sum, Xen's creation-time offset). The flag
bit ``XEN_RUNSTATE_UPDATE`` is ignored by these rules, so records caught mid-update are found
too. Unless ``loose``, a candidate must then also look like something a hypervisor wrote
(:mod:`xenrs_cli.scan_rules`): on real memory SPEC's rules alone accept hundreds of thousands of
places that are pointers, code, text or packed integers.

How it stays fast and bounded (numpy, imported only here):

* The address space is walked as *streams*: maximal GPA-contiguous runs of pages that are
  ``present`` or ``zero-filled`` (SPEC §2), across segment boundaries. ``excluded`` and
  ``absent`` pages are skipped and counted; they end a stream, since no record can be read
  through them. A long zero-filled run is cut down to the 47 bytes next to stored data, the only
  zero bytes a record with a nonzero entry time can touch.
* Each stream is cut into *cores* of candidate start GPAs; a core is examined through a window
  that extends 47 bytes past it, so a record that crosses a chunk, page or segment edge is seen
  whole, and exactly once (only starts inside the core count). Windows are read with ``pread``
  into one reused buffer (``Segment.read_into``; kdump pages in batches), never through the
  mapping, so a dump truncated underneath ends with one line, not ``SIGBUS``. Runs of pages the
  dump itself records as zeros (``Segment.zero_runs``) are passed by like zero-filled ones.
* In a window, one vectorised pass decides how dense it is. In sparse memory the nonzero aligned
  8-byte words are found, and the fields that could be ``state_entry_time`` (one byte shift per
  alignment the options allow: 1 for the defaults' 64, 2 with compat, 8 for ``--align 1``) are
  read only next to them. In dense memory every field of a shift is compared at once through
  one view (entry time in range, a state 0..3 before it), so that only a few are gathered for
  the state and accounting tests of :func:`~xenrs_cli.scan_windows.check_layout`.
* Memory: one window buffer and reused scratch arrays, whatever the dump size.
* Cores: a dump with enough present bytes is cut into tasks (:func:`~xenrs_cli.scan_find.plan`)
  that forked workers run (:mod:`xenrs_cli.scan_parallel`); their readings come back in GPA
  order and are settled here exactly as one process's would be.

One set of bytes can pass the rules as several readings; :meth:`Scanner._resolve` keeps the
record: a reading *k* bytes early is every field × 256^k when the bytes shifted in are zero
(:meth:`Scanner._shadow_of`), and a 64-bit record at ``g`` and a compat one at ``g + 4`` share
``state_entry_time`` and ``time[]`` (:meth:`Scanner._twin_choice`). Hits of one layout at a
stride of exactly the struct size are reported as a per-vCPU array (Linux's
``DEFINE_PER_CPU(struct vcpu_runstate_info, xen_runstate)`` is not contiguous, but a hypervisor-
or test-side array is, like the KVM selftest's and the fixtures' ``vcpu_array64``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xenrs_cli import scan_parallel
from xenrs_cli.accounting import DEFAULT_HYPERVISOR, HYPERVISORS, Accounting
from xenrs_cli.address_space import AddressSpace, Status
from xenrs_cli.decode import Decoded, decode_at, hexaddr, to_json_dict
from xenrs_cli.errors import InputError, UsageError
from xenrs_cli.layouts import (LAYOUT_64, LAYOUT_COMPAT, LAYOUTS, PAGE_SIZE, Layout,
                               RunstateInfo, decode)
from xenrs_cli.scan_rules import CLOCK, CLOCK_FACTOR, CROWD, failed_rule
from xenrs_cli.scan_find import Finder, Found, plan
from xenrs_cli.scan_stats import ScanStats
from xenrs_cli.scan_windows import ENTRY_MASK, MAX_SIZE, SEAM

DEFAULT_MIN_ENTRY_TIME = 1_000_000_000  # 1 s of guest uptime: skips near-zero noise
DEFAULT_CHUNK = 16 << 20
NATURAL_ALIGN = {"64": 8, "compat": 4}  # the C ABI alignment of the struct (int64 / i386 int32)
ALIGNS = (8, 4, 1)
MAX_HELD = 100_000  # hits held for the clock rule before it gives up (bounded memory)


class MissingNumpyError(InputError):
    """``scan`` needs numpy, an optional dependency (extra ``scan``)."""

    def __init__(self) -> None:
        super().__init__("xenrs scan needs numpy, which is not installed: run "
                         "pip install 'xenrs[scan]' (or pip install numpy)")


def numpy():
    """numpy, or a one-line install hint."""
    try:
        import numpy as np
    except ImportError:
        raise MissingNumpyError() from None
    return np


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What to look for and where. ``end`` is exclusive; ``None`` is the end of the dump."""

    layouts: tuple[Layout, ...] = (LAYOUT_64, LAYOUT_COMPAT)
    align: int | None = None  # None: each layout's natural alignment (8 for 64, 4 for compat)
    min_entry_time: int = DEFAULT_MIN_ENTRY_TIME
    start: int | None = None  # None: the first GPA of the dump
    end: int | None = None
    chunk_size: int = DEFAULT_CHUNK
    hypervisor: str = DEFAULT_HYPERVISOR  # whose accounting is accepted (SPEC §7)
    loose: bool = False  # SPEC §6's rules only, without xenrs_cli.scan_rules

    def __post_init__(self) -> None:
        if self.hypervisor not in HYPERVISORS:
            raise UsageError(f"--hypervisor must be one of {', '.join(HYPERVISORS)}")
        if self.align is not None and self.align not in ALIGNS:
            raise UsageError(f"--align must be one of 8, 4, 1, not {self.align}")
        if not self.layouts:
            raise UsageError("scan needs at least one layout")
        if self.end is not None and self.end <= (self.start or 0):
            raise UsageError(f"--range 0x{self.start or 0:x}-0x{self.end:x} is empty "
                             "(the end is exclusive and must be above the start)")
        if self.chunk_size < SEAM or self.chunk_size % 8:
            raise ValueError("chunk_size must be a multiple of 8 and at least 4096")

    def align_of(self, layout: Layout) -> int:
        return self.align if self.align is not None else NATURAL_ALIGN[layout.name]


@dataclass(frozen=True, slots=True)
class Hit:
    """One runstate area found by the scan, decoded by :func:`decode_at`."""

    decoded: Decoded
    array_gpa: int | None = None
    array_index: int | None = None
    array_len: int | None = None
    notes: tuple[str, ...] = ()
    twin: tuple[int, Layout] | None = None  # the indistinguishable other reading, if any

    @property
    def gpa(self) -> int:
        return self.decoded.gpa

    @property
    def layout(self) -> Layout:
        return self.decoded.layout


def hit_to_json_dict(hit: Hit, dump: str) -> dict[str, Any]:
    """Decode's SPEC §3 record (``layout_inferred`` false: the scan rule chose it), plus the
    array fields; the scan's notes are appended to ``warnings``."""
    obj = to_json_dict(hit.decoded, dump)
    obj["layout_inferred"] = False
    obj["warnings"] = obj["warnings"] + list(hit.notes)
    obj["array_gpa"] = hexaddr(hit.array_gpa)
    obj["array_index"] = hit.array_index
    obj["array_len"] = hit.array_len
    obj["ambiguous_with"] = (None if hit.twin is None else
                             {"gpa": hexaddr(hit.twin[0]), "layout": hit.twin[1].name})
    return obj


# ---------------------------------------------------------------------------------------------
# Two readings of one set of bytes, and arrays


@dataclass(slots=True)
class _Raw:
    gpa: int
    layout: Layout
    notes: list[str] = field(default_factory=list)
    twin: tuple[int, Layout] | None = None

    @property
    def entry_gpa(self) -> int:
        return self.gpa + self.layout.entry_offset


@dataclass(frozen=True, slots=True)
class Unreported:
    """A record the rules accept that explains a dropped reading, but that this scan's options
    exclude (the CLI warns, naming the option that would show it)."""

    gpa: int
    layout: Layout
    instead_of: int  # GPA of the dropped reading
    how: str  # "shifted reading" or "twin reading"
    excluded_by: str  # the option that hides it: layout, align, range or min-entry-time


def _other(layout: Layout) -> Layout:
    return LAYOUT_COMPAT if layout is LAYOUT_64 else LAYOUT_64


def _witness(hit: Hit) -> bool:
    """A hit that shows how far the dump's clock ran: exact over two or more states."""
    info = hit.decoded.info
    return info.accounting is Accounting.EXACT and sum(1 for t in info.time if t) >= 2


def _arrays(hits: list[_Raw]) -> list[tuple[_Raw, int | None, int | None, int | None]]:
    """Each hit with ``(array_gpa, array_index, array_len)``: hits of one layout exactly one
    struct size apart form a per-vCPU array (``None`` for a lone hit)."""
    out = []
    by_layout: dict[str, list[_Raw]] = {}
    for h in hits:
        by_layout.setdefault(h.layout.name, []).append(h)
    info: dict[int, tuple[int, int, int]] = {}
    for group in by_layout.values():
        run = [group[0]]
        for h in group[1:] + [None]:
            if h is not None and h.gpa == run[-1].gpa + h.layout.size:
                run.append(h)
                continue
            if len(run) > 1:
                for k, r in enumerate(run):
                    info[id(r)] = (run[0].gpa, k, len(run))
            if h is not None:
                run = [h]
    for h in hits:
        a = info.get(id(h))
        out.append((h, *(a if a else (None, None, None))))
    return out


# ---------------------------------------------------------------------------------------------


Progress = Callable[[int, int], None]  # (bytes done, bytes total) of the scanned range


class Scanner:
    """Scan an address space; iterate :meth:`hits`, then read :attr:`stats` and
    :attr:`unreported`."""

    def __init__(self, space: AddressSpace, options: ScanOptions = ScanOptions(),
                 progress: Progress | None = None) -> None:
        self.space = space
        self.options = options
        self.progress = progress
        first = space.segments[0].gpa if space.segments else 0
        start = options.start if options.start is not None else first
        end = options.end if options.end is not None else space.end
        self.stats = ScanStats(start, max(start, end))
        self.unreported: list[Unreported] = []
        self._threshold = max(options.min_entry_time, 1)
        self._accept = HYPERVISORS[options.hypervisor]
        self.clock: int | None = None  # the latest witness's entry time (the clock rule)
        self.clock_skipped = False  # too many hits to hold for the clock rule

    def _reading(self, gpa: int, layout: Layout, threshold: int) -> RunstateInfo | None:
        """The record at ``gpa`` if it passes this scan's rules (SPEC §6's with ``threshold``
        for the entry time, and unless ``--loose`` :mod:`xenrs_cli.scan_rules`) with every byte
        readable (present or zero-filled), else ``None``. The scalar twin of
        :func:`check_layout`."""
        if gpa < 0:
            return None
        data, pieces = self.space.read(gpa, layout.size)
        if any(p.status in (Status.EXCLUDED, Status.ABSENT) for p in pieces):
            return None
        info = decode(layout, data)
        if not (0 <= info.state <= 3 and info.state_entry_time >= threshold
                and info.accounting in self._accept):
            return None
        if not self.options.loose and failed_rule(info) is not None:
            return None
        return info

    def hits(self) -> Iterator[Hit]:
        """The hits in GPA order. Unless ``--loose``, after the page rule of
        :meth:`_uncrowded` and the clock rule of :meth:`_on_the_clock` — which needs every hit
        before it can judge one, so they come at the end of the scan."""
        hits = self._raw_hits()
        if self.options.loose:
            return hits
        return self._on_the_clock(self._uncrowded(hits))

    def _on_the_clock(self, hits: Iterator[Hit]) -> Iterator[Hit]:
        """Drop offset hits whose entry time is far beyond the dump's clock.

        Every area in one dump is written against one clock (Xen's system time, or the VM's
        kvmclock), which had not passed the moment of the dump. The hits with the most evidence
        — exact accounting over two or more states: KVM's areas, Xen's idle vCPUs, which switch
        whenever a pCPU idles — witness how far it had run. An ``offset`` hit (which only Xen
        writes, and which SPEC's rules let through far more easily) whose entry time is more
        than :data:`~xenrs_cli.scan_rules.CLOCK_FACTOR` times the latest witness is dropped:
        in the real dumps these are kernel text and packed counters, entry times of days to
        years in a machine up for half a minute. Without a witness (a Xen guest's memory alone)
        the rule does not apply. Past :data:`MAX_HELD` hits it gives up and lets all through.
        """
        held: list[Hit] = []
        for hit in hits:
            held.append(hit)
            if len(held) > MAX_HELD:
                self.clock_skipped = True
                yield from held
                yield from hits
                return
        witnesses = [h.decoded.info.state_entry_time for h in held if _witness(h)]
        if not witnesses:
            yield from held
            return
        self.clock = max(witnesses)
        bound = self.clock * CLOCK_FACTOR
        for hit in held:
            info = hit.decoded.info
            if info.accounting is Accounting.OFFSET and info.state_entry_time > bound:
                self.stats.reject(CLOCK.name, 1, [hit.gpa])
                self.stats.hits -= 1
                continue
            yield hit

    def _raw_hits(self) -> Iterator[Hit]:
        opts, stats = self.options, self.stats
        total = stats.range_end - stats.range_start
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if self.progress is not None:
                self.progress(min(done, total), total)

        finder = Finder(numpy(), [(l, opts.align_of(l)) for l in opts.layouts], self._threshold,
                        self._accept, opts.loose, opts.chunk_size)
        cluster: list[_Raw] = []
        if self.progress is not None:
            self.progress(0, total)
        for found in self._found(finder, advance):
            for gpa, layout in found:
                if cluster and gpa - cluster[-1].gpa > MAX_SIZE:
                    yield from self._flush(cluster)
                    cluster = []
                cluster.append(_Raw(gpa, layout))
        if cluster:
            yield from self._flush(cluster)
        if self.progress is not None:
            self.progress(total, total)

    def _found(self, finder: Finder, advance: Callable[[int], None]) -> Iterator[Found]:
        """The readings that pass, in GPA order, a list at a time: window by window here, or
        task by task (:func:`~xenrs_cli.scan_find.plan`) on every core
        (:mod:`xenrs_cli.scan_parallel`) when the dump holds enough to share out."""
        stats, space = self.stats, self.space
        start, end = stats.range_start, stats.range_end
        processes = scan_parallel.workers()
        tasks, counted = plan(space, start, end) if processes > 1 else ([], {})
        if len(tasks) < 2:
            yield from finder.found(space, start, end, end, stats, advance)
            return
        stats.bytes.update(counted)

        def work(k: int) -> tuple[list[tuple[int, str]], ScanStats]:
            part = ScanStats()
            a, b = tasks[k]
            found = [(g, l.name) for window in finder.found(space, a, b, end, part)
                     for g, l in window]
            return found, part

        for (a, b), (found, part) in zip(tasks, scan_parallel.ordered(len(tasks), work,
                                                                         processes)):
            stats.add(part)
            advance(b - a)
            yield [(g, LAYOUTS[name]) for g, name in found]

    # -- choosing between readings of the same bytes ------------------------------------------

    def _records_at_entry(self, e: int, threshold: int | None = None) -> list[tuple[int, Layout]]:
        """The readings whose ``state_entry_time`` starts at GPA ``e`` and pass the rules (with
        ``threshold`` for the entry time, default ``--min-entry-time``), after the twin choice:
        none, one, or both of an indistinguishable pair."""
        threshold = self._threshold if threshold is None else threshold
        g64 = e - LAYOUT_64.entry_offset
        gc = e - LAYOUT_COMPAT.entry_offset
        info64 = self._reading(g64, LAYOUT_64, threshold)
        okc = self._reading(gc, LAYOUT_COMPAT, threshold) is not None
        if info64 is None:
            return [(gc, LAYOUT_COMPAT)] if okc else []
        if not okc:
            return [(g64, LAYOUT_64)]
        choice = self._twin_choice(g64, info64)
        return [(g, l) for g, l in ((g64, LAYOUT_64), (gc, LAYOUT_COMPAT))
                if choice in ("both", l.name)]

    def _shadow_of(self, raw: _Raw) -> list[tuple[int, Layout]]:
        """The record(s) that ``raw`` is a byte-shifted reading of, if any.

        Reading a record ``k`` bytes early (1 ≤ k ≤ 7) multiplies every field by 256^k (mod
        2^64) when the ``k`` bytes shifted in are zero — as they are in zeroed memory and in the
        top bytes of nanosecond counters below 2^56 — so the sum rule holds there too. Of two
        passing readings whose ``state_entry_time`` fields overlap, ``k`` bytes apart, the
        earlier one is the shadow when it is what such a shift produces (:func:`_is_shadow`);
        otherwise the later one passes by a coincidence of the bytes (equal counters, zeros
        around) and is the shadow.
        """
        e = raw.entry_gpa
        # Any nonzero entry time: a shadow's values are 256^k times its record's, so the
        # record itself may be below --min-entry-time.
        here = min(g for g, _ in self._records_at_entry(e, threshold=1))
        for d in (7, 6, 5, 4, 3, 2, 1, -1, -2, -3, -4, -5, -6, -7):
            others = self._records_at_entry(e + d, threshold=1)
            if not others:
                continue
            there = min(g for g, _ in others)
            if d > 0 and self._is_shadow(e, here, d, there) and not self._reportable_over(
                    raw, e + d):
                return others
            if d < 0 and not self._is_shadow(e + d, there, -d, here) and max(
                    self._evidence_at(g, l) for g, l in others) >= self._evidence_at(
                    here, raw.layout if here == raw.gpa else _other(raw.layout)):
                return others
        return []

    def _reportable_over(self, raw: _Raw, other: int) -> bool:
        """Whether ``raw`` is a record a hypervisor writes that meets --min-entry-time while
        the reading with its entry-time field at ``other`` does not: the tie-break when each
        could be the other shifted (not with ``--loose``).

        Round counters (every one a multiple of 256^k, as in hand-made test images such as
        ``examples/guest.raw``) make a record and its k-byte-later reading shifts of each other
        byte for byte. Real nanosecond sums practically never end in zero bytes, so the bytes
        say the earlier is the shadow; but when only the earlier one has an entry time the user
        asked for, it is the record (a real record that young would have to be under a second
        old). A shadow k >= 4 bytes early has counters that are multiples of 2^32, which the
        texture rule refuses."""
        if self.options.loose:
            return False
        info = self._info(raw.gpa, raw.layout)
        theirs = int.from_bytes(self.space.read(other, 8)[0], "little") & ENTRY_MASK
        return (info.state_entry_time >= self._threshold > theirs
                and failed_rule(info) is None)

    def _is_shadow(self, entry: int, start: int, k: int, later: int) -> bool:
        """Whether the readings with their entry-time field at ``entry`` (the earliest starting
        at ``start``), ``k`` bytes before that of passing readings starting at ``later``, are
        those records read early: the low ``k`` bytes of every counter are zero, as the shift
        puts them there, and their bytes before ``later`` are zero, as in the zeroed memory such
        shadows come from. (So a record whose counters all end in zero bytes — likely only with
        a single nonzero counter — is told from its shadow by a nonzero state.)"""
        counters = struct.unpack("<5Q", self.space.read(entry, 40)[0])
        unit = 1 << (8 * k)
        if any(v % unit for v in counters):
            return False
        return later <= start or not any(self.space.read(start, later - start)[0])

    def _info(self, gpa: int, layout: Layout) -> RunstateInfo:
        return decode(layout, self.space.read(gpa, layout.size)[0])

    def _twin_choice(self, g64: int, info64: RunstateInfo) -> str:
        """Which of 64 at ``g64`` and compat at ``g64 + 4`` (both passing) the bytes support:
        ``"64"``, ``"compat"`` or ``"both"``.

        1. 64's padding is nonzero (it holds compat's state 1..3): compat. Xen and KVM write the
           padding as zero (``update_runstate_area()`` copies a zeroed struct; KVM's split path
           copies ``rs`` with zero padding, its fast path never writes it).
        2. 64's state is nonzero (compat would start after unrelated bytes 1..3): 64.
        3. All eight bytes before the entry time are zero, so both say "running" with the same
           numbers: 64 if a 64-bit record sits 48 bytes before or after (a per-vCPU array),
           else both.
        """
        if info64.padding != bytes(4):
            return "compat"
        if info64.state != 0:
            return "64"
        for nb in (g64 - LAYOUT_64.size, g64 + LAYOUT_64.size):
            if self._reading(nb, LAYOUT_64, self._threshold) is not None:
                return "64"
        return "both"

    def _excluded_by(self, gpa: int, layout: Layout) -> str | None:
        """Which option keeps a record that passes the rules out of this scan's hits, if any:
        ``"layout"``, ``"align"``, ``"range"`` or ``"min-entry-time"``."""
        opts = self.options
        if layout not in opts.layouts:
            return "layout"
        if gpa % opts.align_of(layout):
            return "align"
        if not (self.stats.range_start <= gpa and gpa + layout.size <= self.stats.range_end):
            return "range"
        if self._info(gpa, layout).state_entry_time < self._threshold:
            return "min-entry-time"
        return None

    def _drop(self, raw: _Raw, records: list[tuple[int, Layout]], how: str) -> None:
        self.stats.readings_dropped += 1
        for gpa, layout in records:
            option = self._excluded_by(gpa, layout)
            if option is not None:
                self.unreported.append(Unreported(gpa, layout, raw.gpa, how, option))

    def _resolve(self, cluster: list[_Raw]) -> list[_Raw]:
        kept = []
        for raw in cluster:
            shadow = self._shadow_of(raw)
            if shadow:
                self._drop(raw, shadow, "shifted reading")
                continue
            records = self._records_at_entry(raw.entry_gpa)
            if (raw.gpa, raw.layout) not in records:
                self._drop(raw, records, "twin reading")
                continue
            if len(records) == 2:
                (tg, tl), = [r for r in records if r[1] is not raw.layout]
                raw.twin = (tg, tl)
                what = "compat" if tl is LAYOUT_COMPAT else "64-bit"
                raw.notes.append(f"the same bytes also read as a {what} record at GPA 0x{tg:x} "
                                 "(64-bit padding = compat state = 0); nothing tells them apart")
            clash = [k for k in kept if raw.gpa < k.gpa + k.layout.size
                     and not (k.twin and k.twin[0] == raw.gpa)]
            if clash:
                # Overlaps records before it, with a different state_entry_time field: one of
                # them reads across the other's fields. The one with more evidence (what a
                # hypervisor writes, then exact accounting) is the record; at equal evidence the
                # earlier, as a reading of a record's times and the bytes after it can only be
                # later (one 8+ bytes early reads all zeros).
                if self._evidence(raw) > max(self._evidence(k) for k in clash):
                    self.stats.readings_dropped += len(clash)
                    kept = [k for k in kept if k not in clash]
                else:
                    self.stats.readings_dropped += 1
                    continue
            kept.append(raw)
        return kept

    def _evidence(self, raw: _Raw) -> tuple[bool, bool]:
        return self._evidence_at(raw.gpa, raw.layout)

    def _evidence_at(self, gpa: int, layout: Layout) -> tuple[bool, bool]:
        """How much a reading looks like a runstate area: (a hypervisor could write it, its
        accounting is exact). Only ``--loose`` lets readings of the first kind False through."""
        info = self._info(gpa, layout)
        return failed_rule(info) is None, info.exact

    def _uncrowded(self, hits: Iterator[Hit]) -> Iterator[Hit]:
        """Drop the hits of a page that holds three or more places that are not one array.

        A hypervisor writes one area per vCPU, and guests keep each in a per-CPU structure of
        its own: Linux ``DEFINE_PER_CPU(struct vcpu_runstate_info, xen_runstate)`` (one per
        CPU's per-CPU chunk), Xen's ``struct vcpu`` (a page each), or an array (the KVM selftest,
        a hypervisor's table) whose entries sit at one stride. Three or more places in one 4 KiB
        page at uneven strides is a page of other data — in the real dumps, user stacks full of
        pointers and slab pages — that happens to pass. A place is a hit or its twin pair.
        """
        page: list[Hit] = []
        for hit in hits:
            if page and hit.gpa // PAGE_SIZE != page[0].gpa // PAGE_SIZE:
                yield from self._page_verdict(page)
                page = []
            page.append(hit)
        if page:
            yield from self._page_verdict(page)

    def _page_verdict(self, page: list[Hit]) -> list[Hit]:
        places = sorted({min(h.gpa, h.twin[0]) if h.twin else h.gpa for h in page})
        gaps = {b - a for a, b in zip(places, places[1:])}
        if len(places) < 3 or len(gaps) == 1:
            return page
        self.stats.reject(CROWD.name, len(page), [h.gpa for h in page])
        self.stats.hits -= len(page)
        return []

    def _flush(self, cluster: list[_Raw]) -> Iterator[Hit]:
        for raw, agpa, aidx, alen in _arrays(self._resolve(cluster)):
            d = decode_at(self.space, raw.gpa, raw.layout.name, allow_missing=True,
                          hypervisor=self.options.hypervisor)
            self.stats.hits += 1
            yield Hit(d, agpa, aidx, alen, tuple(raw.notes), raw.twin)
