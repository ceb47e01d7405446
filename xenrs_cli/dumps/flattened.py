"""makedumpfile's *flattened* stream, read in place as the plain kdump file it describes.

Format (makedumpfile ``IMPLEMENTATION`` and ``makedumpfile.h``; QEMU dump/dump.c
``write_start_flat_header``/``write_buffer``/``write_end_flat_header``): a 4096-byte header
(``signature`` "makedumpfile", big-endian int64 ``type`` = 1 and ``version`` = 1), then records
of big-endian int64 ``offset``, int64 ``size`` and ``size`` bytes that belong at ``offset`` of
the plain file, ended by a record with offset and size -1. QEMU's records are not in offset
order (page descriptors and page data are flushed in turns).

Instead of reassembling (``makedumpfile -R``), :class:`FlatFile` builds a sorted map of the
records once and serves slices of the plain file from the stream, so a kdump reader reads it
like a ``bytes`` object. Like ``-R``, a later record wins where two overlap, and bytes no record
wrote read as zeros.
"""

from __future__ import annotations

import bisect

from construct import Bytes, Int64sb, Struct

from xenrs_cli.binary import compiled, parse
from xenrs_cli.errors import BadDumpError

SIGNATURE = b"makedumpfile"
HEADER_SIZE = 4096  # MAX_SIZE_MDF_HEADER
FLAT_HEADER = Struct("signature" / Bytes(16), "type" / Int64sb, "version" / Int64sb)
RECORD = Struct("offset" / Int64sb, "size" / Int64sb)
# A stream has a record per 16 KiB or less: walked with the compiled declaration.
_RECORD = compiled(RECORD)
TYPE_FLAT_HEADER, VERSION_FLAT_HEADER = 1, 1
END_FLAG = -1  # END_FLAG_FLAT_HEADER


def sniff(buf) -> bool:
    return bytes(buf[:16]) == SIGNATURE.ljust(16, b"\0")


class FlatFile:
    """The plain file a flattened stream describes: ``len()``, slicing, and stream offsets."""

    def __init__(self, buf, size: int) -> None:
        self.buf = buf
        head = parse(FLAT_HEADER, buf, 0, "flattened header")
        if (head.type, head.version) != (TYPE_FLAT_HEADER, VERSION_FLAT_HEADER):
            raise BadDumpError(f"flattened header with type {head.type}, version "
                               f"{head.version} (expected 1, 1)", offset=16)
        records = self._records(buf, size)
        self._dst, self._src, self._len = _resolve(records)
        self.size = max((d + n for d, _, n in records), default=0)
        self.records = len(records)

    @staticmethod
    def _records(buf, size: int) -> list[tuple[int, int, int]]:
        """``(plain offset, stream offset, size)`` of every record, in stream order."""
        step = _RECORD.size
        out = []
        cur = HEADER_SIZE
        while True:
            if cur + step > size:
                raise BadDumpError("flattened stream ends without its end marker "
                                   "(truncated dump?)", offset=cur)
            offset, length = _RECORD.unpack_from(buf, cur)
            if offset == END_FLAG and length == END_FLAG:
                return out
            if offset < 0 or length < 0:
                raise BadDumpError(f"flattened record with offset {offset}, size {length}",
                                   offset=cur)
            if cur + step + length > size:
                raise BadDumpError(f"flattened record of {length} bytes runs past the end of "
                                   "the file (truncated dump?)", offset=cur)
            out.append((offset, cur + step, length))
            cur += step + length

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self.size)
        if stop <= start:
            return b""
        out = bytearray(stop - start)  # unwritten bytes are zeros, as in makedumpfile -R
        i = max(0, bisect.bisect_right(self._dst, start) - 1)
        while i < len(self._dst) and self._dst[i] < stop:
            lo, hi = max(start, self._dst[i]), min(stop, self._dst[i] + self._len[i])
            if lo < hi:
                src = self._src[i] + lo - self._dst[i]
                out[lo - start:hi - start] = self.buf[src:src + hi - lo]
            i += 1
        return bytes(out)

    def file_offset(self, offset: int, size: int) -> int | None:
        """Stream offset of plain bytes ``[offset, offset+size)`` if one record holds them all."""
        i = bisect.bisect_right(self._dst, offset) - 1
        if i >= 0 and offset + size <= self._dst[i] + self._len[i]:
            return self._src[i] + offset - self._dst[i]
        return None


def _resolve(records: list[tuple[int, int, int]]) -> tuple[list[int], list[int], list[int]]:
    """Non-overlapping runs sorted by plain offset, later records winning (as ``-R`` writes)."""
    runs = sorted((d, -k, s, n) for k, (d, s, n) in enumerate(records) if n)
    if all(a[0] + a[3] <= b[0] for a, b in zip(runs, runs[1:])):
        return [r[0] for r in runs], [r[2] for r in runs], [r[3] for r in runs]
    # Rare: overlapping records. Paint them newest first, keeping only uncovered parts.
    starts: list[int] = []
    pieces: dict[int, tuple[int, int]] = {}
    for d, s, n in reversed(records):
        for lo, hi in list(_uncovered(starts, pieces, d, d + n)):
            bisect.insort(starts, lo)
            pieces[lo] = (s + lo - d, hi - lo)
    return starts, [pieces[x][0] for x in starts], [pieces[x][1] for x in starts]


def _uncovered(starts: list[int], pieces: dict[int, tuple[int, int]], lo: int, hi: int):
    i = max(0, bisect.bisect_right(starts, lo) - 1)
    cur = lo
    while cur < hi:
        if i < len(starts) and starts[i] < hi:
            a = starts[i]
            b = a + pieces[a][1]
            if b <= cur:
                i += 1
                continue
            if a > cur:
                yield cur, a
            cur = max(cur, b)
            i += 1
        else:
            yield cur, hi
            return
