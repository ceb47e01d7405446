"""The QEMU migration stream (``QEVM``) walked once into a compact index of guest RAM pages.

Layout (QEMU ``migration/savevm.c``, ``migration/ram.c``; all integers big-endian): the file
header ``QEVM`` + version 3; a ``QEMU_VM_CONFIGURATION`` record (the machine type and the
``configuration/*`` subsections of ``vmstate_configuration``); then sections, each a type byte,
a section id and, for ``START``/``FULL``, the id string, instance and version
(``save_section_header``), its data, and a footer ``0x7e`` + section id
(``save_section_footer``); ``QEMU_VM_EOF``; and last the ``QEMU_VM_VMDESCRIPTION`` JSON that
describes every non-iterable section field by field with its byte size
(``qemu_savevm_state_complete_precopy_non_iterable``).

The ``ram`` section is iterative. Its ``START`` lists the RAM blocks (``ram_save_setup``: name,
used length; with ``mapped-ram`` a ``MappedRamHeader`` after which the stream skips the block's
page region, ``mapped_ram_setup_ramblock``). Its ``PART``/``END`` sections carry page records
(``save_page_header``): a be64 ``offset | flags``, the block name unless ``CONTINUE``, then the
payload: ``ZERO`` one byte 0, ``PAGE`` one target page, ``COMPRESS_PAGE`` (the ``compress``
capability, removed in QEMU 9.1) a be32 length and a zlib stream (``do_compress_ram_page``).
Iterative precopy resends dirty pages, so the index keeps the last record of each page
(``ram_load_precopy`` writes each record over the page). Device (``FULL``) sections are
skipped by the sizes the vmdesc JSON gives, since their encoding is per device.

Each page of a block is one uint64 in a :class:`PageIndex`: 0 never sent (*absent*), 1 a zero
page, ``offset << 2 | 2`` a plain page at that file offset, ``offset << 2 | 3`` a zlib page
whose be32 length is at that offset: 8 bytes a guest page, nothing else per page is kept. The
index is allocated per 1 GiB of guest RAM when a record first lands there, within a budget of
the file's size (a precopy stream spends 9 bytes or more per page): a block length claimed by
a corrupt file costs nothing.
"""

from __future__ import annotations

import io
import sys
from array import array
from dataclasses import dataclass, field
from typing import Any

from construct import Bytes, ConstructError, Int8ub, Int16ub, Int32ub, Int64ub, PascalString, Struct

from xenrs_cli.binary import compiled, parse
from xenrs_cli.dumps.qemu_vmstate import PAGE_BITS, DeviceSection, find_vmdesc, vmsd_size
from xenrs_cli.errors import BadDumpError, UnsupportedDumpError

QEVM_MAGIC = b"QEVM"
FILE_HEADER = Struct("magic" / Bytes(4), "version" / Int32ub)
QEMU_VM_FILE_VERSION = 3
# savevm.h section types
VM_EOF, SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL = 0x00, 0x01, 0x02, 0x03, 0x04
SUBSECTION, VMDESCRIPTION, CONFIGURATION, COMMAND, FOOTER = 0x05, 0x06, 0x07, 0x08, 0x7E
SECTION_ID = Struct("section_id" / Int32ub)
SECTION_HEADER = Struct("section_id" / Int32ub, "idstr" / PascalString(Int8ub, "ascii"),
                        "instance_id" / Int32ub, "version_id" / Int32ub)
SUBSECTION_HEADER = Struct("name" / PascalString(Int8ub, "ascii"), "version_id" / Int32ub)
COMMAND_HEADER = Struct("command" / Int16ub, "len" / Int16ub)
# savevm.c MIG_CMD_*: the ones after which the stream is not a plain precopy stream
POSTCOPY_COMMANDS = {4: "POSTCOPY_LISTEN", 5: "POSTCOPY_RUN", 6: "POSTCOPY_RAM_DISCARD",
                     7: "PACKAGED", 8: "ENABLE_COLO", 9: "POSTCOPY_RESUME"}
# ram.c MappedRamHeader (QEMU_PACKED)
MAPPED_RAM_HEADER = Struct("version" / Int32ub, "page_size" / Int64ub,
                           "bitmap_offset" / Int64ub, "pages_offset" / Int64ub)
MAPPED_RAM_HDR_VERSION = 1
# ram.h RAM_SAVE_FLAG_*
FLAG_ZERO, FLAG_MEM_SIZE, FLAG_PAGE, FLAG_EOS = 0x02, 0x04, 0x08, 0x10
FLAG_CONTINUE, FLAG_XBZRLE, FLAG_HOOK = 0x20, 0x40, 0x80
FLAG_COMPRESS_PAGE, FLAG_MULTIFD_FLUSH = 0x100, 0x200
BE64 = compiled(Struct("value" / Int64ub))
BE32 = compiled(Struct("value" / Int32ub))
# index entry kinds (low 2 bits)
ABSENT, ZERO, PLAIN, ZLIB = 0, 1, 2, 3
COMPRESS_BOUND = 4096 + 4096 // 1000 + 64  # > zlib compressBound(TARGET_PAGE_SIZE)


# Most of a stream is runs of zero-page records for consecutive pages of the block named last
# (``offset | ZERO | CONTINUE``, then the byte 0), as the first precopy pass sends them. Such a
# run is compared, in growing chunks, with the bytes it would be and applied as one slice.
_ZERO_CONTINUE = FLAG_ZERO | FLAG_CONTINUE
_RUN_MAX = 1 << 20

class PageIndex:
    """The per-page entries of one RAM block, in lazily allocated chunks of 2^18 pages."""

    CHUNK_BITS = 18
    CHUNK = 1 << CHUNK_BITS

    def __init__(self, pages: int, budget: list[int]) -> None:
        self.pages, self.budget = pages, budget  # budget: [bytes left], shared by the blocks
        self.chunks: dict[int, array] = {}

    def __len__(self) -> int:
        return self.pages

    def __getitem__(self, page: int) -> int:
        chunk = self.chunks.get(page >> self.CHUNK_BITS)
        return chunk[page & (self.CHUNK - 1)] if chunk is not None else ABSENT

    def chunk(self, number: int) -> array:
        chunk = self.chunks.get(number)
        if chunk is None:
            size = min(self.CHUNK, self.pages - (number << self.CHUNK_BITS))
            self.budget[0] -= 8 * size
            if self.budget[0] < 0:
                raise BadDumpError("page records spread over more guest RAM than a stream of "
                                   "this size can describe (corrupt stream?)")
            chunk = self.chunks[number] = array("Q", bytes(8 * size))
        return chunk

    def __setitem__(self, page: int, value: int) -> None:
        self.chunk(page >> self.CHUNK_BITS)[page & (self.CHUNK - 1)] = value

    def fill(self, first: int, n: int, value: int) -> None:
        while n > 0:
            number, at = first >> self.CHUNK_BITS, first & (self.CHUNK - 1)
            k = min(n, self.CHUNK - at)
            self.chunk(number)[at:at + k] = array("Q", [value]) * k
            first, n = first + k, n - k

    def entries(self, first: int, end: int):
        """The entries of pages ``[first, end)`` as ``(first, end, array | None)`` pieces:
        ``None`` for a stretch no record reached, however long (visited per chunk allocated)."""
        bits = self.CHUNK_BITS
        cur = first
        for number in sorted(k for k in self.chunks
                             if (k + 1) << bits > first and k << bits < end):
            a, b = max(first, number << bits), min(end, (number + 1) << bits)
            if cur < a:
                yield cur, a, None
            base = number << bits
            yield a, b, self.chunks[number][a - base:b - base]
            cur = b
        if cur < end:
            yield cur, end, None

    def count(self, value: int) -> int:
        found = sum(c.count(value) for c in self.chunks.values())
        if value == ABSENT:
            found += self.pages - sum(len(c) for c in self.chunks.values())
        return found


class _Truncated(Exception):
    """The stream ends inside a record (a migration that was cut short)."""


@dataclass(frozen=True, slots=True)
class RamBlock:
    """One RAM block of the stream and where each of its pages is."""

    name: str
    length: int
    page_size: int
    index: PageIndex | None = None  # per page (None with mapped-ram)
    mapped: Any = None  # the parsed MappedRamHeader (mapped-ram)

    @property
    def pages(self) -> int:
        return self.length // self.page_size


@dataclass
class Stream:
    """What one walk over a stream found."""

    start: int  # file offset of ``QEVM``
    machine: str | None = None
    capabilities: list[str] = field(default_factory=list)
    page_size: int = 4096
    blocks: dict[str, RamBlock] = field(default_factory=dict)
    devices: list[DeviceSection] = field(default_factory=list)
    vmdesc: dict | None = None
    complete: bool = False  # QEMU_VM_EOF reached
    ram_complete: bool = False  # the ram section's END record was read
    end_offset: int = 0  # where the walk stopped
    notes: list[str] = field(default_factory=list)
    page_records: int = 0
    compressed_pages: int = 0


def _zero_records(first: int, n: int, shift: int) -> bytes:
    """The bytes of ``n`` zero-page records of pages ``first``... (save_zero_page's
    ``save_page_header`` with CONTINUE, then ``qemu_put_byte(f, 0)``)."""
    values = array("Q", range(first << shift | _ZERO_CONTINUE, (first + n) << shift, 1 << shift))
    if sys.byteorder == "little":
        values.byteswap()
    raw = values.tobytes()
    out = bytearray(9 * n)
    for k in range(8):
        out[k::9] = raw[k::8]
    return bytes(out)


def _text(raw) -> str:
    """A name from the stream (ASCII in QEMU's; anything in a corrupt one), never an error:
    bytes outside printable ASCII as ``\\xNN``."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}"
                   for b in bytes(raw))


def _shown(name: str, limit: int = 48) -> str:
    """A name for a one-line message: quoted, cut at ``limit`` characters."""
    return f"'{name}'" if len(name) <= limit else f"'{name[:limit]}'..."


class _Walker:
    def __init__(self, buf, size: int, start: int) -> None:
        self.buf, self.size = buf, size
        self.s = Stream(start=start)
        self.ram_id: int | None = None
        self.block: RamBlock | None = None  # the last block named (for CONTINUE)
        self.descs: list[dict] = []
        self.budget = [size + (8 << 20)]  # index bytes: a full stream needs less than its size

    def need(self, pos: int, n: int) -> None:
        if pos + n > self.size:
            raise _Truncated(pos)

    def get(self, con: Struct, pos: int, what: str, maxlen: int):
        """Parse a variable-length declaration at ``pos``: (value, offset after it)."""
        stream = io.BytesIO(bytes(self.buf[pos:pos + maxlen]))
        try:
            value = con.parse_stream(stream)
        except ConstructError as e:
            if pos + maxlen > self.size:
                raise _Truncated(pos) from None
            raise BadDumpError(f"corrupt {what}: {e}", offset=pos) from None
        return value, pos + stream.tell()

    # ---------------------------------------------------------------------------------------
    def walk(self) -> Stream:
        s, buf = self.s, self.buf
        header = parse(FILE_HEADER, buf, s.start, "QEMU migration stream header")
        if header.version != QEMU_VM_FILE_VERSION:
            raise UnsupportedDumpError(f"QEMU migration stream version {header.version} (only "
                                       f"version {QEMU_VM_FILE_VERSION}, QEMU >= 1.3, is read)")
        found = find_vmdesc(buf, self.size)
        if found is not None:
            s.vmdesc = found[1]
            self.descs = list(found[1]["devices"])
            if "page_size" in found[1]:
                s.page_size = int(found[1]["page_size"])
        pos = s.start + FILE_HEADER.sizeof()
        try:
            pos = self.sections(pos)
        except _Truncated as t:
            s.end_offset = t.args[0]
            where = "RAM pages" if not s.ram_complete else "device state"
            s.notes.append(f"the stream ends early at file offset 0x{t.args[0]:x}, inside the "
                           f"{where}: pages not sent by then are absent")
            return s
        s.end_offset = pos
        return s

    def sections(self, pos: int) -> int:
        s, buf = self.s, self.buf
        while True:
            self.need(pos, 1)
            kind = buf[pos]
            if kind == VM_EOF:
                s.complete = True
                return pos + 1
            if kind == CONFIGURATION:
                pos = self.configuration(pos + 1)
            elif kind in (SECTION_START, SECTION_FULL):
                hdr, pos = self.get(SECTION_HEADER, pos + 1, "section header", 4 + 256 + 8)
                if kind == SECTION_START:
                    if hdr.idstr != "ram":
                        s.notes.append(f"iterative section {hdr.idstr!r} cannot be skipped: "
                                       "the walk stops there")
                        return pos
                    self.ram_id = hdr.section_id
                    pos = self.ram_setup(pos)
                else:
                    pos = self.device(hdr, pos)
                    if pos is None:
                        return self.s.end_offset
                pos = self.footer(pos, hdr.section_id)
            elif kind in (SECTION_PART, SECTION_END):
                self.need(pos, 5)
                (section_id,) = BE32.unpack_from(buf, pos + 1)
                if section_id != self.ram_id:
                    s.notes.append(f"iterative section {section_id} is not RAM: the walk stops")
                    return pos
                pos = self.ram_records(pos + 5)
                if kind == SECTION_END:
                    s.ram_complete = True
                pos = self.footer(pos, section_id)
            elif kind == COMMAND:
                self.need(pos, 5)
                cmd = parse(COMMAND_HEADER, buf, pos + 1, "command")
                name = POSTCOPY_COMMANDS.get(cmd.command)
                if name is not None:
                    raise UnsupportedDumpError(
                        f"this migration stream switched to postcopy (command {name} at file "
                        f"offset 0x{pos:x}); only precopy streams are read")
                pos += 5 + cmd.len  # OPEN_RETURN_PATH, PING, POSTCOPY_ADVISE: nothing to keep
            elif kind == VMDESCRIPTION:
                s.complete = True
                return pos
            else:
                raise BadDumpError(f"unknown section type 0x{kind:02x} in the migration stream",
                                   offset=pos)

    def footer(self, pos: int, section_id: int) -> int:
        """``save_section_footer``: absent only for machine types older than 2.4."""
        self.need(pos, 1)
        if self.buf[pos] != FOOTER:
            return pos
        self.need(pos, 5)
        (got,) = BE32.unpack_from(self.buf, pos + 1)
        if got != section_id:
            raise BadDumpError(f"section footer names section {got}, expected {section_id}",
                               offset=pos)
        return pos + 5

    def configuration(self, pos: int) -> int:
        """``vmstate_configuration``: be32 length + machine type, then its subsections."""
        s, buf = self.s, self.buf
        self.need(pos, 4)
        (n,) = BE32.unpack_from(buf, pos)
        self.need(pos + 4, n)
        s.machine = _text(buf[pos + 4:pos + 4 + n])
        pos += 4 + n
        while pos < self.size and buf[pos] == SUBSECTION:
            sub, pos = self.get(SUBSECTION_HEADER, pos + 1, "configuration subsection", 256 + 4)
            self.need(pos, 4)
            if sub.name == "configuration/target-page-bits":
                (bits,) = BE32.unpack_from(buf, pos)
                if not PAGE_BITS[0] <= bits <= PAGE_BITS[1]:
                    raise BadDumpError(f"target-page-bits {bits}: QEMU's target pages are "
                                       f"2^{PAGE_BITS[0]} to 2^{PAGE_BITS[1]} bytes", offset=pos)
                s.page_size, pos = 1 << bits, pos + 4
            elif sub.name == "configuration/capabilities":
                (count,) = BE32.unpack_from(buf, pos)
                pos += 4
                for _ in range(count):
                    self.need(pos, 1)
                    k = buf[pos]
                    s.capabilities.append(_text(buf[pos + 1:pos + 1 + k]))
                    pos += 1 + k
            elif sub.name == "configuration/uuid":
                self.need(pos, 16)
                pos += 16
            else:
                raise UnsupportedDumpError(f"unknown configuration subsection {sub.name!r} at "
                                           f"file offset 0x{pos:x}")
        return pos

    def ram_setup(self, pos: int) -> int:
        """``ram_save_setup``: the block list, then records up to ``EOS``."""
        s, buf = self.s, self.buf
        self.need(pos, 8)
        (value,) = BE64.unpack_from(buf, pos)
        if not value & FLAG_MEM_SIZE:
            raise BadDumpError("the ram section does not start with its block list",
                               offset=pos)
        remaining = value & ~(s.page_size - 1)
        pos += 8
        mapped = "mapped-ram" in s.capabilities
        ignore_shared = "x-ignore-shared" in s.capabilities
        while remaining > 0:
            self.need(pos, 1)
            n = buf[pos]
            self.need(pos, 1 + n + 8)
            name = _text(buf[pos + 1:pos + 1 + n])
            (length,) = BE64.unpack_from(buf, pos + 1 + n)
            pos += 1 + n + 8
            if ignore_shared:
                pos += 8  # the block's guest address (mr->addr)
            if length % s.page_size or length > remaining:
                raise BadDumpError(f"RAM block {_shown(name)} has length 0x{length:x}", offset=pos)
            index = hdr = None
            if mapped:
                self.need(pos, MAPPED_RAM_HEADER.sizeof())
                hdr = parse(MAPPED_RAM_HEADER, buf, pos, "mapped-ram header")
                if hdr.version > MAPPED_RAM_HDR_VERSION or hdr.page_size != s.page_size:
                    raise UnsupportedDumpError(f"mapped-ram header version {hdr.version}, page "
                                               f"size {hdr.page_size} (file offset 0x{pos:x})")
                pos = hdr.pages_offset + length  # mapped_ram_setup_ramblock's qemu_set_offset
            else:
                index = PageIndex(length // s.page_size, self.budget)
            block = RamBlock(name, length, s.page_size, index, hdr)
            s.blocks[name] = block
            remaining -= length
        return self.ram_records(pos)

    def ram_records(self, pos: int) -> int:
        """Page records up to ``RAM_SAVE_FLAG_EOS`` (``ram_load_precopy``)."""
        s, buf, size = self.s, self.buf, self.size
        ps = s.page_size
        mask, shift = ps - 1, ps.bit_length() - 1
        unpack64, unpack32 = BE64.unpack_from, BE32.unpack_from
        block, index = self.block, (self.block.index if self.block else None)
        records = compressed = 0
        zero_run = self.zero_run
        try:
            while True:
                if (index is not None and pos + 9 <= size
                        and unpack64(buf, pos)[0] & mask == _ZERO_CONTINUE):
                    n = zero_run(buf, pos, size, index, shift)
                    if n:
                        records += n
                        pos += 9 * n
                        continue
                if pos + 8 > size:
                    raise _Truncated(pos)
                (value,) = unpack64(buf, pos)
                flags = value & mask
                rec = pos
                pos += 8
                if flags & (FLAG_ZERO | FLAG_PAGE | FLAG_COMPRESS_PAGE | FLAG_XBZRLE):
                    if not flags & FLAG_CONTINUE:
                        if pos >= size:
                            raise _Truncated(rec)
                        n = buf[pos]
                        if pos + 1 + n > size:
                            raise _Truncated(rec)
                        name = _text(buf[pos + 1:pos + 1 + n])
                        pos += 1 + n
                        block = s.blocks.get(name)
                        if block is None or block.index is None:
                            raise BadDumpError(f"page record for unknown RAM block {_shown(name)}",
                                               offset=rec)
                        index = block.index
                    elif index is None:
                        raise BadDumpError("page record continues no RAM block", offset=rec)
                    page = value >> shift
                    if page >= len(index):
                        raise BadDumpError(f"page record at 0x{value & ~mask:x} beyond RAM "
                                           f"block {block.name!r} (0x{block.length:x} bytes)",
                                           offset=rec)
                    kind = flags & ~FLAG_CONTINUE
                    if kind == FLAG_ZERO:
                        if pos + 1 > size:
                            raise _Truncated(rec)
                        index[page] = ZERO
                        pos += 1
                    elif kind == FLAG_PAGE:
                        if pos + ps > size:
                            raise _Truncated(rec)
                        index[page] = pos << 2 | PLAIN
                        pos += ps
                    elif kind == FLAG_COMPRESS_PAGE:
                        if pos + 4 > size:
                            raise _Truncated(rec)
                        (n,) = unpack32(buf, pos)
                        if n > COMPRESS_BOUND:
                            raise BadDumpError(f"compressed page of {n} bytes", offset=rec)
                        if pos + 4 + n > size:
                            raise _Truncated(rec)
                        index[page] = pos << 2 | ZLIB
                        pos += 4 + n
                        compressed += 1
                    else:
                        raise UnsupportedDumpError(
                            f"XBZRLE-encoded page at file offset 0x{rec:x}: streams written "
                            "with the xbzrle capability are not read (they encode pages as "
                            "deltas of earlier copies)")
                    records += 1
                elif flags & FLAG_EOS:
                    return pos
                elif flags & FLAG_MULTIFD_FLUSH:
                    continue
                elif flags & FLAG_HOOK:
                    raise UnsupportedDumpError(f"RDMA hook record at file offset 0x{rec:x}: "
                                               "RDMA migration streams are not read")
                else:
                    raise BadDumpError(f"unknown RAM record flags 0x{flags:x}", offset=rec)
        finally:
            self.block = block
            s.page_records += records
            s.compressed_pages += compressed

    @staticmethod
    def zero_run(buf, pos: int, size: int, index: PageIndex, shift: int) -> int:
        """Mark the run of zero-page records of consecutive pages at ``pos``; their count."""
        first = BE64.unpack_from(buf, pos)[0] >> shift
        total, want = 0, 64
        while True:
            n = min(want, (size - pos) // 9 - total, len(index) - first - total)
            if n <= 0:
                break
            start = pos + 9 * total
            got = buf[start:start + 9 * n]
            expected = _zero_records(first + total, n, shift)
            if got == expected:
                total += n
                want = min(2 * want, _RUN_MAX)
                continue
            lo, hi = 0, n - 1  # the longest equal prefix, in records
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if got[:9 * mid] == expected[:9 * mid]:
                    lo = mid
                else:
                    hi = mid - 1
            total += lo
            break
        index.fill(first, total, ZERO)
        return total

    def device(self, hdr, pos: int) -> int | None:
        """A ``FULL`` section, skipped by its vmdesc entry (the next one in order)."""
        s = self.s
        if not self.descs:
            s.notes.append(f"device section {hdr.idstr!r} at file offset 0x{pos:x} has no "
                           "vmdesc entry: device state after it is not read")
            s.end_offset = pos
            return None
        desc = self.descs.pop(0)
        if desc.get("name") != hdr.idstr or desc.get("instance_id") != hdr.instance_id:
            s.notes.append(f"device section {hdr.idstr!r} does not match the vmdesc entry "
                           f"{desc.get('name')!r}: device state after it is not read")
            s.end_offset = pos
            return None
        size = vmsd_size(desc)
        self.need(pos, size + 1)
        if self.buf[pos + size] != FOOTER:
            s.notes.append(f"device section {hdr.idstr!r} is not {size} bytes long as its "
                           "vmdesc says: device state after it is not read")
            s.end_offset = pos
            return None
        s.devices.append(DeviceSection(hdr.idstr, hdr.instance_id, hdr.version_id, pos, size,
                                       desc))
        return pos + size


def walk(buf, size: int, start: int = 0) -> Stream:
    """Walk the stream that begins at ``start`` (after a libvirt header, if any)."""
    return _Walker(buf, size, start).walk()
