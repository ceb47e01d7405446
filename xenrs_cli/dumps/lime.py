"""LiME memory images and AVML's snappy-compressed variant of them.

Both are a sequence of blocks, each a 32-byte header and its data (LiME ``src/lime.h``
``lime_mem_range_header``; AVML ``src/image.rs`` ``Header::read``/``encode``): ``u32 magic``,
``u32 version``, ``u64 s_addr``, ``u64 e_addr`` (*inclusive*), ``u64 reserved`` (0).

* LiME, magic ``EMiL`` (0x4C694D45), version 1: ``e_addr - s_addr + 1`` bytes follow as-is.
* AVML, magic ``AVML`` (0x4C4D5641), version 2: a snappy *framed* stream of the range's bytes
  (``snap::write::FrameEncoder``: a stream identifier, then chunks of at most 64 KiB, each
  ``u8 type, u24 length, u32 masked CRC-32C`` and the data, compressed (type 0) or not
  (type 1)), then ``u64`` = the stream's length. AVML cuts ranges into blocks of at most 16 MiB
  (``MAX_BLOCK_SIZE``) and skips a block that is all zero, so its GPAs are *absent*.

Opening walks the block headers (and, for AVML, the chunk headers: 4 bytes each per 64 KiB, no
decompression), keeping per block compact arrays of chunk positions; a read decompresses the
one chunk it needs (a small LRU cache keeps the last few). Every range is a segment at its
physical address (LiME writes the ``System RAM`` ranges of ``/proc/iomem``: GPAs in a guest).
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from construct import Bytes, Int32ul, Int64ul, Struct

from xenrs_cli.address_space import (GPA_LIMIT, PAGE_SIZE, AddressSpace, Extent, LinearSegment,
                                     PresentSegment, Segment, Status)
from xenrs_cli.binary import parse
from xenrs_cli.dumps import Dump, codecs, source
from xenrs_cli.errors import BadDumpError, MissingCodecError
from xenrs_cli.files import MappedFile

LIME_MAGIC, AVML_MAGIC = b"EMiL", b"AVML"
HEADER = Struct("magic" / Bytes(4), "version" / Int32ul, "s_addr" / Int64ul,
                "e_addr" / Int64ul, "reserved" / Int64ul)
VERSIONS = {LIME_MAGIC: 1, AVML_MAGIC: 2}
# Snappy framing format (google/snappy framing_format.txt) chunk types.
STREAM_ID, COMPRESSED, UNCOMPRESSED, PADDING = 0xFF, 0x00, 0x01, 0xFE
STREAM_ID_BODY = b"sNaPpY"
MAX_CHUNK = 65536  # framing_format.txt: at most 65536 bytes of uncompressed data per chunk
CACHE_CHUNKS = 8


def sniff(buf) -> bool:
    head = bytes(buf[:8])
    return any(head[:4] == m and int.from_bytes(head[4:8], "little") == v
               for m, v in VERSIONS.items())


def _varint(data, at: int, end: int) -> int:
    """The little-endian base-128 length that opens a raw snappy block (snappy format_description
    "preamble"), or -1 if malformed."""
    value = shift = 0
    while at < end and shift < 35:
        b = data[at]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value
        at, shift = at + 1, shift + 7
    return -1


class SnappyBlock(PresentSegment):
    """One AVML block: GPA ``[gpa, gpa+size)`` from a snappy framed stream in the file."""

    def __init__(self, buf, gpa: int, size: int, header_at: int, starts: array, offsets: array,
                 kinds: bytes, lengths: array) -> None:
        self.buf, self.gpa, self.size, self.header_at = buf, gpa, size, header_at
        # chunk i: uncompressed bytes [starts[i], starts[i+1]) of the block; its payload (after
        # the CRC) at file offsets [offsets[i], offsets[i] + lengths[i])
        self.starts, self.offsets, self.kinds, self.lengths = starts, offsets, kinds, lengths
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def _chunk_of(self, rel: int) -> int:
        return bisect.bisect_right(self.starts, rel) - 1

    def _data(self, i: int) -> bytes:
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        at, n = self.offsets[i], self.lengths[i]
        raw = bytes(self.buf[at:at + n])
        want = self._chunk_size(i)
        if self.kinds[i] == UNCOMPRESSED:
            data = raw
        else:
            try:
                data = codecs.decompressor(codecs.SNAPPY)(raw, want)
            except MissingCodecError:
                raise
            except Exception as e:  # cramjam's error type; any means a corrupt chunk
                raise BadDumpError(f"snappy chunk of GPA 0x{self.gpa + self.starts[i]:x} does not "
                                   f"decompress: {e}", offset=at) from None
        if len(data) != want:
            raise BadDumpError(f"snappy chunk of GPA 0x{self.gpa + self.starts[i]:x} holds "
                               f"{len(data)} bytes, its preamble says {want}", offset=at)
        self._cache[i] = data
        if len(self._cache) > CACHE_CHUNKS:
            self._cache.popitem(last=False)
        return data

    def _chunk_size(self, i: int) -> int:
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        return end - self.starts[i]

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        i = self._chunk_of(rel)
        if self.kinds[i] == UNCOMPRESSED and rel + size <= self.starts[i] + self._chunk_size(i):
            return Status.PRESENT, self.offsets[i] + rel - self.starts[i]
        return Status.PRESENT, None

    def read(self, rel: int, size: int) -> bytes:
        return bytes(self.read_span(rel, size))

    def read_span(self, rel: int, size: int, page_size: int = PAGE_SIZE) -> bytes:
        out = bytearray()
        cur, end = rel, rel + size
        while cur < end:
            i = self._chunk_of(cur)
            data = self._data(i)
            lo = cur - self.starts[i]
            piece = data[lo:lo + end - cur]
            out += piece
            cur += len(piece)
        return bytes(out)

    def extents(self) -> Iterator[Extent]:
        yield Extent(self.gpa, self.size, Status.PRESENT, None,
                     f"AVML block at file offset 0x{self.header_at:x} "
                     f"({len(self.starts)} snappy chunk{'' if len(self.starts) == 1 else 's'})")


def _snappy_stream(buf, at: int, size: int, gpa: int) -> tuple[SnappyBlock, int]:
    """Index the framed stream at ``at`` holding ``size`` bytes; returns the block and the
    offset just past the stream (where AVML's u64 stream length is)."""
    limit = len(buf)
    starts, offsets, lengths = array("Q"), array("Q"), array("Q")
    kinds = bytearray()
    cur, produced, seen_id = at, 0, False
    while produced < size:
        if cur + 4 > limit:
            raise BadDumpError(f"AVML block at GPA 0x{gpa:x}: the snappy stream stops after "
                               f"0x{produced:x} of 0x{size:x} bytes at the end of the file "
                               "(truncated image?)", offset=cur)
        kind = buf[cur]
        length = int.from_bytes(buf[cur + 1:cur + 4], "little")
        body = cur + 4
        if body + length > limit:
            raise BadDumpError(f"AVML block at GPA 0x{gpa:x}: snappy chunk of {length} bytes runs "
                               "past the end of the file (truncated image?)", offset=cur)
        if kind == STREAM_ID:
            if bytes(buf[body:body + length]) != STREAM_ID_BODY:
                raise BadDumpError("AVML block: bad snappy stream identifier", offset=cur)
            seen_id = True
        elif kind in (COMPRESSED, UNCOMPRESSED):
            if not seen_id or length < 4:
                raise BadDumpError(f"AVML block at GPA 0x{gpa:x}: snappy data chunk "
                                   + ("before the stream identifier" if not seen_id
                                      else f"of {length} bytes"), offset=cur)
            payload = body + 4  # after the masked CRC-32C
            n = (length - 4 if kind == UNCOMPRESSED
                 else _varint(buf, payload, min(payload + 5, body + length)))
            if not 0 < n <= MAX_CHUNK or produced + n > size:
                raise BadDumpError(f"AVML block at GPA 0x{gpa:x}: snappy chunk of {n} bytes does "
                                   f"not fit the block (0x{produced:x} of 0x{size:x} written)",
                                   offset=cur)
            starts.append(produced)
            offsets.append(payload)
            lengths.append(length - 4)
            kinds.append(kind)
            produced += n
        elif kind == PADDING or kind >= 0x80:
            pass  # skippable chunks
        else:
            raise BadDumpError(f"AVML block at GPA 0x{gpa:x}: reserved unskippable snappy chunk "
                               f"type 0x{kind:02x}", offset=cur)
        cur = body + length
    return SnappyBlock(buf, gpa, size, at - HEADER.sizeof(), starts, offsets, bytes(kinds),
                       lengths), cur


def load(mapped: MappedFile, base: int = 0) -> Dump:
    buf, size = source.of(mapped), mapped.size
    segs: list[Segment] = []
    blocks: list[dict[str, Any]] = []
    cur = 0
    kinds = set()
    while cur < size:
        h = parse(HEADER, buf, cur, "LiME range header")
        if VERSIONS.get(h.magic) != h.version:
            raise BadDumpError(f"LiME range header {len(blocks)}: magic {h.magic!r} version "
                               f"{h.version} (expected EMiL version 1 or AVML version 2)",
                               offset=cur)
        if h.e_addr < h.s_addr or h.e_addr >= GPA_LIMIT:
            raise BadDumpError(f"LiME range header {len(blocks)}: range 0x{h.s_addr:x}-"
                               f"0x{h.e_addr:x} is empty or beyond 2^52", offset=cur)
        length = h.e_addr - h.s_addr + 1
        data_at = cur + HEADER.sizeof()
        entry = {"start": f"0x{h.s_addr:x}", "end": f"0x{h.e_addr:x}", "offset": cur}
        if h.magic == LIME_MAGIC:
            if data_at + length > size:
                raise BadDumpError(f"LiME range 0x{h.s_addr:x}-0x{h.e_addr:x} needs 0x{length:x} "
                                   f"bytes, the file has 0x{size - data_at:x} left (truncated "
                                   "image?)", offset=data_at)
            segs.append(LinearSegment(h.s_addr, length, buf, data_at, f"LiME range {len(blocks)}"))
            cur = data_at + length
        else:
            codecs.decompressor(codecs.SNAPPY)  # a missing codec is one error, at open time
            seg, end = _snappy_stream(buf, data_at, length, h.s_addr)
            if end + 8 > size:
                raise BadDumpError(f"AVML block at GPA 0x{h.s_addr:x}: its stream length is "
                                   "missing (truncated image?)", offset=end)
            stated = int.from_bytes(buf[end:end + 8], "little")
            if stated != end - data_at:
                raise BadDumpError(f"AVML block at GPA 0x{h.s_addr:x}: stream of "
                                   f"0x{end - data_at:x} bytes, its trailer says 0x{stated:x}",
                                   offset=end)
            entry["compressed"] = stated
            segs.append(seg)
            cur = end + 8
        kinds.add(h.magic)
        blocks.append(entry)
    if not segs:
        raise BadDumpError("LiME image without any range", offset=0)
    variant = "+".join(sorted({LIME_MAGIC: "LiME", AVML_MAGIC: "AVML snappy"}[k] for k in kinds))
    details: dict[str, Any] = {"ranges": len(blocks)}
    if len(blocks) <= 64:  # AVML cuts 16 MiB blocks: a big image's list goes in the extents
        details["blocks"] = blocks
    return Dump(mapped.name, "lime", AddressSpace(segs), mapped, variant, details)
