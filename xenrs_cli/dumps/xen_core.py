"""Xen ``xl dump-core`` files: the xc_core ELF (Xen ``docs/misc/dump-core-format.txt``).

Written by ``xc_domain_dumpcore_via_callback()`` (tools/libs/guest/xg_core.c): an ELF64
``ET_CORE`` with no program headers and these sections (``xg_core.h``):

* ``.note.Xen``: notes named ``Xen``; the header note (``XEN_ELFNOTE_DUMPCORE_HEADER``) gives
  ``xch_magic`` (``0xF00FEBED`` PV, ``0xF00FEBEE`` HVM), ``xch_nr_vcpus``, ``xch_nr_pages`` and
  ``xch_page_size``; then the Xen version and the format version.
* ``.xen_pages``: ``nr_pages`` pages, one after another.
* ``.xen_p2m`` (PV: ``{u64 pfn; u64 gmfn}``) or ``.xen_pfn`` (HVM: ``u64 pfn``): entry *i*
  names the guest pseudo-physical frame of page *i*. "There is no rule about the order", and
  entries set to ``XC_CORE_INVALID_PFN`` (~0) are the zero pages written when the domain shrank
  during a live dump: they are no guest memory.
* ``.xen_prstatus``: one ``vcpu_guest_context`` per vCPU whose context Xen returned.

GPA = pfn × page size (the guest's own physical address space). The table is read into compact
arrays, never into a Python object per page: when it is in ascending PFN order (what xg_core.c
writes: it walks the memory map upwards) the runs of consecutive PFNs are found by binary search
(``pfn[j] - j`` is constant along a run and non-decreasing); otherwise the entries are sorted
once into two arrays (PFN, page), 16 bytes per 4 KiB page. A run of consecutive PFNs stored in
consecutive pages becomes a :class:`LinearSegment`, one whose pages are scattered a
:class:`ScatteredRun` that looks each page up in the sorted arrays.

A PV guest's page tables hold machine frames (MFNs); ``frame_to_gpa`` maps them back to PFNs
through ``.xen_p2m`` (crash ``xendump.c`` ``xc_core_mfn_to_page`` does the same lookup).
"""

from __future__ import annotations

import bisect
import operator
import sys
from array import array
from collections.abc import Iterator
from typing import Any

from construct import Array, Bytes, Int16ul, Int32ul, Int64ul, Padding, Struct

from xenrs_cli.address_space import (GPA_LIMIT, PAGE_SIZE, AddressSpace, Extent, LinearSegment,
                                     PresentSegment, Segment, Status)
from xenrs_cli.binary import parse
from xenrs_cli.cpu_state import CpuState
from xenrs_cli.dumps import Dump, source
from xenrs_cli.dumps.elf import (ET_CORE, MACHINES, elf_ident, parse_notes, section_headers,
                                 structs)
from xenrs_cli.errors import BadDumpError
from xenrs_cli.files import MappedFile

SEC_NOTE, SEC_PRSTATUS, SEC_SHARED_INFO = ".note.Xen", ".xen_prstatus", ".xen_shared_info"
SEC_P2M, SEC_PFN, SEC_PAGES = ".xen_p2m", ".xen_pfn", ".xen_pages"
SIGNATURE_SECTIONS = (SEC_PAGES, SEC_P2M, SEC_PFN)

# xen/include/public/elfnote.h
NOTE_NONE, NOTE_HEADER, NOTE_XEN_VERSION, NOTE_FORMAT_VERSION = (0x2000000, 0x2000001,
                                                                 0x2000002, 0x2000003)
XC_CORE_MAGIC, XC_CORE_MAGIC_HVM = 0xF00FEBED, 0xF00FEBEE
INVALID = (1 << 64) - 1  # XC_CORE_INVALID_PFN / XC_CORE_INVALID_GMFN
EM_386, EM_X86_64 = 3, 62

HEADER_DESC = Struct("xch_magic" / Int64ul, "xch_nr_vcpus" / Int64ul, "xch_nr_pages" / Int64ul,
                     "xch_page_size" / Int64ul)
# xen_dumpcore_elfnote_xen_version_desc; the xen_*_t sizes are xen/include/public/version.h's.
XEN_VERSION_DESC = Struct("major_version" / Int64ul, "minor_version" / Int64ul,
                          "extra_version" / Bytes(16),
                          "compiler" / Bytes(64), "compile_by" / Bytes(16),
                          "compile_domain" / Bytes(32), "compile_date" / Bytes(32),
                          "capabilities" / Bytes(1024), "changeset" / Bytes(64),
                          "virt_start" / Int64ul, "pagesize" / Int64ul)

# xen/include/public/arch-x86/xen-x86_64.h and xen.h: vcpu_guest_context (5168 bytes) with
# cpu_user_regs (200 bytes) and trap_ctxt[256] of 16-byte trap_info. Only the fields info and
# the page-table walker use are named.
CTX_X86_64 = Struct(Padding(512),                       # fpu_ctxt
                    "flags" / Int64ul,
                    Padding(15 * 8 + 8),                # r15..rdi, error_code, entry_vector
                    "rip" / Int64ul, "cs" / Int16ul, Padding(6), "rflags" / Int64ul,
                    "rsp" / Int64ul, "ss" / Int16ul, Padding(6 + 4 * 8),   # ss, es, ds, fs, gs
                    Padding(256 * 16),                  # trap_ctxt
                    Padding(8 + 8 + 16 * 8 + 8 + 8 + 8),  # ldt_*, gdt_*, kernel_ss, kernel_sp
                    "ctrlreg" / Array(8, Int64ul),
                    Padding(8 * 8 + 4 * 8),             # debugreg, callbacks, vm_assist
                    "fs_base" / Int64ul, "gs_base_kernel" / Int64ul, "gs_base_user" / Int64ul)
# xen-x86_32.h: the same for a 32-bit PV guest (2800 bytes; trap_info of 8 bytes).
CTX_X86_32 = Struct(Padding(512),
                    "flags" / Int32ul,
                    Padding(7 * 4 + 4),                 # ebx..eax, error_code, entry_vector
                    "rip" / Int32ul, "cs" / Int16ul, Padding(2), "rflags" / Int32ul,
                    "rsp" / Int32ul, "ss" / Int16ul, Padding(2 + 4 * 4),
                    Padding(256 * 8),
                    Padding(4 + 4 + 16 * 4 + 4 + 4 + 4),
                    "ctrlreg" / Array(8, Int32ul),
                    Padding(8 * 4 + 5 * 4))
# vcpu_guest_context_any_t is the union: each .xen_prstatus entry is the 64-bit size.
CTX_SLOT = CTX_X86_64.sizeof()
# xen.h VGCF_* bits of vcpu_guest_context.flags
VGCF = {0: "i387_valid", 2: "in_kernel", 3: "failsafe_disables_events",
        4: "syscall_disables_events", 5: "online"}


def _text(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


SHT_NOTE = 7
# The first note xg_core.c writes: namesz 4, descsz 0, XEN_ELFNOTE_DUMPCORE_NONE, "Xen".
FIRST_NOTE = NOTE_NONE.to_bytes(4, "little").join((b"\x04\0\0\0\0\0\0\0", b"Xen\0"))


def _sections(buf) -> tuple[Any, list[tuple[str, Any]]] | None:
    """The ELF header and ``(name, header)`` of each section of a little-endian ELF64 core."""
    if elf_ident(buf) != (True, True):
        return None
    eh = parse(structs(True, True)["ehdr"], buf, 0, "ELF header")
    if eh.e_type != ET_CORE:
        return None
    try:
        return eh, section_headers(buf, eh, True, True)
    except BadDumpError:
        return None


def _strtab_cut(buf, eh, sections) -> int | None:
    """The end of ``.shstrtab`` if it lies past the end of the file (xg_core.c writes it last,
    so a truncated dump-core loses the section names first), else ``None``."""
    if eh.e_shstrndx < len(sections):
        sh = sections[eh.e_shstrndx][1]
        if sh.sh_offset + sh.sh_size > len(buf):
            return sh.sh_offset + sh.sh_size
    return None


def sniff(buf) -> bool:
    """An ELF64 core with ``.xen_pages`` and a ``.xen_p2m``/``.xen_pfn`` table; or, when the
    names are gone with a truncated tail, one without program headers whose note section opens
    with Xen's ``XEN_ELFNOTE_DUMPCORE_NONE`` note."""
    found = _sections(buf)
    if found is None:
        return False
    eh, sections = found
    if any(name in SIGNATURE_SECTIONS for name, _ in sections):
        return True
    return eh.e_phnum == 0 and any(
        sh.sh_type == SHT_NOTE and bytes(buf[sh.sh_offset:sh.sh_offset + 16]) == FIRST_NOTE
        for _, sh in sections)


def _section(buf, sections: dict[str, Any], name: str, required: bool = True):
    sh = sections.get(name)
    if sh is None:
        if required:
            raise BadDumpError(f"xl dump-core file without a {name} section")
        return None
    if sh.sh_offset + sh.sh_size > len(buf):
        raise BadDumpError(f"section {name} ends at 0x{sh.sh_offset + sh.sh_size:x}, past the "
                           f"end of the file at 0x{len(buf):x} (truncated dump?)",
                           offset=sh.sh_offset)
    return sh


# ---------------------------------------------------------------------------------------------
# The PFN table


class FrameTable:
    """Entry *i* of ``.xen_p2m``/``.xen_pfn``: PFN (and MFN for PV) of page *i*, as arrays."""

    def __init__(self, buf, sh, nr_pages: int, pv: bool) -> None:
        width = 16 if pv else 8
        if sh.sh_size < nr_pages * width:
            raise BadDumpError(f"{SEC_P2M if pv else SEC_PFN} holds {sh.sh_size // width} "
                               f"entries, the header says {nr_pages} pages",
                               offset=sh.sh_offset)
        raw = array("Q", bytes(buf[sh.sh_offset:sh.sh_offset + nr_pages * width]))
        if sys.byteorder != "little":
            raw.byteswap()
        self.offset, self.width = sh.sh_offset, width
        self.pfns = raw[0::2] if pv else raw
        self.mfns = raw[1::2] if pv else None


def _ascending_prefix(pfns: array) -> int | None:
    """The number of valid entries if they are strictly ascending and followed only by
    invalid ones (what xg_core.c writes), else ``None``."""
    n = len(pfns)
    while n and pfns[n - 1] == INVALID:
        n -= 1
    view = memoryview(pfns)[:n]
    if n > 1 and not all(map(operator.lt, view[:-1], view[1:])):
        return None
    return n


def _runs_ascending(pfns: array, n: int) -> list[tuple[int, int, int]]:
    """``(first pfn, first page, count)`` runs of ascending entries ``[0, n)``: along a run
    ``pfn[j] - j`` is constant, and it never decreases, so each run end is a binary search."""
    runs, j = [], 0
    while j < n:
        end = bisect.bisect_right(range(n), pfns[j] - j, lo=j, key=lambda i: pfns[i] - i)
        runs.append((pfns[j], j, end - j))
        j = end
    return runs


def _sort_unordered(table: FrameTable) -> tuple[array, array]:
    """The valid PFNs in ascending order and, for each, its page in ``.xen_pages``: two arrays
    of 8 bytes per page (the sort itself holds a list of indices, briefly)."""
    pfns = table.pfns
    order = sorted((i for i in range(len(pfns)) if pfns[i] != INVALID), key=pfns.__getitem__)
    spfns = array("Q", (pfns[i] for i in order))
    view = memoryview(spfns)
    if len(spfns) > 1 and not all(map(operator.lt, view[:-1], view[1:])):
        for k in range(len(spfns) - 1):
            if spfns[k] == spfns[k + 1]:
                a, b = sorted((order[k], order[k + 1]))
                raise BadDumpError(f"PFN 0x{spfns[k]:x} appears twice in the frame table "
                                   f"(entries {a} and {b})", offset=table.offset + b * table.width)
    return spfns, array("Q", order)


class ScatteredRun(PresentSegment):
    """Consecutive PFNs whose pages are scattered in ``.xen_pages`` (an unordered table): PFN
    ``first + k`` is page ``pages[lo + k]``."""

    def __init__(self, buf, page_size: int, pages_at: int, first_pfn: int, count: int,
                 pages: array, lo: int) -> None:
        self.buf, self.ps, self.pages_at = buf, page_size, pages_at
        self.gpa, self.size, self.pfn = first_pfn * page_size, count * page_size, first_pfn
        self.pages, self.lo = pages, lo

    def _offset(self, rel: int) -> int:
        k, within = divmod(rel, self.ps)
        return self.pages_at + self.pages[self.lo + k] * self.ps + within

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        return Status.PRESENT, self._offset(rel)

    def read(self, rel: int, size: int) -> bytes:
        at = self._offset(rel)
        return bytes(self.buf[at:at + size])

    def read_span(self, rel: int, size: int, page_size: int = PAGE_SIZE) -> bytes:
        out, cur, end = bytearray(), rel, rel + size
        while cur < end:
            stop = min(end, (cur // self.ps + 1) * self.ps)
            out += self.read(cur, stop - cur)
            cur = stop
        return bytes(out)

    def extents(self) -> Iterator[Extent]:
        """One extent per stretch of pages that is contiguous in the file too."""
        count = self.size // self.ps
        k = 0
        while k < count:
            first = self.pages[self.lo + k]
            j = k + 1
            while j < count and self.pages[self.lo + j] == first + (j - k):
                j += 1
            yield Extent(self.gpa + k * self.ps, (j - k) * self.ps, Status.PRESENT,
                         self.pages_at + first * self.ps,
                         _detail(self.pfn + k, j - k, first))
            k = j


def _detail(pfn: int, count: int, page: int) -> str:
    last = f"-0x{pfn + count - 1:x}" if count > 1 else ""
    return f"PFN 0x{pfn:x}{last} ({SEC_PAGES}[{page}])"


def _segments(buf, table: FrameTable, valid: int | None, ps: int,
              pages_at: int) -> list[Segment]:
    """A :class:`LinearSegment` per PFN run stored in consecutive pages, a
    :class:`ScatteredRun` per PFN run whose pages are not."""
    if valid is not None:
        spfns, pages = table.pfns, None
        runs = _runs_ascending(spfns, valid)
    else:
        spfns, pages = _sort_unordered(table)
        runs = _runs_ascending(spfns, len(spfns))
    segs: list[Segment] = []
    for pfn, j, count in runs:
        if (pfn + count) * ps > GPA_LIMIT:
            page = j if pages is None else pages[j]
            raise BadDumpError(f"frame table entry {page}: PFN 0x{pfn:x} is beyond 2^52",
                               offset=table.offset + page * table.width)
        if pages is None:
            first = j
        else:
            first = pages[j]
            if pages[j:j + count] != array("Q", range(first, first + count)):
                segs.append(ScatteredRun(buf, ps, pages_at, pfn, count, pages, j))
                continue
        segs.append(LinearSegment(pfn * ps, count * ps, buf, pages_at + first * ps,
                                  _detail(pfn, count, first)))
    return segs


class MachineFrames:
    """MFN → PFN through ``.xen_p2m``, built on first use as runs sorted by MFN (runs of
    consecutive PFNs with consecutive MFNs: 48 for the 24,576 pages of a real 96 MiB domU)."""

    def __init__(self, table: FrameTable) -> None:
        self.table = table
        self._starts: array | None = None

    def _build(self) -> None:
        runs: list[tuple[int, int, int]] = []
        prev_p = prev_m = None
        for p, m in zip(self.table.pfns, self.table.mfns):
            if p == INVALID or m == INVALID:
                prev_p = None
                continue
            if prev_p is not None and p == prev_p + 1 and m == prev_m + 1:
                mfn, pfn, count = runs[-1]
                runs[-1] = (mfn, pfn, count + 1)
            else:
                runs.append((m, p, 1))
            prev_p, prev_m = p, m
        runs.sort()
        self._starts = array("Q", (r[0] for r in runs))
        self._pfns = array("Q", (r[1] for r in runs))
        self._counts = array("Q", (r[2] for r in runs))

    def __call__(self, mfn: int) -> int | None:
        if self._starts is None:
            self._build()
        i = bisect.bisect_right(self._starts, mfn) - 1
        if i >= 0 and mfn - self._starts[i] < self._counts[i]:
            return self._pfns[i] + mfn - self._starts[i]
        return None


# ---------------------------------------------------------------------------------------------
# vCPU contexts


def _guest_width(version: Any | None, page_size: int, hvm: bool) -> int:
    """8 or 4: elfnote_dump_xen_version() moves ``pagesize`` 4 bytes down for a 32-bit PV guest
    ("32 bit elf file format differs in pagesize's alignment"); HVM contexts are 64-bit."""
    if hvm or version is None:
        return 8
    if version.pagesize == page_size:
        return 8
    if version.pagesize == 0 and version.virt_start >> 32 == page_size:
        return 4
    return 8


def _cr3_frame(value: int, width: int) -> int:
    """xen_cr3_to_pfn(): 64-bit ``cr3 >> 12``; a 32-bit PV guest's CR3 has its frame number
    rotated left by 20 (``cr3 >> 12 | cr3 << 20``, 32-bit) to reach frames above 4 GiB."""
    if width == 8:
        return value >> 12
    return ((value >> 12) | (value << 20)) & 0xFFFFFFFF


def _vcpus(buf, sh, count: int, width: int,
           frame_to_gpa: MachineFrames | None) -> tuple[list[dict[str, Any]], list[CpuState]]:
    records, cpus = [], []
    ctx = CTX_X86_64 if width == 8 else CTX_X86_32
    stride = sh.sh_entsize or CTX_SLOT
    if stride < ctx.sizeof():
        raise BadDumpError(f"{SEC_PRSTATUS} entries of {stride} bytes cannot hold a "
                           f"{ctx.sizeof()}-byte vcpu_guest_context", offset=sh.sh_offset)
    count = min(count, sh.sh_size // stride)
    for i in range(count):
        c = parse(ctx, buf, sh.sh_offset + i * stride, f"vcpu_guest_context {i}")
        cr = list(c.ctrlreg)
        rec: dict[str, Any] = {
            "index": i,
            "flags": [name for bit, name in VGCF.items() if c.flags >> bit & 1],
            "rip": f"0x{c.rip:x}", "cs": f"0x{c.cs:x}", "rflags": f"0x{c.rflags:x}",
            "rsp": f"0x{c.rsp:x}", "cr0": f"0x{cr[0]:x}", "cr3": f"0x{cr[3]:x}",
            "cr4": f"0x{cr[4]:x}",
        }
        if frame_to_gpa is None:  # HVM: CR3 holds a guest-physical address
            cr3 = cr[3]
        else:
            # arch_get_info_guest(): ctrlreg[3] = xen_pfn_to_cr3(MFN of guest_table), and for a
            # 64-bit guest ctrlreg[1] the same for guest_table_user.
            mfn = _cr3_frame(cr[3], width)
            cr3 = mfn << 12
            pfn = frame_to_gpa(mfn)
            rec["cr3_mfn"] = f"0x{mfn:x}"
            rec["cr3_pfn"] = None if pfn is None else f"0x{pfn:x}"
            if width == 8:
                rec["user_cr3"] = f"0x{cr[1]:x}"
        records.append(rec)
        source = SEC_PRSTATUS if frame_to_gpa is None else \
            f"{SEC_PRSTATUS} (PV: CR3 holds a machine frame; see frame_to_gpa)"
        cpus.append(CpuState(i, cr0=cr[0], cr3=cr3, cr4=cr[4], efer=None, source=source))
    return records, cpus


# ---------------------------------------------------------------------------------------------
# Opening


def _header(notes) -> Any:
    for name, ntype, desc in notes:
        if name == "Xen" and ntype == NOTE_HEADER:
            if len(desc) < HEADER_DESC.sizeof():
                raise BadDumpError(f"{SEC_NOTE} header note of {len(desc)} bytes, expected 32")
            return HEADER_DESC.parse(desc)
    raise BadDumpError(f"xl dump-core file without a header note in {SEC_NOTE}")


def load(mapped: MappedFile, base: int = 0) -> Dump:
    buf = source.of(mapped)
    if not sniff(buf):
        raise BadDumpError("not an xl dump-core file (no little-endian ELF64 core with "
                           f"{SEC_PAGES} and {SEC_P2M} or {SEC_PFN} sections)", offset=0)
    eh, headers = _sections(buf)
    cut = _strtab_cut(buf, eh, headers)
    if cut is not None:
        raise BadDumpError(f"the section names end at 0x{cut:x}, past the end of the file at "
                           f"0x{len(buf):x}: truncated xl dump-core (xl writes them last)",
                           offset=eh.e_shoff)
    sections = dict(headers)
    note_sh = _section(buf, sections, SEC_NOTE)
    notes = parse_notes(buf, note_sh.sh_offset, note_sh.sh_size, True, SEC_NOTE)
    h = _header(notes)
    if h.xch_magic not in (XC_CORE_MAGIC, XC_CORE_MAGIC_HVM):
        raise BadDumpError(f"{SEC_NOTE} header magic 0x{h.xch_magic:x} is neither "
                           f"0x{XC_CORE_MAGIC:x} (PV) nor 0x{XC_CORE_MAGIC_HVM:x} (HVM)",
                           offset=note_sh.sh_offset)
    ps = h.xch_page_size
    if not (1024 <= ps <= 1 << 16 and ps & (ps - 1) == 0):
        raise BadDumpError(f"{SEC_NOTE} header: page size {ps} is not a power of two from 1 KiB "
                           "to 64 KiB", offset=note_sh.sh_offset)
    pv = SEC_P2M in sections
    if not pv and SEC_PFN not in sections:
        raise BadDumpError(f"xl dump-core file with neither {SEC_P2M} nor {SEC_PFN}")
    table_sh = _section(buf, sections, SEC_P2M if pv else SEC_PFN)
    pages_sh = _section(buf, sections, SEC_PAGES)
    nr = h.xch_nr_pages
    if pages_sh.sh_size < nr * ps:
        raise BadDumpError(f"{SEC_PAGES} holds {pages_sh.sh_size // ps} pages, the header says "
                           f"{nr}", offset=pages_sh.sh_offset)
    table = FrameTable(buf, table_sh, nr, pv)

    valid = _ascending_prefix(table.pfns)
    segs = _segments(buf, table, valid, ps, pages_sh.sh_offset)
    frame_to_gpa = MachineFrames(table) if pv else None
    padding = sum(1 for p in table.pfns if p == INVALID) if valid is None else nr - valid

    versions = {t: d for name, t, d in notes if name == "Xen"}
    version = (XEN_VERSION_DESC.parse(versions[NOTE_XEN_VERSION])
               if len(versions.get(NOTE_XEN_VERSION, b"")) >= XEN_VERSION_DESC.sizeof() else None)
    hvm = h.xch_magic == XC_CORE_MAGIC_HVM
    width = _guest_width(version, ps, hvm)
    prstatus = _section(buf, sections, SEC_PRSTATUS, required=False)
    # vcpu_guest_context is per architecture: only x86's is declared here (an Arm dump-core's
    # pages and table read the same, its contexts are left out rather than misread).
    x86 = eh.e_machine in (EM_386, EM_X86_64)
    records, cpus = (_vcpus(buf, prstatus, h.xch_nr_vcpus, width, frame_to_gpa)
                     if prstatus is not None and x86 else ([], []))

    fmt = versions.get(NOTE_FORMAT_VERSION, b"")
    details: dict[str, Any] = {
        "guest": "HVM" if hvm else "PV",
        "guest_width": f"{width * 8}-bit",
        "machine": MACHINES.get(eh.e_machine, f"e_machine {eh.e_machine}"),
        "nr_pages": nr,
        "pfn_table": SEC_P2M if pv else SEC_PFN,
        "pfn_order": "ascending" if valid is not None else "unordered",
        "padding_pages": padding,
        "sections": {name: {"offset": sh.sh_offset, "size": sh.sh_size}
                     for name, sh in sections.items() if name},
    }
    if len(fmt) >= 8:
        v = int.from_bytes(fmt[:8], "little")
        details["format_version"] = f"{v >> 32}.{v & 0xFFFFFFFF}"
    if version is not None:
        details["xen_version"] = (f"{version.major_version}.{version.minor_version}"
                                  f"{_text(version.extra_version)}")
        details["xen_capabilities"] = _text(version.capabilities).strip()
        if _text(version.changeset):
            details["xen_changeset"] = _text(version.changeset)
    details["vcpus"] = h.xch_nr_vcpus
    if records:
        details["vcpu_contexts"] = records
    return Dump(mapped.name, "xen-core", AddressSpace(segs, ps), mapped,
                "HVM" if hvm else "PV", details, cpus=tuple(cpus), frame_to_gpa=frame_to_gpa)
