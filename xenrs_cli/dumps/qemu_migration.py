"""QEMU migration streams (``QEVM``) and libvirt save images: guest RAM as GPA segments.

A stream carries RAM *blocks* (``pc.ram``, ``pc.bios``, ``pc.rom``, ...) at block offsets,
not guest-physical addresses; where each block appears in the guest's address space is the
machine type's business. For ``pc`` (i440FX) and ``q35`` this module reproduces QEMU's rule
(hw/i386/pc_piix.c ``pc_init1``, pc_q35.c ``pc_q35_init``, hw/i386/x86-common.c /
pc_sysfw.c for the BIOS, hw/pci-host/pam.c for the legacy window):

* ``pc.ram`` bytes ``[0, below)`` at GPA ``[0, below)`` and bytes ``[below, size)`` at GPA
  ``4 GiB + ...``. ``below`` is the whole RAM if it fits, else q35: 2 GiB when RAM >= 2.75 GiB,
  2.75 GiB otherwise; pc: 3.5 GiB, lowered to 3 GiB when RAM >= 3.5 GiB (``gigabyte_align``,
  every machine type from pc-i440fx-2.0 on). Reading offsets above ``below`` as GPAs is
  volatility3 issue #587. A user-set ``max-ram-below-4g`` is not in the stream: ``info``
  prints the split assumed.
* ``pc.bios`` (or the pflash blocks ``system.flash0``/``1``) ends at 4 GiB.
* 0xc0000-0xfffff reads RAM or ROM (``pc.rom``; the last 128 KiB of the BIOS, ``isa-bios``)
  per 16 KiB as the host bridge's PAM registers say (bit 0 of each nibble: read from RAM); they
  come from the I440FX/mch config space in the stream (at reset all read ROM; firmware
  switches them to RAM). 0xa0000-0xbffff is the VGA window when a VGA device (a ``vram``
  block) is present, else the RAM shows through.

Pages: a record's last copy wins; a ``ZERO`` record is present (zero); a page no record
covers is absent. ``mapped-ram`` files (QEMU >= 9.0) keep each block's pages at fixed file
offsets with a bitmap of pages written: a clear bit is a zero page once the stream is complete.
"""

from __future__ import annotations

import re
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby

from construct import Array, Bytes, Int32ul, Struct

from xenrs_cli.address_space import AddressSpace, Extent, Segment, Status
from xenrs_cli.binary import parse
from xenrs_cli.dumps import Dump, source
from xenrs_cli.dumps import qemu_stream as qs
from xenrs_cli.dumps import qemu_vmstate as vmstate
from xenrs_cli.dumps.repeats import repeats
from xenrs_cli.errors import BadDumpError, UnsupportedDumpError
from xenrs_cli.files import MappedFile

GIB = 1 << 30
FOUR_GIB = 4 * GIB
# libvirt src/qemu/qemu_saveimage.h virQEMUSaveHeader (host byte order)
LIBVIRT_MAGICS = (b"LibvirtQemudSave", b"LibvirtQemudPart")
LIBVIRT_HEADER = Struct("magic" / Bytes(16), "version" / Int32ul, "data_len" / Int32ul,
                        "was_running" / Int32ul, "format" / Int32ul, "cookie_offset" / Int32ul,
                        "unused" / Array(14, Int32ul))
# qemu_saveimage_format.h virQEMUSaveFormat
LIBVIRT_FORMATS = {0: "raw", 1: "gzip", 2: "bzip2", 3: "xz", 4: "lzop", 5: "zstd", 6: "sparse"}
PAM_OFFSET = {"i440fx": 0x59, "q35": 0x90}  # i440fx.c I440FX_PAM, q35.h MCH_HOST_BRIDGE_PAM0
HOST_BRIDGE_VMSD = {"i440fx": ("I440FX",), "q35": ("mch",)}
ISA_BIOS_MAX = 128 << 10


def sniff(buf) -> bool:
    head = bytes(buf[:16])
    return head.startswith(qs.QEVM_MAGIC) or head in LIBVIRT_MAGICS


# ---------------------------------------------------------------------------------------------
# Pages of one RAM block


_ZERO_ENTRY = array("Q", [qs.ZERO]).tobytes()  # an index entry for a zero page, as stored


class BlockPages:
    """Status and bytes of each page of one RAM block."""

    def __init__(self, buf, size: int, block: qs.RamBlock, complete: bool) -> None:
        self.buf, self.size, self.block, self.complete = buf, size, block, complete
        self.ps = block.page_size
        self.bitmap = None
        if block.mapped is not None:
            nbytes = (block.pages + 63) // 64 * 8  # BITS_TO_LONGS(pages) * sizeof(long)
            at = block.mapped.bitmap_offset
            # ram_save_file_bmap writes the bitmap at completion: without it nothing is known
            self.bitmap = bytes(buf[at:at + nbytes]) if at + nbytes <= size else b""

    def where(self, page: int) -> tuple[Status, int, int | None]:
        """(status, index kind, file offset): kind as in qemu_stream (ABSENT/ZERO/PLAIN/ZLIB)."""
        if self.bitmap is None:
            loc = self.block.index[page]
            kind = loc & 3
            if kind == qs.ABSENT:
                return Status.ABSENT, kind, None
            return Status.PRESENT, kind, (loc >> 2) if kind != qs.ZERO else None
        if not self.bitmap:
            return Status.ABSENT, qs.ABSENT, None
        if self.bitmap[page >> 3] >> (page & 7) & 1:
            at = self.block.mapped.pages_offset + page * self.ps
            if at + self.ps > self.size:
                return Status.ABSENT, qs.ABSENT, None  # the file ends before the page
            return Status.PRESENT, qs.PLAIN, at
        # a clear bit: zero (save_zero_page clears it), unless the stream never completed
        return (Status.PRESENT, qs.ZERO, None) if self.complete else (Status.ABSENT, qs.ABSENT,
                                                                       None)

    def page(self, page: int) -> bytes:
        status, kind, at = self.where(page)
        if kind == qs.PLAIN:
            return bytes(self.buf[at:at + self.ps])
        if kind == qs.ZLIB:
            (n,) = qs.BE32.unpack(self.buf[at:at + 4])
            try:
                data = zlib.decompress(bytes(self.buf[at + 4:at + 4 + n]))
            except zlib.error as e:
                raise BadDumpError(f"page 0x{page * self.ps:x} of RAM block "
                                   f"{self.block.name!r}: {e}", offset=at) from None
            if len(data) != self.ps:
                raise BadDumpError(f"compressed page inflates to {len(data)} bytes", offset=at)
            return data
        return bytes(self.ps)

    def runs(self, first: int, end: int) -> Iterator[tuple[int, int, Status]]:
        """Runs ``[a, b)`` of pages of one status within pages ``[first, end)``."""
        run_start, run_status = first, None
        for a, b, status in self._pieces(first, end):
            if status is not run_status:
                if run_status is not None:
                    yield run_start, a, run_status
                run_start, run_status = a, status
        if run_status is not None:
            yield run_start, end, run_status

    def _pieces(self, first: int, end: int) -> Iterator[tuple[int, int, Status]]:
        """Runs of one status, not necessarily maximal; a stretch no record reached (or past
        the end of a mapped-ram file) is one piece, never walked page by page."""
        if self.bitmap is None:
            for a, b, chunk in self.block.index.entries(first, end):
                if chunk is None:
                    yield a, b, Status.ABSENT
                    continue
                cur = a
                for present, group in groupby(map(bool, chunk)):
                    n = sum(1 for _ in group)
                    yield cur, cur + n, Status.PRESENT if present else Status.ABSENT
                    cur += n
            return
        # pages [first, limit) lie inside the file; the bitmap is inside it too (else b""), so
        # walking bits costs at most 8 pages per byte of file
        limit = max(first, min(end, (self.size - self.block.mapped.pages_offset) // self.ps))
        bits = self.bitmap
        if not bits:
            yield first, end, Status.ABSENT
            return
        if self.complete:  # inside the file every page is data or zero; past it, zero only
            if limit > first:
                yield first, limit, Status.PRESENT
            start, flags = limit, (not bits[p >> 3] >> (p & 7) & 1 for p in range(limit, end))
        else:  # only the pages with data in the file are known
            start, flags = first, (p < limit and bool(bits[p >> 3] >> (p & 7) & 1)
                                   for p in range(first, end))
        for present, group in groupby(flags):
            n = sum(1 for _ in group)
            yield start, start + n, Status.PRESENT if present else Status.ABSENT
            start += n

    def data_pages(self, first: int, end: int) -> Iterator[int]:
        """Pages in ``[first, end)`` whose bytes are stored (plain or zlib), in order."""
        if self.bitmap is None:
            for a, _, chunk in self.block.index.entries(first, end):
                if chunk is not None:
                    yield from (a + i for i, v in enumerate(chunk) if v > qs.ZERO)
            return
        bits = self.bitmap
        if not bits:
            return
        limit = min(end, (self.size - self.block.mapped.pages_offset) // self.ps)
        for byte in range(first >> 3, (limit + 7) >> 3):
            if bits[byte]:
                for p in range(max(first, byte * 8), min(limit, byte * 8 + 8)):
                    if bits[byte] >> (p & 7) & 1:
                        yield p

    def zero_runs(self, first: int, end: int) -> Iterator[tuple[int, int]]:
        """Runs ``[a, b)`` of zero pages within pages ``[first, end)``, found at C speed:
        runs of the index's zero entry (``RAM_SAVE_FLAG_ZERO``; QEMU sends most of a guest's
        RAM so); with mapped-ram, bitmap bytes of eight clear bits in a completed file
        (``save_zero_page`` clears the bit)."""
        if self.bitmap is None:
            for a, b, chunk in self.block.index.entries(first, end):
                if chunk is not None:
                    for i, j in repeats(chunk.tobytes(), _ZERO_ENTRY):
                        yield a + i, a + j
            return
        if not self.bitmap or not self.complete:
            return
        limit = min(end, (self.size - self.block.mapped.pages_offset) // self.ps)
        lo, hi = -(-first // 8), limit // 8  # whole bitmap bytes within the pages
        if lo < hi:
            for i, j in repeats(self.bitmap[lo:hi], b"\0"):
                yield (lo + i) * 8, (lo + j) * 8

    def counts(self) -> dict[str, int]:
        """Pages by kind, for ``info``."""
        if self.bitmap is None:
            index = self.block.index
            absent, zero = index.count(qs.ABSENT), index.count(qs.ZERO)
            return {"data": len(index) - absent - zero, "zero": zero, "absent": absent}
        data = int.from_bytes(self.bitmap, "little").bit_count()
        rest = self.block.pages - data
        return {"data": data, "zero": rest if self.complete else 0,
                "absent": 0 if self.complete else rest}


class RamWindow(Segment):
    """GPA ``[gpa, gpa+size)`` showing RAM block bytes from ``offset`` on."""

    def __init__(self, gpa: int, size: int, pages: BlockPages, offset: int) -> None:
        self.gpa, self.size, self.pages, self.offset = gpa, size, pages, offset
        self.block = pages.block.name
        self.detail = f"{self.block} @0x{offset:x}"

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        page, in_page = divmod(self.offset + rel, self.pages.ps)
        status, kind, at = self.pages.where(page)
        return status, (at + in_page if kind == qs.PLAIN else None)

    def read(self, rel: int, size: int) -> bytes:
        page, in_page = divmod(self.offset + rel, self.pages.ps)
        return self.pages.page(page)[in_page:in_page + size]

    def read_span(self, rel: int, size: int, page_size: int = 4096) -> bytearray:
        """Bytes of ``[rel, rel+size)`` for ``scan`` (zeros where not present): a zeroed buffer
        into which only pages with data are copied, found from the index entries (or the
        mapped-ram bitmap) of the span, not by a lookup per page."""
        pages, ps = self.pages, self.pages.ps
        out = bytearray(size)
        start = self.offset + rel  # block offset of out[0]
        first, end = start // ps, (start + size + ps - 1) // ps
        for page in pages.data_pages(first, end):
            lo = max(page * ps, start)
            hi = min((page + 1) * ps, start + size)
            data = pages.page(page)
            out[lo - start:hi - start] = data[lo - page * ps:hi - page * ps]
        return out

    def zero_runs(self, rel: int, end: int) -> Iterator[tuple[int, int]]:
        ps = self.pages.ps
        first, last = (self.offset + rel) // ps, (self.offset + end + ps - 1) // ps
        for a, b in self.pages.zero_runs(first, last):
            lo, hi = max(rel, a * ps - self.offset), min(end, b * ps - self.offset)
            if lo < hi:
                yield lo, hi

    def status_runs(self, rel: int, end: int, page_size: int = 4096
                    ) -> Iterator[tuple[int, int, Status]]:
        ps = self.pages.ps
        first, last = (self.offset + rel) // ps, (self.offset + end + ps - 1) // ps
        for a, b, status in self.pages.runs(first, last):
            lo = max(rel, a * ps - self.offset)
            hi = min(end, b * ps - self.offset)
            if lo < hi:
                yield lo, hi - lo, status

    def extents(self) -> Iterator[Extent]:
        for rel, size, status in self.status_runs(0, self.size):
            yield Extent(self.gpa + rel, size, status, None,
                         f"{self.block} @0x{self.offset + rel:x}")


# ---------------------------------------------------------------------------------------------
# Where RAM blocks appear


@dataclass(frozen=True, slots=True)
class Window:
    gpa: int
    size: int
    block: str
    offset: int


def family(machine: str | None) -> str:
    if machine is None:
        raise UnsupportedDumpError(
            "the migration stream does not name its machine type (no configuration section), "
            "so where its RAM blocks appear is unknown")
    name = machine
    if name == "q35" or name.startswith("pc-q35-"):
        return "q35"
    if name in ("pc", "isapc") or name.startswith("pc-i440fx-") or re.match(r"pc-\d", name):
        return "i440fx"
    raise UnsupportedDumpError(
        f"machine type {machine!r}: xenrs knows where RAM blocks appear only for the x86 pc "
        "(i440FX) and q35 machine types")


def ram_split(fam: str, machine: str, ram: int) -> int:
    """Bytes of ``pc.ram`` below 4 GiB (pc_piix.c ``pc_init1``, pc_q35.c ``pc_q35_init``,
    with the default ``max-ram-below-4g``)."""
    if fam == "q35":
        lowmem = 0x80000000 if ram >= 0xB0000000 else 0xB0000000
    else:
        lowmem = 0xE0000000
        # gigabyte_align: pc-1.7 and older kept 3.5 GiB ("qemu -M pc-1.7 -m 4G -> 3584M low")
        m = re.match(r"pc-(?:i440fx-)?(\d+)\.(\d+)", machine)
        old = machine == "isapc" or (m is not None and (int(m[1]), int(m[2])) < (2, 0))
        if ram >= lowmem and not old:
            lowmem = 0xC0000000
    return min(ram, lowmem)


def _isa_bios(blocks: dict[str, int]) -> tuple[str, int, int] | None:
    """(block, size, offset in it) of the ROM at the top of the first MiB: the ``isa-bios``
    RAM block QEMU copies a flash BIOS into (pc_sysfw.c), else the last 128 KiB of ``pc.bios``
    (x86-common.c ``x86_bios_rom_init`` aliases it)."""
    if "isa-bios" in blocks:
        return "isa-bios", blocks["isa-bios"], 0
    for name in ("pc.bios", "system.flash0"):
        if name in blocks:
            size = min(blocks[name], ISA_BIOS_MAX)
            return name, size, blocks[name] - size
    return None


def _reads_ram(fam: str, pam: bytes | None, gpa: int) -> bool:
    """Whether 16 KiB at ``gpa`` in 0xc0000-0xfffff reads RAM: PAM region 0 is 0xf0000-0xfffff
    (PAM0's high nibble), region i >= 1 is 0xc0000 + (i-1) * 16 KiB, in byte PAM0 + ceil(i/2),
    low nibble for odd i (i440fx.c/q35.c ``pam_update(..., config[PAM0 + DIV_ROUND_UP(i, 2)])``
    and pam.c ``pam_update``: attribute bit 0 = read enable)."""
    if pam is None:
        return True  # unknown: as after firmware, which shadows itself into RAM
    region = 0 if gpa >= 0xF0000 else 1 + (gpa - 0xC0000) // 0x4000
    byte = pam[PAM_OFFSET[fam] + (region + 1) // 2]
    return bool(byte >> (0 if region & 1 else 4) & 1)


def layout(fam: str, machine: str, blocks: dict[str, int], pam: bytes | None
           ) -> tuple[list[Window], dict]:
    """The windows of each RAM block in GPA order and a summary for ``info``."""
    if "pc.ram" not in blocks:
        raise UnsupportedDumpError(
            "the stream has no pc.ram block (blocks: " + ", ".join(blocks) + "): machines "
            "whose RAM is in NUMA or memory-backend blocks are not mapped to GPAs")
    ram = blocks["pc.ram"]
    below = ram_split(fam, machine, ram)
    out: list[Window] = []

    def add(gpa: int, size: int, block: str, offset: int) -> None:
        last = out[-1] if out else None
        if (last and last.block == block and last.gpa + last.size == gpa
                and last.offset + last.size == offset):
            out[-1] = Window(last.gpa, last.size + size, block, last.offset)
        else:
            out.append(Window(gpa, size, block, offset))

    # the legacy VGA window is MMIO when a VGA device exists (its vram block: vga.vram,
    # cirrus_vga.vram, qxl.vgavram); without one the RAM below shows through
    vga = any(re.search(r"vga[^/]*\.vram$|\.vgavram$", name) for name in blocks)
    add(0, min(below, 0xA0000), "pc.ram", 0)
    if below > 0xA0000 and not vga:
        add(0xA0000, min(below, 0xC0000) - 0xA0000, "pc.ram", 0xA0000)
    isa = _isa_bios(blocks)
    ram_chunks = rom_chunks = 0
    for gpa in range(0xC0000, min(below, 0x100000), 0x4000):
        rom = None
        if not _reads_ram(fam, pam, gpa):
            if gpa < 0xE0000 and "pc.rom" in blocks:
                rom = ("pc.rom", gpa - 0xC0000)
            elif isa is not None and gpa >= 0x100000 - isa[1]:
                rom = (isa[0], isa[2] + gpa - (0x100000 - isa[1]))
        if rom is None:
            add(gpa, 0x4000, "pc.ram", gpa)
            ram_chunks += 1
        else:
            add(gpa, 0x4000, *rom)
            rom_chunks += 1
    if below > 0x100000:
        add(0x100000, below - 0x100000, "pc.ram", 0x100000)
    top = FOUR_GIB  # the BIOS, or the flash chips from unit 0 down (pc_system_flash_map)
    for name in ("pc.bios",) if "pc.bios" in blocks else ("system.flash0", "system.flash1"):
        if name in blocks:
            top -= blocks[name]
            out.append(Window(top, blocks[name], name, 0))
    if ram > below:
        out.append(Window(FOUR_GIB, ram - below, "pc.ram", below))
    out.sort(key=lambda w: w.gpa)
    summary = {
        "machine_family": fam,
        "below_4g": f"0x{below:x}",
        "above_4g": f"0x{ram - below:x}",
        "rule": f"{fam} default split (a max-ram-below-4g option is not in the stream)",
        "legacy_window": ("unknown PAM state: RAM" if pam is None else
                          "ROM (PAM)" if not ram_chunks else "RAM (PAM)" if not rom_chunks else
                          f"PAM: {ram_chunks} x 16 KiB RAM, {rom_chunks} x 16 KiB ROM"),
        "vga_window": "VGA (absent)" if vga else "RAM (no VGA device)",
    }
    return out, summary


# ---------------------------------------------------------------------------------------------


def libvirt_header(buf, size: int) -> tuple[int, dict | None]:
    """Where the QEMU stream starts, and what libvirt's header says (``virsh save``)."""
    head = bytes(buf[:16])
    if head not in LIBVIRT_MAGICS:
        return 0, None
    hdr = parse(LIBVIRT_HEADER, buf, 0, "libvirt save-image header")
    fmt = LIBVIRT_FORMATS.get(hdr.format, f"unknown ({hdr.format})")
    start = LIBVIRT_HEADER.sizeof() + hdr.data_len
    if fmt not in ("raw", "sparse"):
        raise UnsupportedDumpError(
            f"this libvirt save image is {fmt}-compressed after its header: decompress the "
            f"stream first, e.g. tail -c +{start + 1} FILE | {fmt} -d > stream.qevm, then read "
            "stream.qevm")
    xml = bytes(buf[LIBVIRT_HEADER.sizeof():min(start, size)]).split(b"\0", 1)[0]
    name = re.search(rb"<name>([^<]*)</name>", xml)
    info = {"magic": head.decode(), "version": hdr.version, "format": fmt,
            "was_running": bool(hdr.was_running), "xml_bytes": hdr.data_len,
            "domain": name[1].decode("utf-8", "replace") if name else None}
    if bytes(buf[start:start + 4]) != qs.QEVM_MAGIC:
        raise BadDumpError("no QEMU migration stream after the libvirt header", offset=start)
    return start, info


def load(mapped: MappedFile, base: int = 0) -> Dump:
    buf, size = mapped.buf, mapped.size
    start, libvirt = libvirt_header(buf, size)
    if start == 0 and bytes(buf[:4]) != qs.QEVM_MAGIC:
        raise BadDumpError("not a QEMU migration stream (no QEVM magic)", offset=0)
    stream = qs.walk(buf, size, start)
    # Pages are read with pread from here on (dumps.source), so a stream that another process
    # truncates while it is scanned or decoded ends in one line, not SIGBUS; the walk above
    # and the device state below read the header parts through the mapping, at open only.
    data = source.of(mapped)
    if not stream.blocks and not stream.complete:
        raise BadDumpError("the migration stream ends before its RAM block list (" +
                           "; ".join(stream.notes) + ")", offset=stream.end_offset)
    fam = family(stream.machine)
    # ram_save_complete writes the mapped-ram bitmaps before the ram section's END record
    pages = {name: BlockPages(data, size, b, stream.ram_complete)
             for name, b in stream.blocks.items()}
    host = vmstate.pci_config(buf, stream.devices, HOST_BRIDGE_VMSD[fam])
    windows, summary = layout(fam, stream.machine or "", {n: b.length for n, b in
                                                            stream.blocks.items()}, host)
    segments = [RamWindow(w.gpa, w.size, pages[w.block], w.offset) for w in windows]
    cpus, runstate = vmstate.cpus(buf, stream.devices)
    mapped_ram = any(b.mapped is not None for b in stream.blocks.values())
    notes = list(stream.notes)
    if libvirt and libvirt["magic"] == "LibvirtQemudPart":
        notes.append("libvirt marked this image partial: the save did not finish")
    caps = list(stream.capabilities)
    if stream.compressed_pages:
        caps.append(f"compress ({stream.compressed_pages} zlib pages)")
    details = {
        "machine": stream.machine,
        "stream": {"offset": start, "complete": stream.complete,
                   "ram_complete": stream.ram_complete, "end_offset": stream.end_offset,
                   "page_records": stream.page_records, "device_sections":
                   len(stream.devices), "vmdesc": stream.vmdesc is not None},
        "capabilities": caps,
        "layout": summary,
        "ram_blocks": [
            {"name": name, "size": b.length,
             "gpa": ", ".join(f"0x{w.gpa:x}-0x{w.gpa + w.size:x}" for w in windows
                              if w.block == name) or "not mapped (device or firmware data)",
             **pages[name].counts()}
            for name, b in stream.blocks.items()],
        "vcpus": len(cpus) or None,  # their control registers: Dump.cpus (info's "cpus")
    }
    xen = vmstate.xen_vcpus(buf, stream.devices)
    if xen:
        details["xen_vcpus"] = xen
    if libvirt:
        details["libvirt"] = libvirt
    if notes:
        details["notes"] = notes
    variant = "+".join(v for v in ("virsh save" if libvirt else None,
                                   "mapped-ram" if mapped_ram else "precopy",
                                   None if stream.ram_complete else "incomplete") if v)
    return Dump(mapped.name, "qemu-migration", AddressSpace(segments, stream.page_size), mapped,
                variant, details, cpus=cpus, registered_runstate=runstate)
