"""makedumpfile kdump-compressed dumps, plain or flattened (QEMU ``kdump-*``, ``makedumpfile``).

Layout (makedumpfile ``IMPLEMENTATION``, ``diskdump_mod.h``; QEMU dump/dump.c
``create_kdump_vmcore``), in blocks of ``block_size`` (the page size): the ``disk_dump_header``,
the ``kdump_sub_header`` and ELF notes (``sub_hdr_size`` blocks), the 1st bitmap (PFNs in the
guest's memory map) and the 2nd bitmap (PFNs dumped), each ``bitmap_blocks / 2`` blocks, then a
``page_desc`` per set bit of the 2nd bitmap in PFN order, then the page data.

Reading one page (makedumpfile ``read_pfn_from_kdump``, crash diskdump.c ``cache_page``): PFN p
with its 1st bit clear is *absent* (no segment here); set in the 1st and clear in the 2nd is
*excluded*; otherwise its descriptor is entry ``rank(p)`` = set bits of the 2nd bitmap below p,
found through :class:`Rank`, a per-4-KiB-block prefix count built lazily (a 64 GiB guest has a
2 MiB bitmap: nothing is counted twice and nothing past the block asked for). The header comes
in a 64-bit and a 32-bit variant (``timeval`` of 16 or 8 bytes): no field names it, so the
64-bit one is taken when its ``block_size`` is a plausible page size (QEMU ``create_header32``/
``create_header64``; the fixtures README's rule).
"""

from __future__ import annotations

import re
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from construct import Bytes, Int32sl, Int32ul, Int64sl, Int64ul, Struct

from xenrs_cli import cores
from xenrs_cli.address_space import (GPA_LIMIT, PAGE_SIZE, AddressSpace, Extent, Segment,
                                     Status, fill)
from xenrs_cli.dumps import Dump, codecs, flattened, source
from xenrs_cli.dumps.repeats import repeats
from xenrs_cli.binary import compiled, parse
from xenrs_cli.dumps.elf import cpu_states, parse_notes, summarise_notes
from xenrs_cli.errors import BadDumpError, UnsupportedDumpError
from xenrs_cli.files import MappedFile

KDUMP_SIGNATURE = b"KDUMP   "
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8  # makedumpfile wrote an ENOSPC-truncated dump
UTSNAME = Struct(*(name / Bytes(65) for name in
                   ("sysname", "nodename", "release", "version", "machine", "domainname")))


def _disk_dump_header(timestamp: int) -> Struct:
    return Struct("signature" / Bytes(8), "header_version" / Int32sl, "utsname" / UTSNAME,
                  "timestamp" / Bytes(timestamp), "status" / Int32ul, "block_size" / Int32sl,
                  "sub_hdr_size" / Int32sl, "bitmap_blocks" / Int32ul, "max_mapnr" / Int32ul,
                  "total_ram_blocks" / Int32ul, "device_blocks" / Int32ul,
                  "written_blocks" / Int32ul, "current_cpu" / Int32ul, "nr_cpus" / Int32sl)


# struct timeval is 16 bytes on LP64 and 8 on ILP32; the 64-bit header also pads 6 bytes before
# it (QEMU include/sysemu/dump.h DiskDumpHeader64 reproduces the natural alignment).
HEADERS = {"64-bit": _disk_dump_header(6 + 16), "32-bit": _disk_dump_header(8 + 2)}
SUB_HEADERS = {
    "64-bit": Struct("phys_base" / Int64ul, "dump_level" / Int32sl, "split" / Int32sl,
                     "start_pfn" / Int64ul, "end_pfn" / Int64ul, "offset_vmcoreinfo" / Int64ul,
                     "size_vmcoreinfo" / Int64ul, "offset_note" / Int64ul,
                     "size_note" / Int64ul, "offset_eraseinfo" / Int64ul,
                     "size_eraseinfo" / Int64ul, "start_pfn_64" / Int64ul,
                     "end_pfn_64" / Int64ul, "max_mapnr_64" / Int64ul),
    "32-bit": Struct("phys_base" / Int32ul, "dump_level" / Int32sl, "split" / Int32sl,
                     "start_pfn" / Int32ul, "end_pfn" / Int32ul, "offset_vmcoreinfo" / Int64ul,
                     "size_vmcoreinfo" / Int32ul, "offset_note" / Int64ul,
                     "size_note" / Int32ul, "offset_eraseinfo" / Int64ul,
                     "size_eraseinfo" / Int32ul, "start_pfn_64" / Int64ul,
                     "end_pfn_64" / Int64ul, "max_mapnr_64" / Int64ul),
}
PAGE_DESC = Struct("offset" / Int64sl, "size" / Int32ul, "flags" / Int32ul,
                   "page_flags" / Int64ul)
DESC_SIZE = PAGE_DESC.sizeof()
# Descriptors are read per page and counted in bulk: the compiled declaration is ~50x faster.
_DESC = compiled(PAGE_DESC)
assert _DESC.size == DESC_SIZE
RANK_BLOCK = 4096  # bytes of bitmap per prefix-count entry (32768 PFNs)
PAGE_CACHE = 16  # decompressed pages kept (crash's DISKDUMP_CACHED_PAGES)
DESC_STATS_LIMIT = 1 << 16  # count shared-zero/stored-raw pages only up to 1.5 MiB of descriptors


def sniff(buf) -> bool:
    return bytes(buf[:8]) == KDUMP_SIGNATURE or flattened.sniff(buf)


# ---------------------------------------------------------------------------------------------
# Bitmaps

SCAN_BYTES = 1 << 20  # bitmap bytes read and counted at a time


class Bitmap:
    """A bitmap of ``length`` bytes at ``at`` of the plain file, read a piece at a time.

    Never copied whole: a header may claim 2^36 PFNs (an 8 GiB bitmap) that the file holds as
    a hole. Slicing reads just the slice; :meth:`data_ranges` names the parts that may hold set
    bits (the rest of a sparse file, or of a flattened stream no record wrote, is zeros).
    """

    def __init__(self, data, at: int, length: int) -> None:
        self.data, self.at, self.length = data, at, length
        self._block = (-1, b"")  # the last RANK_BLOCK read: (block number, bytes)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, _ = key.indices(self.length)
            if stop <= start:
                return b""
            k = start // RANK_BLOCK
            if stop <= (k + 1) * RANK_BLOCK:  # within one block: served from the last one
                if self._block[0] != k:
                    lo = k * RANK_BLOCK
                    self._block = (k, bytes(self.data[self.at + lo:
                                                      self.at + min(lo + RANK_BLOCK, self.length)]))
                return self._block[1][start - k * RANK_BLOCK:stop - k * RANK_BLOCK]
            return bytes(self.data[self.at + start:self.at + stop])
        return self[key:key + 1][0]

    def data_ranges(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        for a, b in self.data.data_ranges(self.at + lo, self.at + hi):
            yield a - self.at, b - self.at


def _data_ranges(bitmap, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Byte ranges of ``[lo, hi)`` that may hold set bits, in pieces of ``SCAN_BYTES``."""
    ranges = bitmap.data_ranges(lo, hi) if hasattr(bitmap, "data_ranges") else [(lo, hi)]
    for a, b in ranges:
        for c in range(a, b, SCAN_BYTES):
            yield c, min(b, c + SCAN_BYTES)


def popcount(bitmap, lo: int, hi: int) -> int:
    """Set bits in bits ``[lo, hi)``, reading only the parts of the bitmap that hold data."""
    if lo >= hi:
        return 0
    first, last = lo >> 3, (hi + 7) >> 3
    total = 0
    for a, b in _data_ranges(bitmap, first, last):
        value = int.from_bytes(bitmap[a:b], "little")
        if a == first:
            value >>= lo & 7
            value <<= lo & 7
        if b == last and hi & 7:
            value &= (1 << (8 * (b - a) - (8 - (hi & 7)))) - 1
        total += value.bit_count()
    return total


class Rank:
    """Set bits of a bitmap below a bit, from lazily built per-block prefix counts.

    The last answer is kept: a query after it in the same block counts only the bits between
    (``info`` and ``decode`` walk PFNs in order, one query per page). The prefix counts are an
    ``array`` (8 bytes a block of 32768 PFNs), filled past holes without reading them.
    """

    def __init__(self, bitmap) -> None:
        self.bitmap = bitmap
        self._prefix = array("q", [0])  # _prefix[i] = set bits in blocks < i
        self._last = (0, 0)  # (bit, rank) of the previous query

    def _extend(self, block: int) -> None:
        """Count blocks up to ``block``, 256 at a time, reading only where there is data."""
        prefix, bitmap = self._prefix, self.bitmap
        nblocks = -(-len(bitmap) // RANK_BLOCK)
        want = min(block, nblocks)
        while len(prefix) <= want:
            k = len(prefix) - 1  # the next block to count
            kend = min(nblocks, k + SCAN_BYTES // RANK_BLOCK)
            counts = [0] * (kend - k)
            for a, b in _data_ranges(bitmap, k * RANK_BLOCK, min(kend * RANK_BLOCK, len(bitmap))):
                chunk, j = bitmap[a:b], a
                while j < b:
                    e = min(b, (j // RANK_BLOCK + 1) * RANK_BLOCK)
                    counts[j // RANK_BLOCK - k] += int.from_bytes(chunk[j - a:e - a],
                                                                  "little").bit_count()
                    j = e
            run = prefix[-1]
            for c in counts:
                run += c
                prefix.append(run)
        while len(prefix) <= block:  # past the bitmap: nothing more is set
            prefix.append(prefix[-1])

    def __call__(self, bit: int) -> int:
        block = bit // (8 * RANK_BLOCK)
        if len(self._prefix) <= block:
            self._extend(block)
        last_bit, last_rank = self._last
        if last_bit <= bit and last_bit // (8 * RANK_BLOCK) == block:
            rank = last_rank + self._count(last_bit, bit)
        else:
            rank = self._prefix[block] + self._count(block * 8 * RANK_BLOCK, bit)
        self._last = (bit, rank)
        return rank

    def _count(self, lo: int, hi: int) -> int:
        """Set bits in ``[lo, hi)`` (within one block)."""
        if lo >= hi:
            return 0
        value = int.from_bytes(self.bitmap[lo >> 3:(hi + 7) >> 3], "little") >> (lo & 7)
        return (value & ((1 << (hi - lo)) - 1)).bit_count()


def bit_runs(bitmap, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of set bits within bits ``[lo, hi)`` (LSB first), reading
    the bitmap a piece at a time and only where it holds data."""
    start = end = None
    for first, last in _data_ranges(bitmap, lo >> 3, (hi + 7) >> 3):
        chunk = bitmap[first:last]
        for m in re.finditer(rb"\xff+|[\x01-\xfe]", chunk):
            a, b = m.span()
            if b - a > 1 or chunk[a] == 0xFF:
                bits = [((first + a) * 8, (first + b) * 8)]
            else:
                value, base = chunk[a], (first + a) * 8
                bits = [(base + i, base + i + 1) for i in range(8) if value >> i & 1]
            for s, e in bits:
                s, e = max(s, lo), min(e, hi)
                if s >= e:
                    continue
                if end == s:
                    end = e
                else:
                    if start is not None:
                        yield start, end
                    start, end = s, e
    if start is not None:
        yield start, end


# ---------------------------------------------------------------------------------------------
# Pages


@dataclass(frozen=True, slots=True)
class PageDesc:
    offset: int
    size: int
    flags: int


DESC_BATCH = 1 << 16  # descriptors read at a time when looking for zero pages (1.5 MiB)
ZERO_RUN_PROBE = 1 << 12  # descriptors compared at a time within one run of zero pages


GROUP_GAP = 1 << 16  # a page this close after the last read continues it (read-ahead grows)
PARALLEL_PAGES = 64  # a batch of fewer pages is decoded on the calling thread


class Pages:
    """Page descriptors and page data of one kdump file (shared by its segments)."""

    def __init__(self, data, file_offset, block_size: int, bitmap1, bitmap2, desc_at: int,
                 incomplete: bool, n_dumped: int) -> None:
        self.data, self.file_offset, self.bs = data, file_offset, block_size
        self.bitmap1, self.bitmap2 = bitmap1, bitmap2
        self.rank = Rank(bitmap2)
        self.desc_at, self.incomplete = desc_at, incomplete
        self.data_at = desc_at + n_dumped * DESC_SIZE  # where page data starts
        # decode's random reads only (a record spans at most two pages); bulk reads bypass it
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._zero: list[bytes | None] = []  # the shared zero page's descriptor, once looked up

    def zero_descriptor(self) -> bytes | None:
        """The packed descriptor of the shared zero page, or ``None`` if the file has none.

        QEMU (dump/dump.c ``write_dump_pages()``) and makedumpfile (``write_kdump_pages``) write
        one page of zeros first in the data area, right after the descriptors, and give every
        zero page the same descriptor for it: offset there, one block, no codec, no page flags.
        It is taken as such only when that page really holds zeros."""
        if not self._zero:
            desc = _DESC.pack(self.data_at, self.bs, 0, 0)
            page = self.data[self.data_at:self.data_at + self.bs]
            self._zero.append(desc if len(page) == self.bs and not any(page) else None)
        return self._zero[0]

    def zero_runs(self, first: int, end: int) -> Iterator[tuple[int, int]]:
        """PFN runs ``[s, e)`` within ``[first, end)``, all of whose pages are dumped, whose
        descriptor is the shared zero page's, read a batch of descriptors at a time."""
        zero = self.zero_descriptor()
        if zero is None or first >= end:
            return
        run_s = run_e = -1
        index = self.rank(first)
        for lo in range(first, end, DESC_BATCH):
            n = min(DESC_BATCH, end - lo)
            at = self.desc_at + DESC_SIZE * (index + lo - first)
            for i, j in repeats(self.data[at:at + DESC_SIZE * n], zero, ZERO_RUN_PROBE):
                if lo + i == run_e:  # continues the run of the last batch
                    run_e = lo + j
                    continue
                if run_s >= 0:
                    yield run_s, run_e
                run_s, run_e = lo + i, lo + j
        if run_s >= 0:
            yield run_s, run_e

    def dumped(self, pfn: int) -> bool:
        return bool(self.bitmap2[pfn >> 3] >> (pfn & 7) & 1)

    def _check(self, pfn: int, at: int, offset: int, size: int, flags: int) -> PageDesc:
        desc = PageDesc(offset, size, flags)
        if self.lost(desc):
            return desc
        # crash diskdump.c cache_page(): "pd.size > block_size" is corrupt; makedumpfile and
        # QEMU store a page compressed only when that is smaller than the page.
        if (offset < 0 or size > self.bs
                or (not flags & codecs.COMPRESSED and size != self.bs)):
            raise BadDumpError(f"corrupt page descriptor of PFN 0x{pfn:x} (offset "
                               f"{offset:#x}, size {size}, flags 0x{flags:x})", offset=at)
        if offset + size > len(self.data):
            raise BadDumpError(f"corrupt page descriptor of PFN 0x{pfn:x}: its data (offset "
                               f"0x{offset:x}, {size} bytes) runs past the end of the file at "
                               f"0x{len(self.data):x} (truncated dump?)", offset=at)
        return desc

    def desc(self, pfn: int, index: int | None = None) -> PageDesc:
        at = self.desc_at + DESC_SIZE * (self.rank(pfn) if index is None else index)
        raw = self.data[at:at + DESC_SIZE]
        if len(raw) < DESC_SIZE:
            raise BadDumpError(f"page descriptor of PFN 0x{pfn:x} is past the end of the file "
                               "(truncated dump?)", offset=at)
        offset, size, flags, _ = _DESC.unpack(raw)
        return self._check(pfn, at, offset, size, flags)

    def lost(self, desc: PageDesc) -> bool:
        """A page makedumpfile could not write (``DUMP_DH_COMPRESSED_INCOMPLETE``)."""
        return self.incomplete and desc.offset == 0

    def status(self, pfn: int, in_page: int, size: int) -> tuple[Status, int | None]:
        if not self.dumped(pfn):
            return Status.EXCLUDED, None
        desc = self.desc(pfn)
        if self.lost(desc):
            return Status.ABSENT, None
        if desc.flags & codecs.COMPRESSED:
            return Status.PRESENT, None
        return Status.PRESENT, self.file_offset(desc.offset + in_page, size)

    def _decode(self, pfn: int, desc: PageDesc, data) -> bytes:
        codec = codecs.codec_of(desc.flags)
        if not codec:
            return bytes(data)
        try:
            return codecs.decompress(codec, data, self.bs)
        except ValueError as e:
            raise BadDumpError(f"page of PFN 0x{pfn:x}: {e}", offset=desc.offset) from None

    def page(self, pfn: int, index: int | None = None) -> bytes:
        """The page of a dumped PFN (zeros for a lost one), decompressed and cached."""
        cached = self._cache.get(pfn)
        if cached is not None:
            self._cache.move_to_end(pfn)
            return cached
        desc = self.desc(pfn, index)
        if self.lost(desc):
            return bytes(self.bs)
        data = self._decode(pfn, desc, self.data[desc.offset:desc.offset + desc.size])
        self._cache[pfn] = data
        if len(self._cache) > PAGE_CACHE:
            self._cache.popitem(last=False)
        return data

    def read_pages(self, first: int, count: int, out: memoryview) -> None:
        """Pages ``[first, first+count)`` into ``out`` (``count`` pages long): zeros where a
        page is excluded or lost. The bulk path ``scan`` takes: the 2nd bitmap and the
        descriptors of the run in one read each, the page data in a few large reads, and the
        pages decompressed on every core (zlib, LZO, snappy and zstd release the GIL). No
        per-page object or cache: a page costs a tuple and a decompression."""
        bs = self.bs
        bits = int.from_bytes(self.bitmap2[first >> 3:(first + count + 7) >> 3], "little")
        mask = (1 << count) - 1
        bits = (bits >> (first & 7)) & mask
        if bits == mask:
            dumped: range | list[int] = range(count)
        else:
            # positions of the set bits, LSB first, by the C loops of bin() and enumerate()
            dumped = [k for k, c in enumerate(bin(bits)[:1:-1]) if c == "1"]
            zero = bytes(bs)
            holes = set(range(count)).difference(dumped)
            for k in holes:
                out[k * bs:(k + 1) * bs] = zero
            if not dumped:
                return
        n = len(dumped)
        index = self.rank(first + dumped[0])
        at = self.desc_at + DESC_SIZE * index
        table = self.data[at:at + DESC_SIZE * n]
        if len(table) < DESC_SIZE * n:
            raise BadDumpError(f"page descriptors of PFNs 0x{first:x}-0x{first + count - 1:x} "
                               "are past the end of the file (truncated dump?)", offset=at)
        descs = list(_DESC.iter_unpack(table))
        workers = _workers()
        if workers is None or n < PARALLEL_PAGES:
            self._decode_part(first, dumped, descs, at, 0, n, out)
            return
        # one part per core, the first on this thread (which would only wait otherwise)
        w = workers._max_workers + 1
        cuts = [n * i // w for i in range(w + 1)]
        futures = [workers.submit(self._decode_part, first, dumped, descs, at, lo, hi, out)
                   for lo, hi in zip(cuts[1:], cuts[2:]) if lo < hi]
        try:
            self._decode_part(first, dumped, descs, at, 0, cuts[1], out)
        finally:
            for f in futures:
                f.result()

    def _decode_part(self, first: int, dumped, descs: list, at: int, lo: int, hi: int,
                     out: memoryview) -> None:
        """Check, fetch and decompress descriptors ``[lo, hi)`` of a batch into ``out``.

        Two shapes of real dumps are taken in bulk rather than page by page: consecutive pages
        with the same descriptor (QEMU's ``write_dump_pages()`` and makedumpfile point every
        zero page at one stored page: 84 % of the real Xen dom0 dump) are decoded once and
        repeated; pages stored as-is whose data follow each other in the file are read by one
        read straight into ``out``. Other page data is fetched with read-ahead, as the kernel
        does for a file: a read that continues the last one doubles in length (to
        ``READ_AHEAD``), any other reads one page; the last few reads are kept."""
        bs, size_limit, incomplete = self.bs, len(self.data), self.incomplete
        compressed = codecs.COMPRESSED
        decoders: dict[int, Any] = {}
        kept: list[tuple[int, int, memoryview]] = []
        g_start = g_end = -1
        view = memoryview(b"")
        ahead = bs
        shared, shared_page = None, b""  # the last descriptor seen twice in a row, its page
        j = lo
        while j < hi:
            desc = descs[j]
            offset, size, flags, _ = desc
            k = dumped[j]
            e = j + 1
            while e < hi and descs[e] == desc and dumped[e] == k + e - j:
                e += 1
            if desc == shared:
                out[k * bs:(k + e - j) * bs] = shared_page * (e - j)
                j = e
                continue
            if incomplete and offset == 0:  # lost pages read as zeros
                out[k * bs:(k + e - j) * bs] = bytes((e - j) * bs)
                j = e
                continue
            if (offset < 0 or size > bs or offset + size > size_limit
                    or (not flags & compressed and size != bs)):
                self._check(first + k, at + DESC_SIZE * j, offset, size, flags)
            if e == j + 1 and not flags & compressed:
                # as-is pages continuing each other in the batch and in the file: one read
                while (e < hi and dumped[e] == k + e - j and descs[e][1] == bs
                       and not descs[e][2] & compressed and descs[e][0] == offset + (e - j) * bs):
                    e += 1
                end = offset + (e - j) * bs
                if end > size_limit:  # past the end: the per-page check says where
                    e, end = j + 1, offset + bs
                if g_start <= offset and end <= g_end:  # already read ahead
                    out[k * bs:k * bs + end - offset] = view[offset - g_start:end - g_start]
                else:
                    fill(self.data, offset, out[k * bs:k * bs + end - offset])
                j = e
                continue
            if not (g_start <= offset and offset + size <= g_end):
                for g_start, g_end, view in kept:
                    if g_start <= offset and offset + size <= g_end:
                        break
                else:
                    # a page that starts in or just after the last read continues it (a
                    # compressed page often starts in the last read and ends past it)
                    ahead = (min(2 * ahead, READ_AHEAD)
                             if g_start <= offset < g_end + GROUP_GAP else bs)
                    length = min(size_limit - offset, max(size, ahead))
                    g_start, g_end = offset, offset + length
                    view = memoryview(self._read(offset, length))
                    kept.append((g_start, g_end, view))
                    if len(kept) > 4:
                        del kept[0]
            data = view[offset - g_start:offset - g_start + size]
            if flags & compressed:
                decode = decoders.get(flags)
                if decode is None:
                    decode = decoders[flags] = codecs.page_decoder(codecs.codec_of(flags))
                try:
                    page = decode(data, bs)
                except ValueError as err:
                    raise BadDumpError(f"page of PFN 0x{first + k:x}: {err}",
                                       offset=offset) from None
            else:
                page = bytes(data)
            if e > j + 1:
                shared, shared_page = desc, page
                page = page * (e - j)
            out[k * bs:(k + e - j) * bs] = page
            j = e

    def _read(self, offset: int, size: int):
        out = bytearray(size)
        fill(self.data, offset, memoryview(out))
        return out


READ_AHEAD = 4 << 20


_POOL: list = []


def _workers():
    """The thread pool that decompresses beside the calling thread (``None`` when this process
    has one core to itself: :func:`xenrs_cli.cores.for_readers`), made on first use. The pool
    of a parent process is never used in a forked child: the share is checked first."""
    threads = cores.for_readers()
    if threads < 2:
        return None
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(max_workers=threads - 1,
                                        thread_name_prefix="xenrs-page"))
    return _POOL[0]


class KdumpSegment(Segment):
    """A run of PFNs whose 1st-bitmap bits are set; each page is present or excluded."""

    def __init__(self, pages: Pages, first_pfn: int, end_pfn: int) -> None:
        self.pages, self.pfn = pages, first_pfn
        self.gpa, self.size = first_pfn * pages.bs, (end_pfn - first_pfn) * pages.bs

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        pfn, in_page = divmod(rel, self.pages.bs)
        return self.pages.status(self.pfn + pfn, in_page, size)

    def read(self, rel: int, size: int) -> bytes:
        pfn, in_page = divmod(rel, self.pages.bs)
        if not self.pages.dumped(self.pfn + pfn):
            return bytes(size)
        return self.pages.page(self.pfn + pfn)[in_page:in_page + size]

    def read_into(self, rel: int, out: memoryview, page_size: int = PAGE_SIZE) -> None:
        """Bulk read for ``scan``: whole pages straight into ``out`` where it is page-aligned,
        the partial first and last pages through a small buffer."""
        bs, size = self.pages.bs, len(out)
        if size == 0:
            return
        first, last = rel // bs, (rel + size - 1) // bs + 1
        head = rel - first * bs
        if head == 0 and size == (last - first) * bs:
            self.pages.read_pages(self.pfn + first, last - first, out)
            return
        whole_lo, whole_hi = first + (head > 0), (rel + size) // bs
        if whole_lo < whole_hi:
            self.pages.read_pages(self.pfn + whole_lo, whole_hi - whole_lo,
                                  out[whole_lo * bs - rel:whole_hi * bs - rel])
        for k in {first, last - 1}:
            if whole_lo <= k < whole_hi:
                continue
            page = bytearray(bs)
            self.pages.read_pages(self.pfn + k, 1, memoryview(page))
            lo, hi = max(rel, k * bs), min(rel + size, (k + 1) * bs)
            out[lo - rel:hi - rel] = page[lo - k * bs:hi - k * bs]

    def zero_runs(self, rel: int, end: int) -> Iterator[tuple[int, int]]:
        bs = self.pages.bs
        first, last = self.pfn + rel // bs, self.pfn + -(-end // bs)
        for s, e in bit_runs(self.pages.bitmap2, first, last):
            for zs, ze in self.pages.zero_runs(s, e):
                a, b = max(rel, (zs - self.pfn) * bs), min(end, (ze - self.pfn) * bs)
                if a < b:
                    yield a, b

    def status_runs(self, rel: int, end: int, page_size: int = PAGE_SIZE
                    ) -> Iterator[tuple[int, int, Status]]:
        """Runs read off the 2nd bitmap (present / excluded), not a ``chunk()`` per page: a
        64 GiB guest has 16 Mi pages. An incomplete dump's lost pages need their descriptors,
        so there the page-by-page walk is kept."""
        if self.pages.incomplete:
            yield from super().status_runs(rel, end, page_size)
            return
        if rel >= end:
            return
        bs = self.pages.bs
        first, last = self.pfn + rel // bs, self.pfn + (end - 1) // bs + 1

        def clip(s: int, e: int, status: Status) -> tuple[int, int, Status]:
            a, b = max(rel, (s - self.pfn) * bs), min(end, (e - self.pfn) * bs)
            return a, b - a, status

        cur = first
        for s, e in bit_runs(self.pages.bitmap2, first, last):
            if s > cur:
                yield clip(cur, s, Status.EXCLUDED)
            yield clip(s, e, Status.PRESENT)
            cur = e
        if cur < last:
            yield clip(cur, last, Status.EXCLUDED)

    def extents(self) -> Iterator[Extent]:
        bs = self.pages.bs
        for rel, size, status in self.status_runs(0, self.size, bs):
            s = self.pfn + rel // bs
            yield self._extent(s, s + size // bs, status)

    def _extent(self, s: int, e: int, status: Status) -> Extent:
        pfns = f"PFN 0x{s:x}" if e - s == 1 else f"PFN 0x{s:x}-0x{e - 1:x} ({e - s} pages)"
        return Extent(s * self.pages.bs, (e - s) * self.pages.bs, status, None, pfns)


# ---------------------------------------------------------------------------------------------
# Opening


def _header(data) -> tuple[str, Any]:
    """The header variant whose geometry is plausible (64-bit first)."""
    for variant, header in HEADERS.items():
        h = parse(header, data, 0, "kdump disk_dump_header")
        bs = h.block_size
        if 1024 <= bs <= 1 << 18 and bs & (bs - 1) == 0:
            return variant, h
    raise BadDumpError("kdump header with no plausible block_size (a power of two from 1 KiB to "
                       "256 KiB) in either the 64-bit or the 32-bit layout: corrupt header",
                       offset=0)


def _geometry(h, sub, size: int) -> tuple[int, int, int]:
    """(max_mapnr, bitmap offset, bitmap length) after checking them against the file."""
    bs = h.block_size
    max_mapnr = sub.max_mapnr_64 if h.header_version >= 6 and sub.max_mapnr_64 else h.max_mapnr
    if h.sub_hdr_size < 0 or h.bitmap_blocks == 0 or h.bitmap_blocks % 2:
        raise BadDumpError(f"kdump header: sub_hdr_size {h.sub_hdr_size}, bitmap_blocks "
                           f"{h.bitmap_blocks} (must be positive and even)", offset=0)
    bitmap_at = (1 + h.sub_hdr_size) * bs
    bitmap_len = h.bitmap_blocks // 2 * bs
    if max_mapnr > bitmap_len * 8:
        raise BadDumpError(f"kdump header: max_mapnr 0x{max_mapnr:x} needs more bitmap than "
                           f"bitmap_blocks {h.bitmap_blocks} hold", offset=0)
    if max_mapnr * bs > GPA_LIMIT:
        raise BadDumpError(f"kdump header: max_mapnr 0x{max_mapnr:x} pages of {bs} bytes reach "
                           "beyond 2^52, above any guest-physical address", offset=0)
    if bitmap_at + 2 * bitmap_len > size:
        raise BadDumpError(f"kdump bitmaps end at 0x{bitmap_at + 2 * bitmap_len:x}, past the end "
                           f"of the file at 0x{size:x} (truncated dump?)", offset=bitmap_at)
    return max_mapnr, bitmap_at, bitmap_len


def load(mapped: MappedFile, base: int = 0) -> Dump:
    src = source.of(mapped)
    if flattened.sniff(src):
        flat = flattened.FlatFile(src, mapped.size)
        data, file_offset, container = flat, flat.file_offset, "flattened"
    else:
        data, file_offset, container = src, (lambda off, n: off), "plain"
    if bytes(data[:8]) != KDUMP_SIGNATURE:
        raise BadDumpError(f"not a kdump file: no KDUMP signature (it starts with "
                           f"{bytes(data[:8]).hex()})", offset=0)
    variant, h = _header(data)
    bs = h.block_size
    sub = parse(SUB_HEADERS[variant], data, bs, "kdump_sub_header")
    if h.header_version >= 2 and sub.split:
        raise UnsupportedDumpError("this is one part of a makedumpfile --split dump: join the "
                                   "parts first with makedumpfile --reassemble")
    max_mapnr, bitmap_at, bitmap_len = _geometry(h, sub, len(data))
    bitmap1 = Bitmap(data, bitmap_at, bitmap_len)
    bitmap2 = Bitmap(data, bitmap_at + bitmap_len, bitmap_len)
    desc_at = bitmap_at + 2 * bitmap_len
    # Counted a piece at a time, over the parts of the bitmap the file holds (never one
    # integer of the whole bitmap: 2^32 PFNs made it 512 MiB).
    n_dumped = popcount(bitmap2, 0, bitmap_len * 8)
    if desc_at + n_dumped * DESC_SIZE > len(data):
        raise BadDumpError(f"{n_dumped} page descriptors do not fit in the file (truncated "
                           "dump?)", offset=desc_at)
    if n_dumped and _in_both(bitmap1, bitmap2) != n_dumped:
        # makedumpfile makes the 2nd bitmap from the 1st by clearing bits (create_2nd_bitmap);
        # QEMU writes one bitmap twice: a dumped page outside the memory map is corruption.
        raise BadDumpError("kdump 2nd bitmap marks pages dumped that the 1st bitmap does not "
                           "have in memory: corrupt bitmaps", offset=bitmap_at + bitmap_len)
    flagged = bool(h.status & DUMP_DH_COMPRESSED_INCOMPLETE)
    pages = Pages(data, file_offset, bs, bitmap1, bitmap2, desc_at, flagged, n_dumped)
    segs = [KdumpSegment(pages, s, e) for s, e in bit_runs(bitmap1, 0, max_mapnr)]
    compression = codecs.names(h.status) or ["none"]
    details = _details(h, sub, variant, container, max_mapnr, compression)
    details["page_counts"] = _page_counts(pages, max_mapnr, n_dumped, desc_at)
    truncated = _data_end(pages, n_dumped, desc_at) > len(data)
    # A dump cut short (a full disk without makedumpfile's flag, a partial copy) is incomplete
    # too: its last pages' data is not in the file.
    details["incomplete"] = flagged or truncated
    if truncated:
        details["truncated"] = True
    notes = _note_list(data, h, sub)
    details.update(_notes(data, h, sub, notes))
    if h.nr_cpus > 0:
        details["vcpus"] = h.nr_cpus
    if container == "flattened":
        details["flattened_records"] = data.records
    return Dump(mapped.name, "kdump", AddressSpace(segs, bs), mapped,
                f"{container}, {'+'.join(compression)}", details, cpus=cpu_states(notes, True))


def _details(h, sub, variant: str, container: str, max_mapnr: int,
             compression: list[str]) -> dict[str, Any]:
    def text(b: bytes) -> str:
        return b.split(b"\0", 1)[0].decode("ascii", "replace")

    return {
        "container": container,
        "header_variant": variant,
        "header_version": h.header_version,
        "block_size": h.block_size,
        "max_mapnr": max_mapnr,
        "bitmap_blocks": h.bitmap_blocks,
        "status": h.status,
        "compression": "+".join(compression),
        "incomplete": bool(h.status & DUMP_DH_COMPRESSED_INCOMPLETE),
        "dump_level": sub.dump_level,
        "phys_base": f"0x{sub.phys_base:x}",
        "nr_cpus": h.nr_cpus,
        # the set fields only: QEMU fills in "machine" alone
        "utsname": {k: text(v) for k, v in h.utsname.items() if k != "_io" and text(v)},
    }


def _in_both(bitmap1, bitmap2) -> int:
    """Bits set in both bitmaps, read where the 1st has data."""
    both = 0
    for a, b in _data_ranges(bitmap1, 0, len(bitmap1)):
        both += (int.from_bytes(bitmap1[a:b], "little")
                 & int.from_bytes(bitmap2[a:b], "little")).bit_count()
    return both


def _page_counts(pages: Pages, max_mapnr: int, n_dumped: int, desc_at: int) -> dict[str, Any]:
    bitmap1 = pages.bitmap1
    n_in_map = popcount(bitmap1, 0, len(bitmap1) * 8)
    both = n_dumped  # load() checked that the 2nd bitmap is within the 1st
    counts: dict[str, Any] = {
        "present": n_dumped,
        "excluded": n_in_map - both,
        "absent": max_mapnr - n_in_map,
        "zero_page_shared": None,
        "stored_raw": None,
    }
    if n_dumped == 0 or n_dumped > DESC_STATS_LIMIT:
        return counts  # counting would read every descriptor: not at open time
    table = pages.data[desc_at:desc_at + n_dumped * DESC_SIZE]
    descs = list(_DESC.iter_unpack(table))
    raw = sum(1 for _, _, flags, _ in descs if not flags & codecs.COMPRESSED)
    # the shared zero page (Pages.zero_descriptor); the other flags-0 pages are stored as-is
    # because compressing them did not make them smaller
    zero = pages.zero_descriptor()
    shared = descs.count(_DESC.unpack(zero)) if zero is not None else 0
    counts["zero_page_shared"] = shared
    counts["stored_raw"] = raw - shared
    return counts


def _data_end(pages: Pages, n_dumped: int, desc_at: int) -> int:
    """Where the page data ends, by the descriptors: all of them when ``info`` reads them all
    anyway, else the last (makedumpfile and QEMU write page data in PFN order)."""
    if n_dumped == 0:
        return 0
    lo = desc_at + DESC_SIZE * (0 if n_dumped <= DESC_STATS_LIMIT else n_dumped - 1)
    table = pages.data[lo:desc_at + n_dumped * DESC_SIZE]
    return max((offset + size for offset, size, _, _ in _DESC.iter_unpack(table)
                if not (pages.incomplete and offset == 0)), default=0)


VMCOREINFO_MAX = 1 << 20  # Linux's is a page (VMCOREINFO_BYTES); refuse a claim beyond 1 MiB
NOTES_MAX = 64 << 20  # a note per CPU of a few KiB: 64 MiB is > 8192 CPUs' worth


def _note_list(data, h, sub) -> list[tuple[str, int, bytes]]:
    if h.header_version >= 4 and sub.size_note:
        # Checked against the file and a sane bound before a byte is copied.
        if sub.size_note > NOTES_MAX or sub.offset_note + sub.size_note > len(data):
            raise BadDumpError(f"kdump notes of {sub.size_note} bytes at 0x{sub.offset_note:x} "
                               "run past the end of the file or any plausible size",
                               offset=sub.offset_note)
        return parse_notes(data, sub.offset_note, sub.size_note, True, "kdump notes")
    return []


def _notes(data, h, sub, notes: list[tuple[str, int, bytes]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if notes:
        out.update(summarise_notes(notes, True))
    if h.header_version >= 3 and sub.size_vmcoreinfo and "vmcoreinfo" not in out:
        at = sub.offset_vmcoreinfo
        if sub.size_vmcoreinfo > VMCOREINFO_MAX or at + sub.size_vmcoreinfo > len(data):
            raise BadDumpError(f"VMCOREINFO of {sub.size_vmcoreinfo} bytes runs past the end of "
                               "the file or any plausible size", offset=at)
        raw = bytes(data[at:at + sub.size_vmcoreinfo])
        out["vmcoreinfo"] = raw.rstrip(b"\0").decode("utf-8", "replace")
    return out
