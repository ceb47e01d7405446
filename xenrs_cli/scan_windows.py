"""The streaming and vectorised half of ``scan``: windows over a dump, candidates in a window.

:mod:`xenrs_cli.scan` decides what a hit is and reports it; this module only moves bytes and
tests them with numpy (passed in, so that importing it costs nothing):

* :func:`streams` groups :meth:`AddressSpace.runs` into GPA-contiguous runs of readable bytes
  (``present`` or ``zero-filled``); ``excluded`` and ``absent`` ones end a stream.
* :func:`windows` cuts a stream into cores of candidate starts, each with the ``REACH`` bytes
  after it, so a record across a chunk, page or segment edge is seen whole and once; each
  window is read (``Segment.read_into``) into one reused buffer, in time linear in the spans.
* :func:`entry_positions` and :func:`check_layout` apply SPEC §6's rules to a window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from xenrs_cli.accounting import Accounting
from xenrs_cli.address_space import Run, Status
from xenrs_cli.layouts import LAYOUTS, XEN_RUNSTATE_UPDATE, Layout
from xenrs_cli.scan_rules import prefilter
from xenrs_cli.scan_stats import EXAMPLES, ScanStats

if TYPE_CHECKING:
    import numpy as np

MAX_SIZE = max(l.size for l in LAYOUTS.values())
REACH = MAX_SIZE - 1  # bytes past a start GPA that a record can touch
# A window stays in the CPU cache from its read to the numpy passes over it: on the real Xen
# kdump, reading (pread, decompression) and counting every page took 0.9 s in 1 MiB windows and
# 1.6 s in 16 MiB ones (benchmarks/readers.py).
WINDOW_MAX = 1 << 20
SEAM = 4096  # slack callers size their window scratch with (a window is at most chunk + REACH)


def streams(spans: Iterator[Run], stats: ScanStats,
             skipped: Callable[[int], None]) -> Iterator[list[Run]]:
    """Group spans into GPA-contiguous streams of readable (present/zero-filled) bytes.

    Excluded and absent spans end a stream (counted, reported to ``skipped``). A zero-filled span
    longer than two reaches keeps only its first and last ``REACH`` bytes, with a stream break
    between them: a record whose entry time is nonzero touches stored bytes, so it lies within
    ``REACH`` bytes of them.
    """
    stream: list[Run] = []
    for span in spans:
        stats.bytes[span.status.value] += span.size
        for sp in _zero_split(span):
            stream = yield from _add(stream, sp, skipped)
    if stream:
        yield stream


def _zero_split(sp: Run) -> Iterator[Run]:
    """A present span cut where the dump says its bytes are zeros without storing them
    (:meth:`Segment.zero_runs`: 84 % of the real Xen dom0 kdump is its shared zero page): those
    parts are passed on as zero-filled, so they are neither read nor tested. Short ones stay:
    each cut costs a stream break and two more windows."""
    if sp.status is not Status.PRESENT or sp.seg is None:
        yield sp
        return
    base, cur = sp.seg.gpa, sp.gpa
    for a, b in sp.seg.zero_runs(sp.gpa - base, sp.end - base):
        if b - a < ZERO_SKIP_MIN:
            continue
        if base + a > cur:
            yield Run(cur, base + a - cur, Status.PRESENT, sp.seg)
        yield Run(base + a, b - a, Status.ZERO_FILLED, sp.seg)
        cur = base + b
    if cur < sp.end:
        yield Run(cur, sp.end - cur, Status.PRESENT, sp.seg)


ZERO_SKIP_MIN = 1 << 16  # bytes of stored zeros worth a stream break


def _add(stream: list[Run], sp: Run, skipped: Callable[[int], None]
         ) -> Iterator[list[Run]]:
    """Add one span to the stream being built, yielding the streams it ends; returns the
    stream being built after it."""
    if sp.status in (Status.EXCLUDED, Status.ABSENT):
        skipped(sp.size)
        if stream:
            yield stream
        return []
    if sp.status is Status.ZERO_FILLED and sp.size > 2 * REACH:
        head = Run(sp.gpa, REACH, sp.status, sp.seg)
        tail = Run(sp.end - REACH, REACH, sp.status, sp.seg)
        skipped(sp.size - 2 * REACH)
        if stream:
            yield stream + [head]
        else:  # nothing before it for a record to start in
            skipped(REACH)
        return [tail]
    if stream and stream[-1].end != sp.gpa:
        yield stream
        stream = []
    stream.append(sp)
    return stream


def _fill(stream: list[Run], i: int, a: int, out: memoryview) -> int:
    """Fill ``out`` with stream bytes from GPA ``a`` (stored bytes, zeros for zero-filled
    ones), starting the search at span ``i``; returns the first span that reaches past ``a``,
    where the next (later) read starts: a stream is walked once, whatever its span count."""
    while stream[i].end <= a:
        i += 1
    j, pos, b = i, a, a + len(out)
    while pos < b:
        sp = stream[j]
        hi = min(b, sp.end)
        part = out[pos - a:hi - a]
        if sp.status is Status.PRESENT:
            sp.seg.read_into(pos - sp.seg.gpa, part)
        else:
            part[:] = bytes(hi - pos)
        pos = hi
        j += 1
    return i


def read_stream(stream: list[Run], a: int, b: int) -> bytes:
    """Bytes ``[a, b)`` of a stream (a copy): stored bytes, zeros for zero-filled ones."""
    out = bytearray(b - a)
    if b > a:
        _fill(stream, 0, a, memoryview(out))
    return bytes(out)


def windows(stream: list[Run], chunk: int, core_end: int | None = None,
            buffer: bytearray | None = None) -> Iterator[tuple[int, int, Any]]:
    """``(gpa, core_len, buffer)``: candidate starts ``[gpa, gpa+core_len)``, bytes
    ``[gpa, gpa + core_len + REACH)`` (fewer at the end of the stream); with ``core_end``,
    only the starts below it (the stream goes on past it for the records that do).

    Every window is read into one buffer, reused for the whole stream (the caller is done with
    a window before it asks for the next): a segment's bytes arrive by one ``pread`` (raw, ELF)
    or one batch of pages (kdump), whatever the number of spans they come from, and nothing of
    the dump stays mapped or resident after it is scanned. Consecutive windows overlap by
    ``REACH`` bytes only, so a record across any edge is seen whole in exactly one core.
    ``buffer`` (at least :func:`window_size` long) is used rather than a new one: a fresh one
    per stream page-faults in every stream, and a kdump has a stream between each two runs of
    zero pages.
    """
    start, end = stream[0].gpa, stream[-1].end
    chunk = min(chunk, WINDOW_MAX)
    size = min(chunk + REACH, end - start)
    out = memoryview(buffer if buffer is not None and len(buffer) >= size else bytearray(size))
    cur, i = start, 0
    stop = end if core_end is None else min(end, core_end)
    while cur < stop:
        core = min(chunk, stop - cur)
        size = min(end, cur + core + REACH) - cur
        i = _fill(stream, i, cur, out[:size])
        yield cur, core, out[:size]
        cur += core


def window_size(chunk: int) -> int:
    """The largest window :func:`windows` reads for ``chunk``."""
    return min(chunk, WINDOW_MAX) + REACH


# ---------------------------------------------------------------------------------------------
# The vectorised test of one window


def values_at(np, buf: np.ndarray, pos: np.ndarray, dtype: str) -> np.ndarray:
    """The little-endian integers of ``dtype`` at byte positions ``pos`` of ``buf``, which all
    share one residue mod 8 (they do within one byte shift): one strided, possibly unaligned,
    view of the buffer indexed at those places, no copy of the buffer."""
    size = np.dtype(dtype).itemsize
    off = int(pos[0]) % 8
    view = np.ndarray(((len(buf) - off) // size,), dtype=dtype, buffer=buf, offset=off)
    return view[(pos - off) // size]


def entry_positions(np, buf: np.ndarray, gpa: int, shifts: list[int], threshold: int,
                     scratch: tuple[np.ndarray, np.ndarray, np.ndarray],
                     below: int | None = None,
                     state_before: dict[int, tuple[int, ...]] | None = None,
                     counted: int | None = None
                     ) -> Iterator[tuple[int, np.ndarray, int, int]]:
    """For each byte shift ``s`` (GPA mod 8) in ``shifts``: ``(s, positions, beyond, passed)``,
    the ascending byte positions ``p`` of ``buf`` with ``(gpa + p) % 8 == s`` whose uint64
    value (flag bit included, so an upper bound of the entry time) is at least ``threshold``
    and, with ``below``, whose value without the flag bit is under ``below``. Among the fields
    that start before byte ``counted`` (the window's core: the fields of its tail are the next
    window's to count), ``beyond`` counts those that reach ``threshold`` but not that bound and
    ``passed`` those that pass both, whatever their state: so the counts of a scan do not
    depend on where its windows start (a field's state can lie before its window).

    One pass over the window finds the nonzero aligned words. Where they are few (sparse memory:
    zero pages), an 8-byte field at shift ``s > 0`` overlaps words ``w`` and ``w + 1``, so only
    fields next to a nonzero word are read, and only at those places. Where they are many (dense
    memory: a kernel, a heap), gathering them one by one costs more than comparing every field
    of the window through one contiguous (possibly unaligned) view per shift, which is what is
    done there; ``state_before`` (shift → the ``entry_offset`` of each layout read at that
    shift) then also keeps only the fields with a ``state`` of 0..3 that many bytes before, as
    one more comparison of the window, so that the gathers of :func:`check_layout` are few.
    ``scratch`` is two boolean arrays and one uint64 array of at least one element per word,
    reused across windows (fresh ones would page-fault in every window: measured 2x slower).
    """
    head = (-gpa) % 8  # bytes before the first 8-aligned GPA of the window
    words = (len(buf) - head) // 8
    if words <= 0 or (below is not None and threshold >= below):
        return
    aligned = np.ndarray((words,), dtype="<u8", buffer=buf, offset=head)
    lo = np.uint64(threshold)
    # How dense: a sample of every 64th word decides the method (a full count would be one
    # more pass over the window).
    if np.count_nonzero(aligned[::SAMPLE]) * DENSE > -(-words // SAMPLE):
        for s in shifts:
            start = (head + s) % 8  # the first field at shift s wholly inside the window
            fields = np.ndarray(((len(buf) - start) // 8,), dtype="<u8", buffer=buf,
                                offset=start)
            n = fields.size
            if below is None:
                hit = np.greater_equal(fields, lo, out=scratch[0][:n])
                passed = int(np.count_nonzero(hit[:_fields_before(counted, start, n)]))
                yield s, start + 8 * np.flatnonzero(hit), 0, passed
                continue
            # lo <= value without the flag < below, as one unsigned comparison of value - lo;
            # elementwise, as most dense fields are pointers or text far above the bound
            v = np.bitwise_and(fields, np.uint64(ENTRY_MASK), out=scratch[2][:n])
            far = np.greater_equal(v, np.uint64(below), out=scratch[1][:n])
            in_core = _fields_before(counted, start, n)
            beyond = int(np.count_nonzero(far[:in_core]))
            np.subtract(v, lo, out=v)
            hit = np.less(v, np.uint64(below - threshold), out=scratch[0][:n])
            passed = int(np.count_nonzero(hit[:in_core]))
            if state_before and state_before.get(s):
                _state_known(np, buf, start, hit, state_before[s], scratch[1][:n])
            yield s, start + 8 * np.flatnonzero(hit), beyond, passed
        return
    nonzero = np.not_equal(aligned, 0, out=scratch[0][:words])
    if not nonzero.any() and not buf[:head].any():
        return
    near = scratch[1][:words]
    np.copyto(near, nonzero)
    near[:-1] |= nonzero[1:]  # a field at shift s > 0 in word w also touches word w + 1
    for s in shifts:
        # A field at shift s starts in aligned word w at byte head + 8w + s; one that starts in
        # the partial word before word 0 is always read. (The partial word after the last one
        # never holds an entry time: a record ends at least 32 bytes after it.)
        pos = head + s + 8 * np.flatnonzero(nonzero if s == 0 else near)
        if s and head >= 8 - s:
            pos = np.concatenate(([head + s - 8], pos))
        pos = pos[:np.searchsorted(pos, len(buf) - 8, side="right")]
        if pos.size:
            values = values_at(np, buf, pos, "<u8")
            keep = values >= lo
            pos, beyond = _bounded(np, pos[keep], values[keep], threshold, below, counted)
            passed = pos.size if counted is None else int(np.searchsorted(pos, counted))
            yield s, pos, beyond, passed


def _state_known(np, buf, start: int, hit, offsets: tuple[int, ...], scratch) -> None:
    """Clear ``hit[k]`` (field ``k`` at byte ``start + 8k``) unless, for one of ``offsets``, the
    little-endian int32 ``offset`` bytes before it is 0..3 (a state)."""
    n = hit.size
    known = scratch
    known[:] = False
    for off in offsets:
        first = -(-(off - start) // 8) if off > start else 0  # fields with a state in buf
        at = start + 8 * first - off
        count = min(n - first, (len(buf) - at - 4) // 8 + 1)
        if count <= 0:
            continue
        states = np.ndarray((count,), dtype="<u4", buffer=buf, offset=at, strides=(8,))
        known[first:first + count] |= states <= 3
    np.logical_and(hit, known, out=hit)


# Above one nonzero word in DENSE (in a sample of one word in SAMPLE), a window is scanned
# field by field rather than gathered.
DENSE = 16
SAMPLE = 64


def _fields_before(counted: int | None, start: int, n: int) -> int:
    """How many of the fields at ``start + 8k`` (k < n) start before byte ``counted``."""
    return n if counted is None else max(0, min(n, -(-(counted - start) // 8)))


def _bounded(np, pos, values, threshold: int, below: int | None,
             counted: int | None) -> tuple[np.ndarray, int]:
    """The positions whose value without the flag bit is in ``[threshold, below)`` (with the
    flag, at least ``threshold``, when ``below`` is ``None``), and how many of those before
    ``counted`` reach ``below``: the same test as the dense path's, so that a field counts the
    same whichever path its window takes."""
    if below is None:
        return pos, 0
    entry = values & np.uint64(ENTRY_MASK)
    far = pos[entry >= np.uint64(below)]
    if counted is not None:
        far = far[far < counted]
    ok = (entry >= np.uint64(threshold)) & (entry < np.uint64(below))
    return pos[ok], int(far.size)


ENTRY_MASK = ~XEN_RUNSTATE_UPDATE & (2**64 - 1)


def check_layout(np, buf: np.ndarray, gpa: int, core_len: int, entries: np.ndarray,
                  layout: Layout, min_entry: int, accept: frozenset[Accounting],
                  stats: ScanStats | None = None) -> list[int]:
    """The GPA of every start in the core that passes SPEC §6's rules for ``layout`` — state
    0..3, entry time at least ``min_entry``, an accounting in ``accept`` — given the ascending
    positions of its possible ``state_entry_time`` fields (one byte shift, already of the
    layout's alignment). With ``stats``, the cheap rules of :mod:`xenrs_cli.scan_rules` apply
    too (:func:`~xenrs_cli.scan_rules.prefilter`), and what they reject is counted there;
    without (``--loose``) they do not."""
    starts = entries - layout.entry_offset
    lo = np.searchsorted(starts, 0)
    hi = np.searchsorted(starts, min(core_len, len(buf) - layout.size + 1))
    starts = starts[lo:hi]
    if not starts.size:
        return []
    # state: a little-endian int32 in 0..3, RUNSTATE_running..RUNSTATE_offline.
    state = values_at(np, buf, starts, "<u4")
    known = state <= 3
    starts, state = starts[known], state[known]
    if not starts.size:
        return []
    entry = values_at(np, buf, starts + layout.entry_offset, "<u8") & np.uint64(ENTRY_MASK)
    ok = entry >= np.uint64(max(min_entry, 1))
    times = [values_at(np, buf, starts + layout.times_offset + 8 * i, "<u8") for i in range(4)]
    # exact: the u64 sum (wrapping, as the kernel's) equals the entry time. offset: every time
    # and every partial sum stays below the entry time (< 2^63, so the partial sums never wrap).
    total = np.zeros(starts.size, dtype=np.uint64)
    fits = np.ones(starts.size, dtype=bool)
    for t in times:
        fits &= t <= entry
        total += t
        fits &= total <= entry
    exact = total == entry
    allowed = np.zeros(starts.size, dtype=bool)
    if Accounting.EXACT in accept:
        allowed |= exact
    if Accounting.OFFSET in accept:
        allowed |= fits & ~exact
    ok &= allowed
    if stats is not None and ok.any():
        padding = (values_at(np, buf, starts + 4, "<u4") if layout.has_padding else None)
        for rule, broken in prefilter(np, state, padding, entry, times, exact):
            hit = ok & broken
            if hit.any():
                stats.reject(rule.name, int(np.count_nonzero(hit)),
                             (starts[hit][:EXAMPLES] + gpa).tolist())
                ok &= ~broken
    return (starts[ok] + gpa).tolist()
