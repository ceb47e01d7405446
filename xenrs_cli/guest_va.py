"""Runstate areas by guest virtual address (SPEC §8): choosing the page tables, decoding through
them, and every vCPU's area from a Linux guest's symbols.

The decode itself is :func:`xenrs_cli.decode.decode_at`, unchanged: it reads from a
:class:`VirtualView`, an address space of one struct whose bytes come from wherever the page
tables put them, so its pieces carry the real GPAs and provenance of each page.

Xen translates a registered VA at every update (``update_runstate_area()``); QEMU's KVM Xen
emulation translates it once, at registration (target/i386/kvm/xen-emu.c,
``vcpuop_register_runstate_info()``: "Xen actually uses the GVA but KVM doesn't"), and KVM then
writes ``[gpa, gpa + size)`` as if it were physically contiguous. Where the two virtual pages of
a crossing area are not adjacent in GPA, KVM writes the tail where the guest does not read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from xenrs_cli.accounting import DEFAULT_HYPERVISOR
from xenrs_cli.address_space import GPA_LIMIT, AddressSpace, Piece, check_present
from xenrs_cli.cpu_state import CpuState
from xenrs_cli.decode import AUTO, Decoded, decode_at, hexaddr
from xenrs_cli.dumps import Dump
from xenrs_cli.errors import (BadVirtualAddressError, InputError, PageWalkError, UsageError)
from xenrs_cli.layouts import LAYOUTS
from xenrs_cli.paging import CR4_PSE, DEFAULT_MODE, PAGE_4K, PageWalker, Span, mode_of

MAX_CPUS = 8192  # Linux CONFIG_NR_CPUS maximum: a larger count read from a dump is corrupt


@dataclass(frozen=True, slots=True)
class Paging:
    """What the user said about the page tables: ``--cr3``, ``--cpu``, ``--paging``."""

    cr3: int | None = None
    cpu: int | None = None
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class Root:
    """The page tables one walk uses: CR3, mode, and the vCPU they came from (or ``None``)."""

    cr3: int
    mode: str
    cpu: int | None
    pse: bool = True
    source: str = "--cr3"  # where the root came from when it is no vCPU's

    @property
    def origin(self) -> str:
        """``vCPU 1``, ``--cr3`` or ``VMCOREINFO init_top_pgt`` (the record's ``cr3_from``)."""
        return f"vCPU {self.cpu}" if self.cpu is not None else self.source


def _cpu(dump: Dump, index: int) -> CpuState:
    for c in dump.cpus:
        if c.index == index:
            return c
    have = f"vCPUs 0..{len(dump.cpus) - 1}" if dump.cpus else "no vCPU state"
    raise UsageError(f"--cpu {index}: the dump records {have}")


def _pse(cpu: CpuState | None) -> bool:
    return cpu is None or cpu.cr4 is None or bool(cpu.cr4 & CR4_PSE)


def _shared_mode(dump: Dump) -> str | None:
    modes = {mode_of(c) for c in dump.cpus} - {None, "off"}
    return modes.pop() if len(modes) == 1 else None


def roots(dump: Dump, paging: Paging) -> list[Root]:
    """The page tables to try, in order (SPEC §8): ``--cr3``; else ``--cpu N``'s CR3; else
    every vCPU that has one, then the kernel's tables named by VMCOREINFO. ``--paging`` wins
    over the mode the CPU state implies."""
    if paging.cpu is not None:
        cpu = _cpu(dump, paging.cpu)
        mode = paging.mode or mode_of(cpu)
        if mode == "off":
            raise UsageError(f"vCPU {cpu.index} has paging off (CR0.PG clear): its addresses "
                             "are physical; use --gpa")
        cr3 = paging.cr3 if paging.cr3 is not None else cpu.cr3
        if cr3 is None:
            raise UsageError(f"the dump records no CR3 for vCPU {cpu.index} ({cpu.source or 'no'}"
                             " CPU state): give --cr3")
        return [Root(cr3, mode or DEFAULT_MODE, cpu.index, _pse(cpu))]
    if paging.cr3 is not None:
        return [Root(paging.cr3, paging.mode or _shared_mode(dump) or DEFAULT_MODE, None)]
    out = [Root(c.cr3, paging.mode or mode_of(c) or DEFAULT_MODE, c.index, _pse(c))
           for c in dump.cpus if c.cr3 is not None and mode_of(c) != "off"]
    kernel = _kernel_root(dump.details.get("vmcoreinfo"), paging.mode)
    if kernel is not None:
        out.append(kernel)
    if not out:
        what = (f"its {len(dump.cpus)} vCPUs' notes ({dump.cpus[0].source}) carry no CR3"
                if dump.cpus else "it records no vCPU state")
        raise UsageError(f"no page tables to translate with: {what}, nor does it have an x86-64 "
                         "VMCOREINFO; give --cr3 (and --paging)")
    return out


START_KERNEL_MAP = 0xFFFF_FFFF_8000_0000  # x86-64 __START_KERNEL_map


def _kernel_root(vmcoreinfo: str | None, mode: str | None) -> Root | None:
    """The kernel's own page tables of an x86-64 Linux guest, from VMCOREINFO, as crash and
    makedumpfile find them: ``SYMBOL(init_top_pgt)`` at ``__pa_symbol()`` = VA −
    ``__START_KERNEL_map`` + ``NUMBER(phys_base)``; 5-level if ``NUMBER(pgtable_l5_enabled)``
    (arch/x86/kernel/vmcore_info_64.c). They map every kernel address, per-CPU areas included,
    so they come after the vCPUs' CR3s (a vCPU's CR3 may be a user table, as on PV)."""
    if not vmcoreinfo:
        return None
    found = dict(line.split("=", 1) for line in vmcoreinfo.splitlines() if "=" in line)
    try:
        va = int(found["SYMBOL(init_top_pgt)"], 16)
        phys_base = int(found["NUMBER(phys_base)"])
        l5 = int(found.get("NUMBER(pgtable_l5_enabled)", "0"))
    except (KeyError, ValueError):
        return None
    pa = va - START_KERNEL_MAP + phys_base
    if not 0 <= pa < GPA_LIMIT:
        return None
    return Root(pa, mode or ("5" if l5 else "4"), None, source="VMCOREINFO init_top_pgt")


def walker(dump: Dump, root: Root) -> PageWalker:
    return PageWalker(dump.space, root.cr3, root.mode, pse=root.pse,
                      frame_to_gpa=dump.frame_to_gpa)


def translate(dump: Dump, va: int, size: int, paging: Paging) -> tuple[Root, list[Span]]:
    """The first root whose tables map all of ``[va, va+size)``, and the spans they give."""
    candidates = roots(dump, paging)
    errors: list[PageWalkError | BadVirtualAddressError] = []
    for root in candidates:
        try:
            return root, walker(dump, root).spans(va, size)
        except (PageWalkError, BadVirtualAddressError) as e:
            errors.append(e)
    first = errors[0]
    if len(candidates) == 1 or not isinstance(first, PageWalkError):
        raise first
    others = ", ".join(f"{r.origin}'s (CR3 0x{r.cr3:x})" for r in candidates[1:])
    e = type(first)(first.va, first.level, first.entry_gpa,
                    f"{first.reason} with {candidates[0].origin}'s CR3 0x{first.cr3:x}; nor do "
                    f"the page tables of {others} map it", entry=first.entry)
    e.cr3 = first.cr3
    raise e


def read_va(dump: Dump, va: int, size: int, paging: Paging) -> bytes:
    """``size`` bytes at virtual ``va``, all present (for pointers and counters the walk needs)."""
    _, spans = translate(dump, va, size, paging)
    out = bytearray()
    for s in spans:
        data, pieces = dump.space.read(s.gpa, s.len)
        check_present(pieces)
        out += data
    return bytes(out)


class VirtualView:
    """One struct's bytes as an address space: reading ``[base + k, base + k + n)`` returns the
    bytes at virtual ``va + k`` (``base`` is the GPA of the first byte), with pieces at their real
    GPAs. Only what :func:`decode_at` asks of an :class:`AddressSpace` (``read``) is offered."""

    def __init__(self, space: AddressSpace, va: int, spans: list[Span]) -> None:
        self.space, self.va, self.spans = space, va, spans
        self.base = spans[0].gpa
        self.size = sum(s.len for s in spans)

    def gpa_of(self, offset: int) -> int:
        """GPA of struct byte ``offset``."""
        for s in self.spans:
            if s.va - self.va <= offset < s.va - self.va + s.len:
                return s.gpa + offset - (s.va - self.va)
        raise ValueError(offset)

    def read(self, addr: int, size: int) -> tuple[bytes, list[Piece]]:
        lo, hi = addr - self.base, addr - self.base + size
        if lo < 0 or hi > self.size:
            raise ValueError(f"read outside the translated struct: {lo}..{hi}")
        data, pieces = bytearray(), []
        for s in self.spans:
            start = max(lo, s.va - self.va)
            stop = min(hi, s.va - self.va + s.len)
            if start >= stop:
                continue
            got, ps = self.space.read(s.gpa + start - (s.va - self.va), stop - start)
            pieces += [replace(p, offset=p.offset + start - lo) for p in ps]
            data += got
        return bytes(data), pieces


@dataclass(frozen=True, slots=True)
class VaDecoded:
    """A decode at a virtual address: the record, the tables used, and where each byte is."""

    decoded: Decoded
    va: int
    root: Root
    view: VirtualView
    vcpu: int | None = None

    @property
    def flag_byte_gpa(self) -> int:
        return self.view.gpa_of(self.decoded.layout.flag_offset)


def kvm_warning(view: VirtualView, size: int) -> str | None:
    """SPEC §8: the ``size``-byte area crosses into a virtual page that is not the next GPA
    page, so KVM's ``[gpa, gpa + size)`` is not where the guest reads it."""
    split = PAGE_4K - view.base % PAGE_4K
    if split >= size:
        return None
    tail = view.gpa_of(split)
    if tail == view.base + split:
        return None
    return (f"the area crosses a page and its two pages are not adjacent in GPA: the guest "
            f"reads bytes {split}..{size - 1} at GPA 0x{tail:x}, but KVM, which translates "
            f"the VA once at registration, would write them at GPA 0x{view.base + split:x} "
            "(gpa + split_at)")


def decode_va(dump: Dump, va: int, layout: str = AUTO, allow_missing: bool = False,
              paging: Paging = Paging(), vcpu: int | None = None,
              hypervisor: str = DEFAULT_HYPERVISOR) -> VaDecoded:
    """Decode the runstate area at virtual ``va`` (see :func:`decode_at` for the rest)."""
    size = max(lay.size for lay in LAYOUTS.values()) if layout == AUTO else LAYOUTS[layout].size
    root, spans = translate(dump, va, size, paging)
    view = VirtualView(dump.space, va, spans)
    rec = decode_at(view, view.base, layout, allow_missing,  # type: ignore[arg-type]
                    hypervisor)
    warning = kvm_warning(view, rec.layout.size)
    if warning:
        rec = replace(rec, warnings=rec.warnings + (warning,))
    return VaDecoded(rec, va, root, view, vcpu)


def va_fields(v: VaDecoded, obj: dict[str, Any]) -> dict[str, Any]:
    """The SPEC §3 record ``obj`` with SPEC §8's fields: ``vcpu`` first (``--vcpus``); ``va``,
    ``cr3``, ``paging``, ``cpu`` (whose CR3) and ``cr3_from`` after ``gpa``; the flag byte's
    real GPA."""
    out: dict[str, Any] = {}
    if v.vcpu is not None:
        out["vcpu"] = v.vcpu
    for key, value in obj.items():
        out[key] = value
        if key == "gpa":
            out["va"] = hexaddr(v.va)
            out["cr3"] = hexaddr(v.root.cr3)
            out["paging"] = v.root.mode
            out["cpu"] = v.root.cpu
            out["cr3_from"] = v.root.origin
    out["flag_byte_gpa"] = hexaddr(v.flag_byte_gpa)
    return out


# ---------------------------------------------------------------------------------------------
# decode --vcpus


@dataclass(frozen=True, slots=True)
class VcpuArea:
    """Where vCPU ``vcpu``'s area is: a VA (from symbols) or a GPA (recorded by the dump)."""

    vcpu: int
    va: int | None = None
    gpa: int | None = None


def linux_areas(dump: Dump, table, kaslr: int, cpus: int | None,
                paging: Paging) -> list[VcpuArea]:
    """``&per_cpu(xen_runstate, cpu)`` for every CPU: ``__per_cpu_offset[cpu] + xen_runstate``
    (include/asm-generic/percpu.h ``per_cpu_offset``; arch/x86/xen/time.c ``xen_runstate``)."""
    runstate = table.address("xen_runstate", kaslr)
    offsets = table.address("__per_cpu_offset", kaslr)
    mode = roots(dump, paging)[0].mode
    word = 4 if mode in ("pae", "32") else 8
    wrap = 1 << (8 * word)
    if "nr_cpu_ids" in table:
        count = int.from_bytes(read_va(dump, table.address("nr_cpu_ids", kaslr), 4, paging),
                               "little")
        if not 0 < count <= MAX_CPUS:
            raise InputError(f"nr_cpu_ids at VA 0x{table.address('nr_cpu_ids', kaslr):x} reads "
                             f"{count}, not a CPU count (wrong symbols or KASLR offset?)")
    elif cpus is not None:
        count = cpus
    elif dump.cpus or dump.details.get("vcpus"):
        count = min(len(dump.cpus) or dump.details["vcpus"], MAX_CPUS)
    else:
        raise UsageError(f"{table.path} does not name nr_cpu_ids and the dump does not say how "
                         "many vCPUs it has: give --cpus N")
    out = []
    for cpu in range(count):
        base = int.from_bytes(read_va(dump, offsets + cpu * word, word, paging), "little")
        out.append(VcpuArea(cpu, va=(base + runstate) % wrap))
    return out


def recorded_areas(dump: Dump) -> list[VcpuArea]:
    """The areas the dump itself records (a migration stream's ``xen_vcpu`` state)."""
    if not dump.registered_runstate:
        raise UsageError(f"{dump.name} does not record where the guest registered its runstate "
                         "areas (only a QEMU migration stream of a KVM Xen guest does): give "
                         "--symbols System.map (or /proc/kallsyms) of the guest's kernel")
    return [VcpuArea(v, gpa=g) for v, g in sorted(dump.registered_runstate.items())]
