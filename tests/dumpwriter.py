"""An independent writer of synthetic dumps for the tests: stdlib ``struct`` only.

It shares no code and no declaration with ``xenrs_cli.dumps``: every offset below is written out
from the sources (``<elf.h>``, QEMU dump/dump.c, makedumpfile ``diskdump_mod.h`` and
``IMPLEMENTATION``), so a wrong field in a reader cannot be wrong here in the same way.
Page compression uses zlib, and the extra's ``lzallright``/``cramjam`` for LZO/snappy/zstd.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass, field

PAGE = 4096


# ---------------------------------------------------------------------------------------------
# ELF cores


@dataclass
class Load:
    """A ``PT_LOAD``: ``data`` stored at ``paddr``, ``memsz`` (default ``len(data)``) in memory."""

    paddr: int
    data: bytes
    memsz: int | None = None
    vaddr: int | None = None


@dataclass
class Note:
    name: bytes
    type: int
    desc: bytes


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def note_bytes(notes: list[Note], big: bool = False) -> bytes:
    e = ">" if big else "<"
    out = b""
    for n in notes:
        name = n.name + b"\0"
        out += struct.pack(e + "III", len(name), len(n.desc), n.type) + _pad4(name) + _pad4(n.desc)
    return out


def qemu_cpu_state(rip: int, cr0: int, cr3: int, cr4: int, cs_flags: int, cs_sel: int = 8) -> bytes:
    """target/i386/arch_dump.c QEMUCPUState (version 1, 440 bytes)."""
    regs = [0] * 16 + [rip, 0x2]                           # rax..r15, rip, rflags
    segs = b"".join(struct.pack("<IIIIQ", cs_sel if i == 0 else 0, 0xFFFFFFFF,
                                cs_flags if i == 0 else 0, 0, 0) for i in range(10))
    return (struct.pack("<II", 1, 440) + struct.pack("<18Q", *regs) + segs
            + struct.pack("<5Q", cr0, 0, 0, cr3, cr4) + struct.pack("<Q", 0))


def elf_core(loads: list[Load], notes: list[Note] = (), *, elf64: bool = True, big: bool = False,
             qemu_layout: bool = True, e_type: int = 4, machine: int = 62,
             sections: list[bytes] | None = None, pn_xnum: bool = False) -> bytes:
    """An ELF core. ``qemu_layout``: QEMU 7.2's file (e_ehsize 8, section headers at 64, program
    headers after them, .shstrtab after the memory); otherwise the classic ehdr-phdrs-notes."""
    e = ">" if big else "<"
    ehsize, phsize, shsize = (64, 56, 64) if elf64 else (52, 32, 40)
    names = sections if sections is not None else ([b".shstrtab"] if qemu_layout else [])
    shnum = len(names) + 1 if names else 0
    nb = note_bytes(list(notes), big)
    phnum = len(loads) + (1 if nb else 0)
    if qemu_layout:
        shoff = ehsize if elf64 else ehsize
        phoff = shoff + shnum * shsize
    else:
        phoff = ehsize
        shoff = 0
    notes_off = phoff + phnum * phsize
    data_off = notes_off + len(nb)
    phdrs = []
    body = bytearray()
    if nb:
        phdrs.append((4, notes_off, 0, 0, len(nb), len(nb)))
    cur = data_off
    for ld in loads:
        memsz = len(ld.data) if ld.memsz is None else ld.memsz
        vaddr = ld.paddr if ld.vaddr is None else ld.vaddr
        phdrs.append((1, cur, vaddr, ld.paddr, len(ld.data), memsz))
        body += ld.data
        cur += len(ld.data)
    strtab = b"\0" + b"".join(n + b"\0" for n in names) if names else b""
    strtab_off = cur
    if not qemu_layout and names:
        shoff = strtab_off + len(strtab)
    e_phnum = 0xFFFF if pn_xnum else phnum
    ident = b"\x7fELF" + bytes([2 if elf64 else 1, 2 if big else 1, 1]) + bytes(9)
    word = "Q" if elf64 else "I"
    eh = ident + struct.pack(e + "HHI" + word * 3 + "IHHHHHH", e_type, machine, 1, 0, phoff, shoff,
                             0, 8 if qemu_layout else ehsize, phsize, e_phnum, shsize,
                             shnum, 1 if names else 0)
    sh = b""
    if names:
        # section 0 carries the real phdr count in sh_info when e_phnum is PN_XNUM
        sh += _shdr(e, elf64, 0, 0, 0, 0, phnum if pn_xnum else 0)
        pos = 1
        for n in names:
            sh += _shdr(e, elf64, pos, 3, strtab_off, len(strtab), 0)
            pos += len(n) + 1
    ph = bytearray()  # a million program headers: no quadratic bytes +=
    for p_type, off, vaddr, paddr, filesz, memsz in phdrs:
        if elf64:
            ph += struct.pack(e + "IIQQQQQQ", p_type, 0, off, vaddr, paddr, filesz, memsz, 0)
        else:
            ph += struct.pack(e + "IIIIIIII", p_type, off, vaddr, paddr, filesz, memsz, 0, 0)
    if qemu_layout:
        head = eh + bytes(shoff - len(eh)) + sh + ph
    else:
        head = eh + ph
    assert len(head) == notes_off, (len(head), notes_off)
    out = head + nb + bytes(body) + strtab
    if not qemu_layout and names:
        out += sh
    return out


def _shdr(e: str, elf64: bool, name: int, sh_type: int, off: int, size: int, info: int) -> bytes:
    if elf64:
        return struct.pack(e + "IIQQQQIIQQ", name, sh_type, 0, 0, off, size, 0, info, 1, 0)
    return struct.pack(e + "IIIIIIIIII", name, sh_type, 0, 0, off, size, 0, info, 1, 0)


# ---------------------------------------------------------------------------------------------
# kdump (makedumpfile diskdump_mod.h; QEMU dump/dump.c create_kdump_vmcore)

FLAG = {"zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "zstd": 0x20, None: 0}


def compress(codec: str | None, page: bytes) -> bytes:
    if codec == "zlib":
        return zlib.compress(page, 1)
    if codec == "lzo":
        import lzallright
        return lzallright.LZOCompressor().compress(page)
    if codec == "snappy":
        import cramjam
        return bytes(cramjam.snappy.compress_raw(page))
    if codec == "zstd":
        import cramjam
        return bytes(cramjam.zstd.compress(page))
    return page


@dataclass
class Kdump:
    """What to write: ``in_map`` PFN ranges (1st bitmap), ``pages`` (PFN → bytes) that are
    dumped (2nd bitmap); PFNs in the map without a page are excluded."""

    max_mapnr: int
    in_map: list[tuple[int, int]]
    pages: dict[int, bytes]
    codec: str | None = "zlib"
    block_size: int = PAGE
    header64: bool = True
    header_version: int = 6
    nr_cpus: int = 1
    notes: list[Note] = field(default_factory=list)
    vmcoreinfo: bytes = b""
    status_extra: int = 0
    split: int = 0
    dump_level: int = 1


def _bitmap(nbits_bytes: int, ranges) -> bytearray:
    bm = bytearray(nbits_bytes)
    for s, e in ranges:
        if e - s > 64:
            a, b = (s + 7) // 8, e // 8
            bm[a:b] = b"\xff" * (b - a)
            for p in list(range(s, a * 8)) + list(range(b * 8, e)):
                bm[p >> 3] |= 1 << (p & 7)
        else:
            for p in range(s, e):
                bm[p >> 3] |= 1 << (p & 7)
    return bm


def kdump_file(k: Kdump) -> bytes:
    """The plain kdump file (as ``makedumpfile -R`` or QEMU ``kdump-raw-*`` writes it)."""
    bs = k.block_size
    for pfn in k.pages:
        assert any(s <= pfn < e for s, e in k.in_map), pfn
    nb = note_bytes(k.notes)
    sub_len = 104 if k.header64 else 80
    sub_hdr_size = -(-(sub_len + len(nb) + len(k.vmcoreinfo)) // bs)
    bitmap_len = -(-(-(-k.max_mapnr // 8)) // bs) * bs
    bitmap_blocks = 2 * bitmap_len // bs
    bm1 = _bitmap(bitmap_len, k.in_map)
    bm2 = _bitmap(bitmap_len, [(p, p + 1) for p in k.pages])
    desc_off = (1 + sub_hdr_size + bitmap_blocks) * bs
    dumped = sorted(k.pages)
    data_off = desc_off + 24 * len(dumped)
    # QEMU/makedumpfile: one shared zero page first, then every other page in PFN order.
    zero = bytes(bs)
    descs = bytearray()
    data = bytearray(zero)
    for pfn in dumped:
        page = k.pages[pfn]
        assert len(page) == bs
        if page == zero:
            descs += struct.pack("<qIIQ", data_off, bs, 0, 0)
            continue
        c = compress(k.codec, page)
        if k.codec and len(c) < bs:
            descs += struct.pack("<qIIQ", data_off + len(data), len(c), FLAG[k.codec], 0)
            data += c
        else:
            descs += struct.pack("<qIIQ", data_off + len(data), bs, 0, 0)
            data += page
    status = FLAG[k.codec] | k.status_extra
    uts = b"".join(x.ljust(65, b"\0") for x in (b"Linux", b"", b"", b"", b"x86_64", b""))
    if k.header64:
        hdr = (b"KDUMP   " + struct.pack("<i", k.header_version) + uts + bytes(22)
               + struct.pack("<IiiIIIIIIi", status, bs, sub_hdr_size, bitmap_blocks,
                             min(k.max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, k.nr_cpus))
        assert len(hdr) == 464
    else:
        hdr = (b"KDUMP   " + struct.pack("<i", k.header_version) + uts + bytes(10)
               + struct.pack("<IiiIIIIIIi", status, bs, sub_hdr_size, bitmap_blocks,
                             min(k.max_mapnr, 0xFFFFFFFF), 0, 0, 0, 0, k.nr_cpus))
        assert len(hdr) == 452
    note_off = bs + sub_len
    vmci_off = note_off + len(nb)
    if k.header64:
        sub = struct.pack("<QiiQQQQQQQQQQQ", 0, k.dump_level, k.split, 0, 0,
                          vmci_off if k.vmcoreinfo else 0, len(k.vmcoreinfo),
                          note_off if nb else 0, len(nb), 0, 0, 0, 0, k.max_mapnr)
    else:
        sub = struct.pack("<IiiIIQIQIQIQQQ", 0, k.dump_level, k.split, 0, 0,
                          vmci_off if k.vmcoreinfo else 0, len(k.vmcoreinfo),
                          note_off if nb else 0, len(nb), 0, 0, 0, 0, k.max_mapnr)
    assert len(sub) == sub_len
    head = hdr.ljust(bs, b"\0") + (sub + nb + k.vmcoreinfo).ljust(sub_hdr_size * bs, b"\0")
    return head + bytes(bm1) + bytes(bm2) + bytes(descs) + bytes(data)


def flatten(plain: bytes, chunk: int = 5000, seed: int | None = 0,
            extra: list[tuple[int, bytes]] = ()) -> bytes:
    """makedumpfile's flattened stream of ``plain``: records of ``chunk`` bytes, shuffled
    (``seed`` None keeps them in order), then ``extra`` records, then the end marker."""
    head = b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)
    recs = [(off, plain[off:off + chunk]) for off in range(0, len(plain), chunk)]
    # leave out all-zero chunks but the last (reassembly reads unwritten bytes as zeros; the
    # last record fixes the file's length)
    recs = [r for r in recs[:-1] if any(r[1])] + recs[-1:]
    if seed is not None:
        random.Random(seed).shuffle(recs)
    out = bytearray(head.ljust(4096, b"\0"))
    for off, data in list(recs) + list(extra):
        out += struct.pack(">qq", off, len(data)) + data
    out += struct.pack(">qq", -1, -1)
    return bytes(out)


def runstate64(state: int, entry: int, times: tuple[int, int, int, int], padding: int = 0) -> bytes:
    """Xen public/vcpu.h vcpu_runstate_info, 64-bit layout (48 bytes)."""
    return struct.pack("<iIQ4Q", state, padding, entry, *times)


def runstate_compat(state: int, entry: int, times: tuple[int, int, int, int]) -> bytes:
    """The packed 32-bit-guest layout (44 bytes)."""
    return struct.pack("<iQ4Q", state, entry, *times)


def write_flattened(f, records, header: bool = True) -> int:
    """Stream makedumpfile's flattened format to ``f`` from ``(plain offset, bytes)`` records,
    without holding them (a stream can have millions); returns the record count."""
    if header:
        f.write((b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)).ljust(4096, b"\0"))
    n = 0
    for off, data in records:
        f.write(struct.pack(">qq", off, len(data)) + data)
        n += 1
    f.write(struct.pack(">qq", -1, -1))
    return n


KDUMP_HEADER64 = {"status": 424, "block_size": 428, "sub_hdr_size": 432, "bitmap_blocks": 436,
                  "max_mapnr": 440}  # byte offsets in the 64-bit disk_dump_header (464 bytes)
SUB_HEADER64 = {"offset_vmcoreinfo": 32, "size_vmcoreinfo": 40, "offset_note": 48,
                "size_note": 56, "max_mapnr_64": 96}  # in kdump_sub_header, at block_size


def patch_kdump64(plain: bytes, **fields: int) -> bytes:
    """``plain`` with header (``KDUMP_HEADER64``, 32-bit) and sub-header (``SUB_HEADER64``,
    64-bit) fields replaced."""
    out = bytearray(plain)
    bs = struct.unpack_from("<i", out, KDUMP_HEADER64["block_size"])[0]
    for name, value in fields.items():
        if name in KDUMP_HEADER64:
            struct.pack_into("<I", out, KDUMP_HEADER64[name], value)
        else:
            struct.pack_into("<Q", out, bs + SUB_HEADER64[name], value)
    return bytes(out)


def zstd_rle_frame(blocks: int, block_size: int = 128 << 10) -> bytes:
    """A zstd frame (RFC 8878 §3.1.1) of ``blocks`` RLE blocks of ``block_size`` bytes each:
    4 bytes a block, ``blocks * block_size`` bytes out. No content size, window = block."""
    exponent = block_size.bit_length() - 1 - 10  # Window_Descriptor: 2^(10+exponent)
    out = struct.pack("<I", 0xFD2FB528) + bytes([0x00, exponent << 3])
    for i in range(blocks):
        last = i == blocks - 1
        header = last | (1 << 1) | (block_size << 3)  # Last_Block, Block_Type 1 (RLE), size
        out += header.to_bytes(3, "little") + b"\x00"
    return out


# ---------------------------------------------------------------------------------------------
# Xen xl dump-core (docs/misc/dump-core-format.txt; tools/libs/guest/xg_core.c, xg_core.h)

XC_INVALID = (1 << 64) - 1


@dataclass
class XenVcpu:
    """The fields of one vcpu_guest_context the tests look at."""

    ctrlreg: tuple[int, ...] = (0x80050033, 0, 0, 0, 0x50660, 0, 0, 0)
    rip: int = 0
    flags: int = 0x20  # VGCF_online
    cs: int = 0xE033


def vcpu_context64(v: XenVcpu) -> bytes:
    """xen-x86_64.h vcpu_guest_context (5168 bytes): fpu_ctxt[512], flags @512, user_regs @520
    (rip @+128, cs @+136, rflags @+144), trap_ctxt[256]×16 @720, ..., ctrlreg[8] @4984."""
    b = bytearray(5168)
    struct.pack_into("<Q", b, 512, v.flags)
    struct.pack_into("<QHxxxxxxQ", b, 648, v.rip, v.cs, 0x246)
    struct.pack_into("<8Q", b, 4984, *v.ctrlreg)
    return bytes(b)


def vcpu_context32(v: XenVcpu) -> bytes:
    """xen-x86_32.h vcpu_guest_context (2800 bytes): flags @512, user_regs @516 (eip @+32,
    cs @+36, eflags @+40), trap_ctxt[256]×8 @584, ..., ctrlreg[8] @2716; padded to 5168 as
    vcpu_guest_context_any_t is."""
    b = bytearray(5168)
    struct.pack_into("<I", b, 512, v.flags)
    struct.pack_into("<IHxxI", b, 548, v.rip, v.cs, 0x246)
    struct.pack_into("<8I", b, 2716, *v.ctrlreg)
    return bytes(b)


def xen_core_file(entries: list[tuple[int, int, bytes]], vcpus: list[XenVcpu], *, hvm: bool = False,
                  guest32: bool = False, seed: int | None = None, page: int = PAGE,
                  magic: int | None = None) -> bytes:
    """An xl dump-core file with ``entries`` = (pfn, gmfn, page bytes) in that order (``seed``
    shuffles them first; pfn ``XC_INVALID`` makes a padding entry). PV files get ``.xen_p2m``,
    HVM ``.xen_pfn``; the layout is xc_domain_dumpcore_via_callback()'s: ehdr, section
    headers, notes, prstatus, shared_info, zero padding to a page, pages, table, strtab."""
    entries = list(entries)
    if seed is not None:
        random.Random(seed).shuffle(entries)
    names = [b".shstrtab", b".note.Xen", b".xen_prstatus", b".xen_shared_info", b".xen_pages",
             b".xen_pfn" if hvm else b".xen_p2m"]
    strtab = b"\0" + b"".join(n + b"\0" for n in names)
    name_at = {n: strtab.index(b"\0" + n + b"\0") + 1 for n in names}

    def note(t: int, desc: bytes) -> bytes:
        return struct.pack("<III", 4, len(desc), t) + b"Xen\0" + desc

    version = bytearray(1280)
    struct.pack_into("<QQ", version, 0, 4, 17)
    version[16:22] = b".7-xen"
    version[176:190] = b"xen-3.0-x86_64"
    struct.pack_into("<QQ", version, 1264, 0xFFFF800000000000, page)
    if guest32:  # elfnote_dump_xen_version(): pagesize moved 4 bytes down
        version[1268:1276] = version[1272:1280]
        version[1276:1280] = bytes(4)
    notes = (note(0x2000000, b"")
             + note(0x2000001, struct.pack("<QQQQ", magic or (0xF00FEBEE if hvm else 0xF00FEBED),
                                           len(vcpus), len(entries), page))
             + note(0x2000002, bytes(version)) + note(0x2000003, struct.pack("<Q", 1)))
    ctx = b"".join((vcpu_context32 if guest32 else vcpu_context64)(v) for v in vcpus)
    shinfo = bytes(page)
    shoff, nsec = 64, len(names) + 1
    notes_at = shoff + nsec * 64
    prs_at = notes_at + len(notes)
    shinfo_at = prs_at + len(ctx)
    pages_at = -(-(shinfo_at + len(shinfo)) // page) * page
    table = b"".join(struct.pack("<Q", p) if hvm else struct.pack("<QQ", p, m)
                     for p, m, _ in entries)
    table_at = pages_at + len(entries) * page
    strtab_at = table_at + len(table)

    def shdr(name: bytes | None, t: int, off: int, size: int, align: int, ent: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name_at[name] if name else 0, t, 0, 0, off, size, 0,
                           0, align, ent)

    sh = (shdr(None, 0, 0, 0, 0, 0) + shdr(b".shstrtab", 3, strtab_at, len(strtab), 0, 0)
          + shdr(b".note.Xen", 7, notes_at, len(notes), 0, 0)
          + shdr(b".xen_prstatus", 1, prs_at, len(ctx), 8, 5168)
          + shdr(b".xen_shared_info", 1, shinfo_at, page, 8, page)
          + shdr(b".xen_pages", 1, pages_at, len(entries) * page, page, page)
          + shdr(names[-1], 1, table_at, len(table), 8, 8 if hvm else 16))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0, 1]) + bytes(7)
    eh = ident + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64, nsec, 1)
    out = bytearray(eh + sh + notes + ctx + shinfo)
    out += bytes(pages_at - len(out))
    for _, _, data in entries:
        assert len(data) == page
        out += data
    return bytes(out + table + strtab)


def corrupted(data: bytes, rng, where=None) -> bytes:
    """A damaged copy of ``data``, as the corruption tests make them: cut anywhere (3 in 10),
    else one to four bytes set at random, at ``where(rng, len)`` when given."""
    b = bytearray(data)
    if rng.random() < 0.3:
        return bytes(b[:rng.randrange(len(b))])
    for _ in range(rng.randrange(1, 5)):
        b[where(rng, len(b)) if where else rng.randrange(len(b))] = rng.randrange(256)
    return bytes(b)
