"""Guest-physical address spaces: the one place where GPA arithmetic lives.

A dump format is turned into a sorted list of :class:`Segment` objects (GPA range → where its
bytes are); :class:`AddressSpace` does everything else: finding the segment of a GPA, reading
across pages and segments, and reporting the provenance of every byte as :class:`Piece` runs
(SPEC §3 ``pieces``). The model is volatility3's ``SegmentedLayer``: formats only produce
segments.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from xenrs_cli.errors import BadDumpError, UnmappedAddressError

PAGE_SIZE = 4096
GPA_LIMIT = 1 << 52  # x86 MAXPHYADDR: no guest-physical address is 2^52 or above


class Status(StrEnum):
    """Provenance of a byte (SPEC §2)."""

    PRESENT = "present"          # stored in the dump
    ZERO_FILLED = "zero-filled"  # ELF [p_filesz, p_memsz): zero by convention, not stored
    EXCLUDED = "excluded"        # kdump: 1st bitmap set, 2nd clear (filtered by dump level)
    ABSENT = "absent"            # not in any segment (a hole; kdump 1st bitmap clear)


@dataclass(frozen=True, slots=True)
class Piece:
    """A maximal run of bytes of one read that share page, segment and status.

    ``offset`` is relative to the start of the read (the struct offset for ``decode``);
    ``file_offset`` is set only where the bytes are stored plainly in the file.
    """

    gpa: int
    offset: int
    len: int
    status: Status
    file_offset: int | None


@dataclass(frozen=True, slots=True)
class Extent:
    """A run of a segment that shares status and storage, for ``info``."""

    gpa: int
    size: int
    status: Status
    file_offset: int | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Run:
    """GPA ``[gpa, gpa+size)`` of one status in one segment (``None``: a hole, ``absent``)."""

    gpa: int
    size: int
    status: Status
    seg: "Segment | None"

    @property
    def end(self) -> int:
        return self.gpa + self.size


def fill(data, offset: int, out: memoryview) -> None:
    """Fill ``out`` with the bytes of ``data`` at ``offset``: by ``data.readinto`` where it has
    one (``dumps.source.FileBytes``, a flattened stream: ``pread`` straight into ``out``),
    else by slicing (``bytes``, a mapping)."""
    readinto = getattr(data, "readinto", None)
    if readinto is not None:
        readinto(offset, out)
    else:
        out[:] = memoryview(data)[offset:offset + len(out)]


class Segment:
    """A GPA range of a dump. Subclasses say where its bytes are.

    ``chunk`` and ``read`` are only ever asked about a range that lies inside one page of
    the segment, so a per-page format (kdump) can answer from one page descriptor.
    """

    __slots__ = ()  # subclasses choose: a dump can have a million segments
    gpa: int
    size: int

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        """Status and plain file offset (or ``None``) of segment bytes ``[rel, rel+size)``."""
        raise NotImplementedError

    def read(self, rel: int, size: int) -> bytes:
        """The bytes of ``[rel, rel+size)`` (zeros where they are not present)."""
        raise NotImplementedError

    def extents(self) -> Iterator[Extent]:
        raise NotImplementedError

    def status_runs(self, rel: int, end: int, page_size: int = PAGE_SIZE
                    ) -> Iterator[tuple[int, int, Status]]:
        """``(rel, size, status)`` runs of one status covering segment bytes ``[rel, end)``,
        asking ``chunk()`` one page at a time (its contract). Uniform segments override it."""
        run_start, run_status = rel, None
        cur = rel
        while cur < end:
            stop = min(end, ((self.gpa + cur) // page_size + 1) * page_size - self.gpa)
            status, _ = self.chunk(cur, stop - cur)
            if status is not run_status:
                if run_status is not None:
                    yield run_start, cur - run_start, run_status
                run_start, run_status = cur, status
            cur = stop
        if run_status is not None:
            yield run_start, end - run_start, run_status

    def zero_runs(self, rel: int, end: int) -> Iterator[tuple[int, int]]:
        """Ranges ``[a, b)`` of segment bytes within ``[rel, end)``, all ``present``, that the
        dump itself says are zeros without storing them each (a kdump's shared zero page), so
        that ``scan`` can pass them by as it passes zero-filled bytes. None by default."""
        return iter(())

    def read_span(self, rel: int, size: int, page_size: int = PAGE_SIZE) -> bytes:
        """Bytes of ``[rel, rel+size)`` across pages (zeros where not present)."""
        out = bytearray(size)
        self.read_into(rel, memoryview(out), page_size)
        return bytes(out)

    def read_into(self, rel: int, out: memoryview, page_size: int = PAGE_SIZE) -> None:
        """Fill ``out`` with segment bytes ``[rel, rel+len(out))`` (zeros where not present):
        the bulk read ``scan`` streams a dump with, into one reused buffer.

        Formats with a cheaper bulk path override this; the default asks page by page.
        """
        cur, end = rel, rel + len(out)
        while cur < end:
            stop = min(end, ((self.gpa + cur) // page_size + 1) * page_size - self.gpa)
            status, _ = self.chunk(cur, stop - cur)
            if status is Status.PRESENT:
                out[cur - rel:stop - rel] = self.read(cur, stop - cur)
            else:
                out[cur - rel:stop - rel] = bytes(stop - cur)
            cur = stop


class PresentSegment(Segment):
    """A segment whose bytes are all stored (raw, ELF, LiME, AVML, xl dump-core runs): one
    ``present`` run, whatever the range."""

    __slots__ = ()

    def status_runs(self, rel: int, end: int, page_size: int = PAGE_SIZE
                    ) -> Iterator[tuple[int, int, Status]]:
        if rel < end:
            yield rel, end - rel, Status.PRESENT


class LinearSegment(PresentSegment):
    """Bytes stored contiguously in the file (raw image, ELF ``PT_LOAD`` file part).

    ``buf`` is anything that slices like ``bytes``; where it can also ``readinto`` (the dump
    readers' :class:`~xenrs_cli.dumps.source.FileBytes`), bulk reads go straight into the
    caller's buffer.
    """

    __slots__ = ("gpa", "size", "buf", "file_offset", "detail")

    def __init__(self, gpa: int, size: int, buf, file_offset: int, detail: str = "") -> None:
        self.gpa, self.size, self.buf, self.file_offset = gpa, size, buf, file_offset
        self.detail = detail

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        return Status.PRESENT, self.file_offset + rel

    def read(self, rel: int, size: int) -> bytes:
        start = self.file_offset + rel
        return bytes(self.buf[start:start + size])

    def read_into(self, rel: int, out: memoryview, page_size: int = PAGE_SIZE) -> None:
        fill(self.buf, self.file_offset + rel, out)

    def extents(self) -> Iterator[Extent]:
        yield Extent(self.gpa, self.size, Status.PRESENT, self.file_offset, self.detail)



class ZeroSegment(Segment):
    """A range that reads as zeros but is not stored (ELF ``[p_filesz, p_memsz)``)."""

    __slots__ = ("gpa", "size", "detail")

    def __init__(self, gpa: int, size: int, detail: str = "") -> None:
        self.gpa, self.size, self.detail = gpa, size, detail

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        return Status.ZERO_FILLED, None

    def read(self, rel: int, size: int) -> bytes:
        return bytes(size)

    def read_into(self, rel: int, out: memoryview, page_size: int = PAGE_SIZE) -> None:
        out[:] = bytes(len(out))

    def extents(self) -> Iterator[Extent]:
        yield Extent(self.gpa, self.size, Status.ZERO_FILLED, None, self.detail)

    def status_runs(self, rel: int, end: int, page_size: int = PAGE_SIZE
                    ) -> Iterator[tuple[int, int, Status]]:
        if rel < end:
            yield rel, end - rel, Status.ZERO_FILLED


class AddressSpace:
    """A guest-physical address space made of non-overlapping segments."""

    def __init__(self, segments: Sequence[Segment], page_size: int = PAGE_SIZE) -> None:
        segs = sorted((s for s in segments if s.size > 0), key=lambda s: s.gpa)
        for a, b in zip(segs, segs[1:]):
            if b.gpa < a.end:
                raise BadDumpError(f"segments overlap: GPA 0x{a.gpa:x}-0x{a.end - 1:x} and "
                                   f"0x{b.gpa:x}-0x{b.end - 1:x}")
        self.segments: tuple[Segment, ...] = tuple(segs)
        self.page_size = page_size
        self._starts = [s.gpa for s in segs]

    def segment_at(self, gpa: int) -> Segment | None:
        i = bisect.bisect_right(self._starts, gpa) - 1
        if i >= 0 and gpa < self.segments[i].end:
            return self.segments[i]
        return None

    def _next_start(self, gpa: int) -> int | None:
        i = bisect.bisect_right(self._starts, gpa)
        return self._starts[i] if i < len(self._starts) else None

    def _runs(self, gpa: int, size: int) -> Iterator[tuple[int, int, Segment | None]]:
        """Split ``[gpa, gpa+size)`` at page and segment boundaries: (gpa, len, segment)."""
        cur, end = gpa, gpa + size
        while cur < end:
            page_end = (cur // self.page_size + 1) * self.page_size
            seg = self.segment_at(cur)
            if seg is not None:
                stop = min(end, page_end, seg.end)
            else:
                nxt = self._next_start(cur)
                stop = min(end, page_end, nxt if nxt is not None else end)
            yield cur, stop - cur, seg
            cur = stop

    def pieces(self, gpa: int, size: int) -> list[Piece]:
        """Provenance of ``[gpa, gpa+size)`` as maximal runs sharing page, segment and status."""
        out = []
        for cur, n, seg in self._runs(gpa, size):
            if seg is None:
                status, foff = Status.ABSENT, None
            else:
                status, foff = seg.chunk(cur - seg.gpa, n)
            out.append(Piece(cur, cur - gpa, n, status, foff))
        return out

    def read(self, gpa: int, size: int) -> tuple[bytes, list[Piece]]:
        """The bytes and their pieces; bytes that are not present read as zeros."""
        data = bytearray()
        pieces = []
        for cur, n, seg in self._runs(gpa, size):
            if seg is None:
                status, foff = Status.ABSENT, None
                data += bytes(n)
            else:
                status, foff = seg.chunk(cur - seg.gpa, n)
                data += seg.read(cur - seg.gpa, n) if status is not Status.EXCLUDED else bytes(n)
            pieces.append(Piece(cur, cur - gpa, n, status, foff))
        return bytes(data), pieces

    def read_present(self, gpa: int, size: int) -> bytes:
        """The bytes, or :class:`UnmappedAddressError` naming the first range not present."""
        data, pieces = self.read(gpa, size)
        check_present(pieces)
        return data

    def extents(self) -> Iterator[Extent]:
        for seg in self.segments:
            yield from seg.extents()

    def runs(self, lo: int, hi: int) -> Iterator[Run]:
        """Every byte of ``[lo, hi)`` in GPA order as runs of one status (for streaming over a
        whole dump, as ``scan`` does); holes are ``absent`` runs. The first segment is found
        by bisection: ``scan`` asks for one task's range at a time, and a dump can have a
        million segments."""
        cur = lo
        first = max(0, bisect.bisect_right(self._starts, lo) - 1)
        for seg in itertools.islice(self.segments, first, None):
            if seg.end <= cur:
                continue
            if seg.gpa >= hi:
                break
            if seg.gpa > cur:
                yield Run(cur, seg.gpa - cur, Status.ABSENT, None)
            start, stop = max(cur, seg.gpa) - seg.gpa, min(hi, seg.end) - seg.gpa
            for rel, size, status in seg.status_runs(start, stop, self.page_size):
                yield Run(seg.gpa + rel, size, status, seg)
            cur = seg.gpa + stop
        if cur < hi:
            yield Run(cur, hi - cur, Status.ABSENT, None)

    @property
    def end(self) -> int:
        return self.segments[-1].end if self.segments else 0


def check_present(pieces: Sequence[Piece]) -> None:
    """Raise for the first run of non-present bytes (adjacent pieces of one status merged)."""
    for i, p in enumerate(pieces):
        if p.status is Status.PRESENT:
            continue
        size = p.len
        for q in pieces[i + 1:]:
            if q.status is not p.status or q.gpa != p.gpa + size:
                break
            size += q.len
        raise UnmappedAddressError(p.gpa, size, p.status.value)
