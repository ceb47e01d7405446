"""Build the small example dumps of the README's "Formats" examples, one per format xenrs reads
besides raw/ELF/kdump. Each holds the same two runstate areas as ``guest.raw``:

* a 64-bit area (running) that crosses a page boundary, at GPA 0x1ff1;
* a compat (32-bit guest) area (runnable) at GPA 0x100404 (0x100000404 in ``high.raw``).

Files: ``guest.lime`` (LiME: GPA 0x1000-0x2fff and 0x100000-0x100fff), ``guest.avml`` (the
same as AVML's snappy-compressed LiME, version 2: needs ``cramjam``, in xenrs' ``kdump``
extra), ``domu.core`` (an ``xl dump-core`` of a 2-vCPU 64-bit PV guest with PFNs 0-3 stored
out of order, the 64-bit area at PFN 1-2), and ``low.raw`` + ``high.raw`` (two raw images meant
for GPA 0 and 0x100000000). Written with stdlib ``struct`` (and cramjam's snappy framing
encoder), from the formats' own definitions, not with xenrs.
"""

import pathlib
import struct

HERE = pathlib.Path(__file__).parent
PAGE = 4096
# state running; running 4 s, runnable (steal) 0.2 s, blocked 1 s, offline 0; entry = sum.
REC64 = struct.pack("<i4sQ4Q", 0, b"\0" * 4, 5_200_000_000, 4_000_000_000, 200_000_000,
                    1_000_000_000, 0)
# state runnable; entry = sum of the four times.
REC32 = struct.pack("<iQ4Q", 1, 7_350_000_000, 5_000_000_000, 1_250_000_000, 1_100_000_000, 0)


def pages(n: int, *records: tuple[int, bytes]) -> bytes:
    b = bytearray(n * PAGE)
    for at, rec in records:
        b[at:at + len(rec)] = rec
    return bytes(b)


LOW = pages(2, (0xFF1, REC64))          # GPA 0x1000-0x2fff
HIGH = pages(1, (0x404, REC32))         # GPA 0x100000-0x100fff


def lime_header(magic: bytes, version: int, start: int, size: int) -> bytes:
    # lime_mem_range_header: magic, version, s_addr, e_addr (inclusive), reserved[8]
    return magic + struct.pack("<IQQQ", version, start, start + size - 1, 0)


def write_lime() -> bytes:
    return b"".join(lime_header(b"EMiL", 1, s, len(d)) + d for s, d in ((0x1000, LOW),
                                                                       (0x100000, HIGH)))


def write_avml() -> bytes:
    import cramjam  # the snap crate's FrameEncoder, as avml uses

    out = b""
    for start, data in ((0x1000, LOW), (0x100000, HIGH)):
        stream = bytes(cramjam.snappy.compress(data))
        out += lime_header(b"AVML", 2, start, len(data)) + stream + struct.pack("<Q", len(stream))
    return out


def vcpu_context(cr3: int, user_cr3: int, rip: int, cs: int, flags: int) -> bytes:
    """xen-x86_64.h vcpu_guest_context: flags @512, user_regs.rip @648, cs @656,
    rflags @664, ctrlreg[8] @4984; 5168 bytes."""
    b = bytearray(5168)
    struct.pack_into("<Q", b, 512, flags)
    struct.pack_into("<QH", b, 648, rip, cs)
    struct.pack_into("<Q", b, 664, 0x246)
    struct.pack_into("<8Q", b, 4984, 0x80050033, user_cr3, 0, cr3, 0x50660, 0, 0, 0)
    return bytes(b)


def write_xen_core() -> bytes:
    """xc_domain_dumpcore_via_callback() (tools/libs/guest/xg_core.c) layout: ELF64 header,
    section headers, .note.Xen, .xen_prstatus, .xen_shared_info, zeros to a page, .xen_pages,
    .xen_p2m ({pfn, gmfn} per page), .shstrtab."""
    memory = pages(4, (0x1FF1, REC64))           # GPA 0x0-0x3fff; the area at 0x1ff1
    order = [3, 0, 2, 1]                          # "there is no rule about the order"
    mfn = {pfn: 0x2F400 + pfn for pfn in range(4)}
    names = [b".shstrtab", b".note.Xen", b".xen_prstatus", b".xen_shared_info", b".xen_pages",
             b".xen_p2m"]
    strtab = b"\0" + b"".join(n + b"\0" for n in names)

    def note(t: int, desc: bytes) -> bytes:
        return struct.pack("<III", 4, len(desc), t) + b"Xen\0" + desc

    version = bytearray(1280)   # xen_dumpcore_elfnote_xen_version_desc
    struct.pack_into("<QQ", version, 0, 4, 17)
    version[16:18] = b".7"
    version[176:190] = b"xen-3.0-x86_64"
    struct.pack_into("<QQ", version, 1264, 0xFFFF800000000000, PAGE)
    notes = (note(0x2000000, b"") + note(0x2000001, struct.pack("<QQQQ", 0xF00FEBED, 2, 4, PAGE))
             + note(0x2000002, bytes(version)) + note(0x2000003, struct.pack("<Q", 1)))
    ctx = (vcpu_context(mfn[1] << 12, mfn[3] << 12, 0xFFFFFFFF81A442B5, 0xE033, 0x35)
           + vcpu_context(mfn[1] << 12, mfn[3] << 12, 0x430290, 0x33, 0x39))
    nsec = len(names) + 1
    notes_at = 64 + nsec * 64
    prs_at = notes_at + len(notes)
    shinfo_at = prs_at + len(ctx)
    pages_at = -(-(shinfo_at + PAGE) // PAGE) * PAGE
    p2m = b"".join(struct.pack("<QQ", p, mfn[p]) for p in order)
    p2m_at = pages_at + 4 * PAGE
    strtab_at = p2m_at + len(p2m)

    def shdr(name: bytes | None, t: int, off: int, size: int, align: int, ent: int) -> bytes:
        name_at = strtab.index(b"\0" + name + b"\0") + 1 if name else 0
        return struct.pack("<IIQQQQIIQQ", name_at, t, 0, 0, off, size, 0, 0, align, ent)

    sh = (shdr(None, 0, 0, 0, 0, 0) + shdr(b".shstrtab", 3, strtab_at, len(strtab), 0, 0)
          + shdr(b".note.Xen", 7, notes_at, len(notes), 0, 0)
          + shdr(b".xen_prstatus", 1, prs_at, len(ctx), 8, 5168)
          + shdr(b".xen_shared_info", 1, shinfo_at, PAGE, 8, PAGE)
          + shdr(b".xen_pages", 1, pages_at, 4 * PAGE, PAGE, PAGE)
          + shdr(b".xen_p2m", 1, p2m_at, len(p2m), 8, 16))
    eh = (b"\x7fELF" + bytes([2, 1, 1, 0, 1]) + bytes(7)
          + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, 0, 64, 0, 64, 56, 0, 64, nsec, 1))
    head = eh + sh + notes + ctx + bytes(PAGE)
    body = b"".join(memory[p * PAGE:(p + 1) * PAGE] for p in order)
    return head + bytes(pages_at - len(head)) + body + p2m + strtab


def main() -> None:
    files = {"guest.lime": write_lime(), "guest.avml": write_avml(),
             "domu.core": write_xen_core(), "low.raw": pages(3, (0x1FF1, REC64)),
             "high.raw": pages(1, (0x404, REC32))}
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"wrote examples/{name} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
