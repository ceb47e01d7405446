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
import heapq
from collections.abc import Iterator
from array import array

from construct import Bytes, Int64sb, Struct

from xenrs_cli.address_space import fill
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


WALK_BLOCK = 1 << 20  # stream bytes read at a time while walking the record headers


class FlatFile:
    """The plain file a flattened stream describes: ``len()``, slicing, ``readinto``, stream
    offsets, and :meth:`data_ranges` (the parts some record wrote; the rest reads as zeros).

    The record index is three ``array('q')`` (24 bytes a record, not a tuple of ints each):
    QEMU writes a record per 16 KiB, so a big guest's stream has millions.
    """

    def __init__(self, buf, size: int) -> None:
        self.buf = buf
        head = parse(FLAT_HEADER, buf, 0, "flattened header")
        if (head.type, head.version) != (TYPE_FLAT_HEADER, VERSION_FLAT_HEADER):
            raise BadDumpError(f"flattened header with type {head.type}, version "
                               f"{head.version} (expected 1, 1)", offset=16)
        dst, src, lens, self.records = self._records(buf, size)
        self._dst, self._src, self._len = _resolve(dst, src, lens)
        # makedumpfile -R writes each record at its offset: a zero-length record writes nothing
        # and so does not extend the file (its offset is not a size to believe).
        self.size = max((d + n for d, n in zip(self._dst, self._len)), default=0)

    @staticmethod
    def _records(buf, size: int) -> tuple[array, array, array, int]:
        """Plain offset, stream offset and size of every record that has bytes, in stream
        order, and the number of records (zero-length ones included)."""
        step = _RECORD.size
        dst, src, lens = array("q"), array("q"), array("q")
        count = 0
        cur = HEADER_SIZE
        block, block_at = b"", 0
        while True:
            if cur + step > size:
                raise BadDumpError("flattened stream ends without its end marker "
                                   "(truncated dump?)", offset=cur)
            if not block_at <= cur <= block_at + len(block) - step:
                block_at, block = cur, buf[cur:min(size, cur + WALK_BLOCK)]
            offset, length = _RECORD.unpack_from(block, cur - block_at)
            if offset == END_FLAG and length == END_FLAG:
                return dst, src, lens, count
            if offset < 0 or length < 0:
                raise BadDumpError(f"flattened record with offset {offset}, size {length}",
                                   offset=cur)
            if cur + step + length > size:
                raise BadDumpError(f"flattened record of {length} bytes runs past the end of "
                                   "the file (truncated dump?)", offset=cur)
            if length:
                dst.append(offset)
                src.append(cur + step)
                lens.append(length)
            count += 1
            cur += step + length

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if not isinstance(key, slice):
            return self[key:key + 1][0]
        start, stop, _ = key.indices(self.size)
        if stop <= start:
            return b""
        out = bytearray(stop - start)  # unwritten bytes are zeros, as in makedumpfile -R
        self.readinto(start, memoryview(out))
        return bytes(out)

    def readinto(self, start: int, out: memoryview) -> None:
        """Fill ``out`` with the plain bytes at ``start`` (zeros where no record wrote)."""
        stop = start + len(out)
        i = max(0, bisect.bisect_right(self._dst, start) - 1)
        cur = start
        while cur < stop:
            if i < len(self._dst) and self._dst[i] < stop:
                lo, hi = max(cur, self._dst[i]), min(stop, self._dst[i] + self._len[i])
                if lo < hi:
                    if lo > cur:
                        out[cur - start:lo - start] = bytes(lo - cur)
                    src = self._src[i] + lo - self._dst[i]
                    fill(self.buf, src, out[lo - start:hi - start])
                    cur = hi
                i += 1
            else:
                out[cur - start:] = bytes(stop - cur)
                cur = stop


    def data_ranges(self, lo: int, hi: int):
        """Subranges of plain ``[lo, hi)`` that some record wrote (merged where adjacent)."""
        i = max(0, bisect.bisect_right(self._dst, lo) - 1)
        run = None
        while i < len(self._dst) and self._dst[i] < hi:
            a, b = max(lo, self._dst[i]), min(hi, self._dst[i] + self._len[i])
            i += 1
            if a >= b:
                continue
            if run is not None and run[1] == a:
                run = (run[0], b)
                continue
            if run is not None:
                yield run
            run = (a, b)
        if run is not None:
            yield run

    def file_offset(self, offset: int, size: int) -> int | None:
        """Stream offset of plain bytes ``[offset, offset+size)`` if one record holds them all."""
        i = bisect.bisect_right(self._dst, offset) - 1
        if i >= 0 and offset + size <= self._dst[i] + self._len[i]:
            return self._src[i] + offset - self._dst[i]
        return None


MAX_PILES = 16  # increasing runs tracked before sorting in blocks instead
SORT_BLOCK = 1 << 16


def _order(dst: array) -> Iterator[int]:
    """Record numbers sorted by plain offset, a later record first among equal offsets, made
    from compact arrays (a sort of a list of key tuples cost ~120 bytes a record).

    makedumpfile's streams are in order; QEMU's interleave a few increasing sequences (page
    descriptors and page data are flushed in turns): each is a *pile*, and the piles are
    merged. A stream in no such order is sorted in blocks that are then merged.
    """
    n = len(dst)
    if all(dst[k] < dst[k + 1] for k in range(n - 1)):
        return iter(range(n))

    def key(k: int) -> tuple[int, int]:
        return dst[k], -k

    piles: list[array] = []
    tails: list[int] = []
    for k in range(n):
        d = dst[k]
        for p, tail in enumerate(tails):
            if tail < d:
                piles[p].append(k)
                tails[p] = d
                break
        else:
            if len(piles) == MAX_PILES:
                break
            piles.append(array("q", [k]))
            tails.append(d)
    else:
        return heapq.merge(*piles, key=key)
    del piles, tails
    blocks = [array("q", sorted(range(lo, min(n, lo + SORT_BLOCK)), key=key))
              for lo in range(0, n, SORT_BLOCK)]
    return heapq.merge(*blocks, key=key)


def _resolve(dst: array, src: array, lens: array) -> tuple[array, array, array]:
    """Non-overlapping runs sorted by plain offset, later records winning (as ``-R`` writes)."""
    sd, ss, sl = array("q"), array("q"), array("q")
    end = -1
    for k in _order(dst):
        if dst[k] < end:
            return _paint(dst, src, lens)  # rare: overlapping records
        sd.append(dst[k])
        ss.append(src[k])
        sl.append(lens[k])
        end = dst[k] + lens[k]
    return sd, ss, sl


def _paint(dst: array, src: array, lens: array) -> tuple[array, array, array]:
    """Overlapping records resolved by a sweep over plain offsets: at each offset the latest
    record that covers it wins. A heap of the records covering the sweep point, newest on top
    (ended ones dropped when they surface): O(n log n) whatever the overlaps."""
    sd, ss, sl = array("q"), array("q"), array("q")
    order = _order(dst)
    nxt = next(order, None)
    active: list[tuple[int, int]] = []  # (-record, end)
    cur = 0
    last = -1  # the record of the last run emitted
    while nxt is not None or active:
        while active and active[0][1] <= cur:
            heapq.heappop(active)
        if not active:
            if nxt is None:
                break
            cur = max(cur, dst[nxt])
        while nxt is not None and dst[nxt] <= cur:
            if dst[nxt] + lens[nxt] > cur:
                heapq.heappush(active, (-nxt, dst[nxt] + lens[nxt]))
            nxt = next(order, None)
        while active and active[0][1] <= cur:
            heapq.heappop(active)
        if not active:
            continue
        k, end = -active[0][0], active[0][1]
        stop = min(end, dst[nxt]) if nxt is not None else end
        if last == k and sd and sd[-1] + sl[-1] == cur:
            sl[-1] += stop - cur
        else:
            sd.append(cur)
            ss.append(src[k] + cur - dst[k])
            sl.append(stop - cur)
            last = k
        cur = stop
    return sd, ss, sl
