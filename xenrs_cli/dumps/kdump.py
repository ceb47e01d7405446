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
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from construct import Bytes, Int32sl, Int32ul, Int64sl, Int64ul, Struct

from xenrs_cli.address_space import PAGE_SIZE, AddressSpace, Extent, Segment, Status
from xenrs_cli.dumps import Dump, codecs, flattened
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


class Rank:
    """Set bits of a bitmap below a bit, from lazily built per-block prefix counts.

    The last answer is kept: a query after it in the same block counts only the bits between
    (``scan`` and ``info`` walk PFNs in order, one query per page).
    """

    def __init__(self, bitmap) -> None:
        self.bitmap = bitmap
        self._prefix = [0]  # _prefix[i] = set bits in blocks < i
        self._last = (0, 0)  # (bit, rank) of the previous query

    def __call__(self, bit: int) -> int:
        block = bit // (8 * RANK_BLOCK)
        prefix = self._prefix
        while len(prefix) <= block:
            k = len(prefix) - 1
            chunk = self.bitmap[k * RANK_BLOCK:(k + 1) * RANK_BLOCK]
            prefix.append(prefix[-1] + int.from_bytes(chunk, "little").bit_count())
        last_bit, last_rank = self._last
        if last_bit <= bit and last_bit // (8 * RANK_BLOCK) == block:
            rank = last_rank + self._count(last_bit, bit)
        else:
            rank = prefix[block] + self._count(block * 8 * RANK_BLOCK, bit)
        self._last = (bit, rank)
        return rank

    def _count(self, lo: int, hi: int) -> int:
        """Set bits in ``[lo, hi)``."""
        if lo >= hi:
            return 0
        value = int.from_bytes(self.bitmap[lo >> 3:(hi + 7) >> 3], "little") >> (lo & 7)
        return (value & ((1 << (hi - lo)) - 1)).bit_count()


def bit_runs(bitmap, lo: int, hi: int) -> Iterator[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of set bits within bits ``[lo, hi)`` (LSB first)."""
    start = end = None
    first, last = lo >> 3, (hi + 7) >> 3
    for m in re.finditer(rb"\xff+|[\x01-\xfe]", bitmap[first:last]):
        a, b = m.span()
        if m.end() - m.start() > 1 or bitmap[first + a] == 0xFF:
            bits = [((first + a) * 8, (first + b) * 8)]
        else:
            value, base = bitmap[first + a], (first + a) * 8
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


class Pages:
    """Page descriptors and page data of one kdump file (shared by its segments)."""

    def __init__(self, data, file_offset, block_size: int, bitmap1, bitmap2, desc_at: int,
                 incomplete: bool) -> None:
        self.data, self.file_offset, self.bs = data, file_offset, block_size
        self.bitmap1, self.bitmap2 = bitmap1, bitmap2
        self.rank = Rank(bitmap2)
        self.desc_at, self.incomplete = desc_at, incomplete
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def dumped(self, pfn: int) -> bool:
        return bool(self.bitmap2[pfn >> 3] >> (pfn & 7) & 1)

    def desc(self, pfn: int, index: int | None = None) -> PageDesc:
        at = self.desc_at + DESC_SIZE * (self.rank(pfn) if index is None else index)
        raw = self.data[at:at + DESC_SIZE]
        if len(raw) < DESC_SIZE:
            raise BadDumpError(f"page descriptor of PFN 0x{pfn:x} is past the end of the file "
                               "(truncated dump?)", offset=at)
        offset, size, flags, _ = _DESC.unpack(raw)
        desc = PageDesc(offset, size, flags)
        if not self.lost(desc) and (desc.offset < 0 or desc.size > 2 * self.bs
                                    or desc.offset + desc.size > len(self.data)
                                    or (not desc.flags & codecs.COMPRESSED
                                        and desc.size != self.bs)):
            raise BadDumpError(f"corrupt page descriptor of PFN 0x{pfn:x} (offset "
                               f"0x{desc.offset:x}, size {desc.size}, flags 0x{desc.flags:x})",
                               offset=at)
        return desc

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

    def page(self, pfn: int, index: int | None = None) -> bytes:
        """The page of a dumped PFN (zeros for a lost one), decompressed and cached."""
        cached = self._cache.get(pfn)
        if cached is not None:
            self._cache.move_to_end(pfn)
            return cached
        desc = self.desc(pfn, index)
        if self.lost(desc):
            return bytes(self.bs)
        data = bytes(self.data[desc.offset:desc.offset + desc.size])
        codec = codecs.codec_of(desc.flags)
        if codec:
            try:
                data = codecs.decompress(codec, data, self.bs)
            except ValueError as e:
                raise BadDumpError(f"page of PFN 0x{pfn:x}: {e}", offset=desc.offset) from None
        self._cache[pfn] = data
        if len(self._cache) > PAGE_CACHE:
            self._cache.popitem(last=False)
        return data


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

    def read_span(self, rel: int, size: int, page_size: int = PAGE_SIZE) -> bytes:
        """Bulk read for ``scan``: one rank lookup, then consecutive descriptors."""
        bs, out = self.pages.bs, bytearray()
        first, last = rel // bs, (rel + size - 1) // bs
        index = None
        for k in range(first, last + 1):
            pfn = self.pfn + k
            if self.pages.dumped(pfn):
                index = self.pages.rank(pfn) if index is None else index + 1
                out += self.pages.page(pfn, index)
            else:
                out += bytes(bs)
        skip = rel - first * bs
        return bytes(out[skip:skip + size])

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
    if bitmap_at + 2 * bitmap_len > size:
        raise BadDumpError(f"kdump bitmaps end at 0x{bitmap_at + 2 * bitmap_len:x}, past the end "
                           f"of the file at 0x{size:x} (truncated dump?)", offset=bitmap_at)
    return max_mapnr, bitmap_at, bitmap_len


def _view(data, start: int, length: int):
    """Zero-copy view of plain-file bytes where the file is mapped; a copy for a stream."""
    return memoryview(data)[start:start + length] if not isinstance(data, flattened.FlatFile) \
        else data[start:start + length]


def load(mapped: MappedFile, base: int = 0) -> Dump:
    buf = mapped.buf
    if flattened.sniff(buf):
        flat = flattened.FlatFile(buf, mapped.size)
        data, file_offset, container = flat, flat.file_offset, "flattened"
    else:
        data, file_offset, container = buf, (lambda off, n: off), "plain"
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
    bitmap1 = _view(data, bitmap_at, bitmap_len)
    bitmap2 = _view(data, bitmap_at + bitmap_len, bitmap_len)
    desc_at = bitmap_at + 2 * bitmap_len
    dumped = int.from_bytes(bitmap2, "little")  # one big int: bit_count runs in C
    n_dumped = dumped.bit_count()
    if desc_at + n_dumped * DESC_SIZE > len(data):
        raise BadDumpError(f"{n_dumped} page descriptors do not fit in the file (truncated "
                           "dump?)", offset=desc_at)
    incomplete = bool(h.status & DUMP_DH_COMPRESSED_INCOMPLETE)
    pages = Pages(data, file_offset, bs, bitmap1, bitmap2, desc_at, incomplete)
    segs = [KdumpSegment(pages, s, e) for s, e in bit_runs(bitmap1, 0, max_mapnr)]
    compression = codecs.names(h.status) or ["none"]
    details = _details(h, sub, variant, container, max_mapnr, compression)
    details["page_counts"] = _page_counts(pages, max_mapnr, dumped, n_dumped, desc_at)
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


def _page_counts(pages: Pages, max_mapnr: int, dumped: int, n_dumped: int,
                 desc_at: int) -> dict[str, Any]:
    in_map = int.from_bytes(pages.bitmap1, "little")
    n_in_map = in_map.bit_count()
    counts: dict[str, Any] = {
        "present": n_dumped,
        "excluded": n_in_map - (in_map & dumped).bit_count(),
        "absent": max_mapnr - n_in_map,
        "zero_page_shared": None,
        "stored_raw": None,
    }
    if n_dumped == 0 or n_dumped > DESC_STATS_LIMIT:
        return counts  # counting would read every descriptor: not at open time
    table = pages.data[desc_at:desc_at + n_dumped * DESC_SIZE]
    descs = list(_DESC.iter_unpack(table))
    raw = [offset for offset, _, flags, _ in descs if not flags & codecs.COMPRESSED]
    # makedumpfile/QEMU write one zero page first and point every zero page's descriptor at it
    # (QEMU dump/dump.c write_dump_pages "pd_zero"); the other flags-0 pages are stored as-is
    # because compressing them did not make them smaller.
    first = min(d[0] for d in descs)
    zero_slot = bytes(pages.data[first:first + pages.bs]) == bytes(pages.bs)
    shared = raw.count(first) if zero_slot else 0
    counts["zero_page_shared"] = shared
    counts["stored_raw"] = len(raw) - shared
    return counts


def _note_list(data, h, sub) -> list[tuple[str, int, bytes]]:
    if h.header_version >= 4 and sub.size_note:
        return parse_notes(data, sub.offset_note, sub.size_note, True, "kdump notes")
    return []


def _notes(data, h, sub, notes: list[tuple[str, int, bytes]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if notes:
        out.update(summarise_notes(notes, True))
    if h.header_version >= 3 and sub.size_vmcoreinfo and "vmcoreinfo" not in out:
        at = sub.offset_vmcoreinfo
        raw = bytes(data[at:at + sub.size_vmcoreinfo])
        if len(raw) < sub.size_vmcoreinfo:
            raise BadDumpError("VMCOREINFO runs past the end of the file", offset=at)
        out["vmcoreinfo"] = raw.rstrip(b"\0").decode("utf-8", "replace")
    return out
