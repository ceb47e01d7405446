"""ELF core dumps (QEMU ``dump-guest-memory``, ``virsh dump --memory-only``, ``/proc/vmcore``).

Every ``PT_LOAD`` becomes a segment at its ``p_paddr`` (SPEC §2): ``[0, p_filesz)`` is stored at
``p_offset``, ``[p_filesz, p_memsz)`` is *zero-filled*. Program headers are read at ``e_phoff``
and ``e_ehsize`` is not checked: QEMU 7.2/10.0 ``dump/dump.c`` (``prepare_elf64_header``) writes
``e_ehsize = sizeof(pointer)`` = 8 and puts its section headers at offset 64, where a reader that
assumes ``sizeof(Elf64_Ehdr)`` (makedumpfile's ``get_elf64_phdr``) finds no program header.
``e_phnum == PN_XNUM`` takes the real count from section 0's ``sh_info`` (``dump_begin``).

Notes (``PT_NOTE``) feed ``info``: the vCPU count from ``CORE``/``NT_PRSTATUS``, QEMU's per-vCPU
``QEMUCPUState`` (target/i386/arch_dump.c ``qemu_get_cpustate``), and ``VMCOREINFO``. An ELF
whose section headers name ``.xen_pages``/``.xen_p2m``/``.xen_pfn`` is Xen's ``xl dump-core``
(tools/libs/guest/xg_core.c), whose GPAs are not ``p_paddr``: ``xen_core`` reads it (detection
tries it first); forced through this reader it is refused, never misread.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from construct import (Bytes, Int16ub, Int16ul, Int32ub, Int32ul, Int64ub,
                       Int64ul, Struct)

from xenrs_cli.address_space import GPA_LIMIT, AddressSpace, LinearSegment, Segment, ZeroSegment
from xenrs_cli.cpu_state import CpuState
from xenrs_cli.dumps import Dump
from xenrs_cli.binary import parse
from xenrs_cli.errors import BadDumpError, UnsupportedDumpError
from xenrs_cli.files import MappedFile

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_CORE = 4
PT_LOAD, PT_NOTE = 1, 4
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
ET_NAMES = {0: "ET_NONE", 1: "ET_REL (an object file)", 2: "ET_EXEC (an executable, e.g. vmlinux)",
            3: "ET_DYN (a shared object or PIE executable)"}
MACHINES = {3: "EM_386", 62: "EM_X86_64", 40: "EM_ARM", 183: "EM_AARCH64", 21: "EM_PPC64",
            22: "EM_S390", 243: "EM_RISCV"}
XEN_DUMP_CORE_SECTIONS = (".xen_pages", ".xen_p2m", ".xen_pfn")

@cache
def structs(is64: bool, little: bool) -> dict[str, Struct]:
    """The ELF header, program header, section header and note header of one class and order
    (``<elf.h>``: ``Elf{32,64}_Ehdr``, ``_Phdr``, ``_Shdr``, ``_Nhdr``)."""
    h, w = (Int16ul, Int32ul) if little else (Int16ub, Int32ub)
    a = (Int64ul if little else Int64ub) if is64 else w  # Elf_Addr / Elf_Off / Elf_Xword
    ehdr = Struct("e_ident" / Bytes(16), "e_type" / h, "e_machine" / h, "e_version" / w,
                  "e_entry" / a, "e_phoff" / a, "e_shoff" / a, "e_flags" / w, "e_ehsize" / h,
                  "e_phentsize" / h, "e_phnum" / h, "e_shentsize" / h, "e_shnum" / h,
                  "e_shstrndx" / h)
    if is64:  # p_flags moves after p_type in ELF64 for alignment
        phdr = Struct("p_type" / w, "p_flags" / w, "p_offset" / a, "p_vaddr" / a, "p_paddr" / a,
                      "p_filesz" / a, "p_memsz" / a, "p_align" / a)
    else:
        phdr = Struct("p_type" / w, "p_offset" / a, "p_vaddr" / a, "p_paddr" / a,
                      "p_filesz" / a, "p_memsz" / a, "p_flags" / w, "p_align" / a)
    shdr = Struct("sh_name" / w, "sh_type" / w, "sh_flags" / a, "sh_addr" / a, "sh_offset" / a,
                  "sh_size" / a, "sh_link" / w, "sh_info" / w, "sh_addralign" / a,
                  "sh_entsize" / a)
    # The note header is three 32-bit words in ELF64 too (gABI; QEMU elf.h Elf64_Nhdr).
    nhdr = Struct("n_namesz" / w, "n_descsz" / w, "n_type" / w)
    return {"ehdr": ehdr, "phdr": phdr, "shdr": shdr, "nhdr": nhdr}


def elf_ident(buf) -> tuple[bool, bool] | None:
    """(is64, little) of an ELF file, or ``None`` if ``buf`` is not ELF."""
    if bytes(buf[:4]) != ELF_MAGIC:
        return None
    if len(buf) < 16:
        raise BadDumpError(f"truncated ELF identification: {len(buf)} bytes", offset=0)
    cls, data = buf[4], buf[5]
    if cls not in (ELFCLASS32, ELFCLASS64) or data not in (ELFDATA2LSB, ELFDATA2MSB):
        raise BadDumpError(f"ELF file with an invalid class ({cls}) or byte order ({data})",
                           offset=4)
    return cls == ELFCLASS64, data == ELFDATA2LSB


def sniff(buf) -> bool:
    """True for an ELF core; raises for an ELF that is not one (or is Xen's dump-core)."""
    ident = elf_ident(buf)
    if ident is None:
        return False
    _check_core(buf, *ident)
    return True


def _check_core(buf, is64: bool, little: bool) -> Any:
    from xenrs_cli.dumps import unrecognised

    eh = parse(structs(is64, little)["ehdr"], buf, 0, "ELF header")
    if eh.e_type != ET_CORE:
        what = ET_NAMES.get(eh.e_type, f"e_type {eh.e_type}")
        raise UnsupportedDumpError(f"this is an ELF {what}, not a core dump: give xenrs the "
                                   "guest-memory dump (virsh dump --memory-only --format elf, "
                                   "QMP dump-guest-memory)")
    if any(name in XEN_DUMP_CORE_SECTIONS for name in _section_names(buf, eh, is64, little)):
        unrecognised.refuse_xen_dump_core()
    return eh


def section_headers(buf, eh, is64: bool, little: bool) -> list[tuple[str, Any]]:
    """``(name, Elf_Shdr)`` of every section header (at most 256: the files xenrs reads have a
    handful); raises :class:`BadDumpError` where the headers or their names are unreadable."""
    shdr = structs(is64, little)["shdr"]
    if eh.e_shoff == 0 or eh.e_shnum == 0 or eh.e_shstrndx >= eh.e_shnum:
        return []
    strtab = parse(shdr, buf, eh.e_shoff + eh.e_shstrndx * shdr.sizeof(), "section header")
    # names are short: never copy more than 64 KiB, whatever a corrupt sh_size says
    table = bytes(buf[strtab.sh_offset:strtab.sh_offset + min(strtab.sh_size, 1 << 16)])
    out = []
    for i in range(min(eh.e_shnum, 256)):
        sh = parse(shdr, buf, eh.e_shoff + i * shdr.sizeof(), f"section header {i}")
        out.append((table[sh.sh_name:].split(b"\0", 1)[0].decode("ascii", "replace"), sh))
    return out


def _section_names(buf, eh, is64: bool, little: bool) -> list[str]:
    """Names of the section headers (empty when there are none or they are unreadable:
    sections are optional in a core file and only used to recognise ``xl dump-core``)."""
    try:
        return [name for name, _ in section_headers(buf, eh, is64, little)]
    except BadDumpError:
        return []


def _phnum(buf, eh, is64: bool, little: bool) -> int:
    if eh.e_phnum != PN_XNUM:
        return eh.e_phnum
    # dump/dump.c write_elf_section(): with more than 0xfffe program headers the real count is
    # in sh_info of section 0 (gABI "Extended Program Header Numbering").
    sh0 = parse(structs(is64, little)["shdr"], buf, eh.e_shoff, "section header 0 (PN_XNUM)")
    return sh0.sh_info


def program_headers(buf, eh, is64: bool, little: bool) -> list:
    phdr = structs(is64, little)["phdr"]
    if eh.e_phentsize != phdr.sizeof():
        raise BadDumpError(f"e_phentsize is {eh.e_phentsize}, expected {phdr.sizeof()}",
                           offset=54 if is64 else 42)
    n = _phnum(buf, eh, is64, little)
    return [parse(phdr, buf, eh.e_phoff + i * phdr.sizeof(), f"program header {i}")
            for i in range(n)]


def load_segments(buf, size: int, phdrs: list) -> tuple[list[Segment], list[dict[str, Any]]]:
    """Segments of every ``PT_LOAD`` and a summary of each.

    ``/proc/vmcore`` repeats the kernel text's physical range in a second ``PT_LOAD`` (same
    bytes, different ``p_vaddr``; kernel fs/proc/vmcore.c), so a ``PT_LOAD`` inside the GPAs
    already covered is skipped and one that overlaps them is clipped.
    """
    loads = [(i, p) for i, p in enumerate(phdrs) if p.p_type == PT_LOAD and p.p_memsz > 0]
    if len(loads) > 1 and all(p.p_paddr == 0 for _, p in loads):
        # A process core (kernel fs/binfmt_elf.c elf_core_dump) leaves p_paddr 0 everywhere.
        raise UnsupportedDumpError("this ELF core has no physical addresses (p_paddr is 0 in "
                                   "every PT_LOAD): a process core dump, not a guest-memory "
                                   "dump (take one with virsh dump --memory-only --format elf "
                                   "or QMP dump-guest-memory)")
    segs: list[Segment] = []
    summary: list[dict[str, Any]] = []
    covered_to = -1
    for i, p in sorted(loads, key=lambda ip: (ip[1].p_paddr, -ip[1].p_memsz)):
        if p.p_filesz > p.p_memsz:
            raise BadDumpError(f"PT_LOAD {i}: p_filesz 0x{p.p_filesz:x} > p_memsz "
                               f"0x{p.p_memsz:x}")
        if p.p_offset + p.p_filesz > size:
            raise BadDumpError(f"PT_LOAD {i} (GPA 0x{p.p_paddr:x}) needs file bytes up to "
                               f"0x{p.p_offset + p.p_filesz:x}, but the file ends at 0x{size:x} "
                               "(truncated dump?)", offset=p.p_offset)
        if p.p_paddr + p.p_memsz > GPA_LIMIT:
            raise BadDumpError(f"PT_LOAD {i}: p_paddr 0x{p.p_paddr:x} + p_memsz reaches beyond "
                               "2^52 (not a guest-physical dump?)")
        entry = {"index": i, "paddr": f"0x{p.p_paddr:x}", "vaddr": f"0x{p.p_vaddr:x}",
                 "offset": p.p_offset, "filesz": p.p_filesz, "memsz": p.p_memsz}
        summary.append(entry)
        skip = max(0, covered_to - p.p_paddr)
        if skip >= p.p_memsz:
            entry["duplicate"] = True
            continue
        detail = f"PT_LOAD {i}"
        if skip < p.p_filesz:
            segs.append(LinearSegment(p.p_paddr + skip, p.p_filesz - skip, buf,
                                      p.p_offset + skip, detail))
        zstart = max(skip, p.p_filesz)
        if zstart < p.p_memsz:
            segs.append(ZeroSegment(p.p_paddr + zstart, p.p_memsz - zstart,
                                    f"{detail} [p_filesz, p_memsz)"))
        covered_to = max(covered_to, p.p_paddr + p.p_memsz)
    return segs, summary


def load(mapped: MappedFile, base: int = 0) -> Dump:
    buf = mapped.buf
    ident = elf_ident(buf)
    if ident is None:
        raise BadDumpError("not an ELF file (no \\x7fELF magic)", offset=0)
    is64, little = ident
    eh = _check_core(buf, is64, little)
    phdrs = program_headers(buf, eh, is64, little)
    segs, loads = load_segments(buf, mapped.size, phdrs)
    if not segs:
        raise BadDumpError("ELF core without any PT_LOAD: no guest memory in this file")
    raw_notes = []
    for i, p in enumerate(phdrs):
        if p.p_type == PT_NOTE and p.p_filesz:
            raw_notes += parse_notes(buf, p.p_offset, p.p_filesz, little, f"PT_NOTE {i}")
    details: dict[str, Any] = {
        "elf_class": "ELFCLASS64" if is64 else "ELFCLASS32",
        "byte_order": "little" if little else "big",
        "machine": MACHINES.get(eh.e_machine, f"e_machine {eh.e_machine}"),
        "e_ehsize": eh.e_ehsize,
        "e_phoff": eh.e_phoff,
        "pt_loads": loads,
    }
    details.update(summarise_notes(raw_notes, little))
    return Dump(mapped.name, "elf", AddressSpace(segs), mapped, details["elf_class"], details,
                cpus=cpu_states(raw_notes, little))


# ---------------------------------------------------------------------------------------------
# Notes (shared with kdump, whose sub-header points at the same ELF notes)

# target/i386/arch_dump.c: QEMUCPUSegment and QEMUCPUState (version 1; fields appended later
# without a version bump, so ``size`` is trusted rather than ``version``).
QEMU_SEGMENT = Struct("selector" / Int32ul, "limit" / Int32ul, "flags" / Int32ul,
                      "pad" / Int32ul, "base" / Int64ul)
QEMU_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags")
QEMU_SEGS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")
QEMU_CPU_STATE = Struct("version" / Int32ul, "size" / Int32ul,
                        *(name / Int64ul for name in QEMU_REGS),
                        *(name / QEMU_SEGMENT for name in QEMU_SEGS),
                        "cr0" / Int64ul, "cr1" / Int64ul, "cr2" / Int64ul, "cr3" / Int64ul,
                        "cr4" / Int64ul)
DESC_L_MASK = 1 << 21  # target/i386/cpu.h: SegmentCache.flags bit of the descriptor's L bit
CR0_PE, CR0_PG, CR4_PAE = 1 << 0, 1 << 31, 1 << 5
# linux/elfcore.h elf_prstatus: pr_pid offset and the offset of pr_reg's instruction pointer
# in the x86_64 (336 bytes) and i386 (144 bytes) forms QEMU writes (arch_dump.c).
PRSTATUS_FORMS = {336: (32, 112 + 16 * 8, 8), 144: (24, 72 + 12 * 4, 4)}


def parse_notes(buf, offset: int, size: int, little: bool,
                what: str) -> list[tuple[str, int, bytes]]:
    """``(name, type, desc)`` of every note in ``[offset, offset+size)`` (name and desc padded
    to 4 bytes, as Linux ``fs/binfmt_elf.c`` and QEMU write them)."""
    nhdr = structs(True, little)["nhdr"]
    out = []
    cur, end = offset, offset + size
    if end > len(buf):
        raise BadDumpError(f"{what} runs past the end of the file", offset=offset)
    while cur + nhdr.sizeof() <= end:
        n = parse(nhdr, buf, cur, f"note header in {what}")
        name_at = cur + nhdr.sizeof()
        desc_at = name_at + _pad4(n.n_namesz)
        nxt = desc_at + _pad4(n.n_descsz)
        if nxt > end:
            raise BadDumpError(f"note in {what} runs past its end (n_namesz {n.n_namesz}, "
                               f"n_descsz {n.n_descsz})", offset=cur)
        name = bytes(buf[name_at:name_at + n.n_namesz]).split(b"\0", 1)[0]
        desc = bytes(buf[desc_at:desc_at + n.n_descsz])
        out.append((name.decode("ascii", "replace"), n.n_type, desc))
        cur = nxt
    return out


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def summarise_notes(notes: list[tuple[str, int, bytes]], little: bool) -> dict[str, Any]:
    """What ``info`` shows of the notes: vCPU count, the notes, QEMU CPU state, VMCOREINFO."""
    prstatus = [d for name, t, d in notes if name == "CORE" and t == NT_PRSTATUS]
    qemu = [d for name, t, d in notes if name == "QEMU" and t == 0]
    out: dict[str, Any] = {
        "vcpus": len(prstatus) if prstatus else (len(qemu) or None),
        "notes": [{"name": name, "type": t, "descsz": len(d)} for name, t, d in notes],
    }
    cpus = [_qemu_cpu(i, d) for i, d in enumerate(qemu)] if little else []
    if not cpus and little:
        cpus = [c for c in (_prstatus_cpu(i, d) for i, d in enumerate(prstatus)) if c]
    if cpus:
        out["cpus"] = cpus
    vmcoreinfo = [d for name, _, d in notes if name == "VMCOREINFO"]
    if vmcoreinfo:
        out["vmcoreinfo"] = vmcoreinfo[0].rstrip(b"\0").decode("utf-8", "replace")
    return out


EFER_LME, EFER_LMA = 1 << 8, 1 << 10


def cpu_states(notes: list[tuple[str, int, bytes]], little: bool) -> tuple[CpuState, ...]:
    """Each vCPU's control registers (SPEC §8): QEMU notes carry CR0/CR3/CR4; ``NT_PRSTATUS``
    (``elf_prstatus.pr_reg``, user registers only) carries none, so its vCPUs have ``None``."""
    if not little:
        return ()
    qemu = [d for name, t, d in notes if name == "QEMU" and t == 0]
    out = []
    for i, desc in enumerate(qemu):
        if len(desc) < QEMU_CPU_STATE.sizeof():
            out.append(CpuState(i, source="QEMU note (too short)"))
            continue
        s = QEMU_CPU_STATE.parse(desc[:QEMU_CPU_STATE.sizeof()])
        out.append(CpuState(i, s.cr0, s.cr3, s.cr4, _infer_efer(s), "QEMU note"))
    if out:
        return tuple(out)
    n = sum(1 for name, t, _ in notes if name == "CORE" and t == NT_PRSTATUS)
    return tuple(CpuState(i, source="NT_PRSTATUS") for i in range(n))


def _infer_efer(s) -> int | None:
    """EFER's long-mode bits, which QEMUCPUState lacks, where the other registers decide them:
    a CS with the L bit runs 64-bit code, so LMA is set (SDM 5.2.1); without CR0.PG or CR4.PAE
    long mode is impossible. A 32-bit CS under paging with PAE is legacy PAE or compatibility
    mode: undecided (``None``)."""
    if s.cr0 & CR0_PG and s.cr4 & CR4_PAE and s.cs.flags & DESC_L_MASK:
        return EFER_LME | EFER_LMA
    if not s.cr0 & CR0_PG or not s.cr4 & CR4_PAE:
        return 0
    return None


def _qemu_cpu(index: int, desc: bytes) -> dict[str, Any]:
    if len(desc) < QEMU_CPU_STATE.sizeof():
        return {"vcpu": index, "error": f"QEMU note of {len(desc)} bytes, too short"}
    s = QEMU_CPU_STATE.parse(desc[:QEMU_CPU_STATE.sizeof()])
    if _infer_efer(s):  # long mode, as the CS L bit says (compat mode reads as protected)
        mode = "long (64-bit)"
    elif s.cr0 & CR0_PE:
        mode = "protected"
    else:
        mode = "real"
    return {"vcpu": index, "mode": mode, "rip": f"0x{s.rip:x}", "rflags": f"0x{s.rflags:x}",
            "cs": f"0x{s.cs.selector:x}", "cr0": f"0x{s.cr0:x}", "cr3": f"0x{s.cr3:x}",
            "cr4": f"0x{s.cr4:x}"}


def _prstatus_cpu(index: int, desc: bytes) -> dict[str, Any] | None:
    form = PRSTATUS_FORMS.get(len(desc))
    if form is None:
        return None
    pid_at, ip_at, ip_size = form
    return {"vcpu": index, "pid": int.from_bytes(desc[pid_at:pid_at + 4], "little"),
            "rip": f"0x{int.from_bytes(desc[ip_at:ip_at + ip_size], 'little'):x}"}
