"""x86 page-table walks over a dump's address space (SPEC §8): guest virtual → guest physical.

The walk follows the Intel SDM vol. 3A ch. 4 (4.3 32-bit, 4.4 PAE, 4.5 4- and 5-level paging)
as QEMU's ``mmu_translate()`` (target/i386/tcg/sysemu/excp_helper.c) and Linux's
``lookup_address()`` do: an index per level taken from the VA, one entry read per level, a
large page where an entry with PS set ends the walk early (1 GiB at a PDPTE, 2 MiB or 4 MiB at a
PDE). Every entry is read through :meth:`AddressSpace.read`, so a table page that the dump lacks
is reported with its provenance instead of being read as zeros.

Access rights (R/W, U/S, NX, protection keys) do not matter to a reader of memory and are not
checked. Reserved bits that make an entry meaningless are: the low address bits of a large
page (SDM tables 4-15..4-19 "must be 0") and the reserved bits of a PAE PDPTE (table 4-8).

``frame_to_gpa``: where the tables hold frame numbers of another space (a PV guest's tables hold
machine frames; an ``xl dump-core`` is indexed by pseudo-physical frame), every frame read from
CR3 or from an entry is passed through it before it is used as a GPA.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xenrs_cli.address_space import AddressSpace, Status
from xenrs_cli.cpu_state import CpuState
from xenrs_cli.errors import (BadVirtualAddressError, PageNotPresentError, PageWalkError,
                              UsageError)

PAGE_SHIFT = 12
PAGE_4K = 1 << PAGE_SHIFT
MODES = ("4", "5", "pae", "32")
MODE_NAMES = {"4": "4-level", "5": "5-level", "pae": "PAE", "32": "32-bit"}
DEFAULT_MODE = "4"  # SPEC §8: without CPU state or --paging

# Entry bits (SDM 4.3-4.5): present, page size (large page).
P, PS = 1 << 0, 1 << 7
ADDR_64 = ((1 << 52) - 1) & ~(PAGE_4K - 1)  # bits 51:12 of a 64-bit entry (MAXPHYADDR 52)
PAE_PDPTE_RESERVED = 0b110 | 0b1111 << 5    # bits 2:1 and 8:5 of a PAE PDPTE (SDM table 4-8)
# Control-register bits (SDM 2.5): CR0.PG, CR4.PSE, CR4.PAE, CR4.LA57, EFER.LMA.
CR0_PG = 1 << 31
CR4_PSE, CR4_PAE, CR4_LA57 = 1 << 4, 1 << 5, 1 << 12
EFER_LMA = 1 << 10


@dataclass(frozen=True, slots=True)
class Level:
    """One level of a paging mode: the entry's name, the VA bits that index it, entry size, and
    the size of the page an entry with PS set maps here (0: PS is not a large page here)."""

    name: str
    shift: int
    bits: int
    entry_size: int
    large: int = 0


_LEVELS: dict[str, tuple[Level, ...]] = {
    "5": (Level("PML5E", 48, 9, 8), Level("PML4E", 39, 9, 8), Level("PDPTE", 30, 9, 8, 1 << 30),
          Level("PDE", 21, 9, 8, 1 << 21), Level("PTE", 12, 9, 8)),
    "4": (Level("PML4E", 39, 9, 8), Level("PDPTE", 30, 9, 8, 1 << 30),
          Level("PDE", 21, 9, 8, 1 << 21), Level("PTE", 12, 9, 8)),
    # PAE: CR3 points at 4 PDPTEs (32-byte aligned), which have no PS bit.
    "pae": (Level("PDPTE", 30, 2, 8), Level("PDE", 21, 9, 8, 1 << 21), Level("PTE", 12, 9, 8)),
    "32": (Level("PDE", 22, 10, 4, 1 << 22), Level("PTE", 12, 10, 4)),
}


def mode_of(cpu: CpuState) -> str | None:
    """The paging mode a vCPU's control registers select (SDM 4.1.1), ``"off"`` when CR0.PG is
    clear, ``None`` when the dump lacks a register that decides it."""
    if cpu.cr0 is None or cpu.cr4 is None:
        return None
    if not cpu.cr0 & CR0_PG:
        return "off"
    if not cpu.cr4 & CR4_PAE:
        return "32"
    if cpu.efer is None:
        # Without EFER, LA57 can only mean 5-level paging (it is ignored outside long mode,
        # and no 32-bit kernel sets it); 4-level and PAE cannot be told apart.
        return "5" if cpu.cr4 & CR4_LA57 else None
    if cpu.efer & EFER_LMA:
        return "5" if cpu.cr4 & CR4_LA57 else "4"
    return "pae"


@dataclass(frozen=True, slots=True)
class Span:
    """``len`` bytes at virtual ``va`` that lie at guest-physical ``gpa``."""

    va: int
    gpa: int
    len: int


class PageWalker:
    """Translates virtual addresses through the page tables rooted at ``cr3``."""

    def __init__(self, space: AddressSpace, cr3: int, mode: str = DEFAULT_MODE, *,
                 pse: bool = True,
                 frame_to_gpa: Callable[[int], int | None] | None = None) -> None:
        if mode not in _LEVELS:
            raise UsageError(f"unknown paging mode {mode!r} (choose from {', '.join(MODES)})")
        self.space, self.cr3, self.mode, self.pse = space, cr3, mode, pse
        self.levels = _LEVELS[mode]
        self._frame_to_gpa = frame_to_gpa

    # -- the root ---------------------------------------------------------------------------

    def _root(self, va: int) -> int:
        """GPA of the top table: CR3 bits 51:12 (4/5-level, PCID in 11:0), 31:5 (PAE), 31:12."""
        if self.mode == "pae":
            base = self.cr3 & 0xFFFF_FFE0
        elif self.mode == "32":
            base = self.cr3 & 0xFFFF_F000
        else:
            base = self.cr3 & ADDR_64
        return self._frame(base, "CR3", None, va, None) | base & (PAGE_4K - 1)

    def _frame(self, addr: int, level: str, entry_gpa: int | None, va: int,
               entry: int | None) -> int:
        """``addr`` (the first byte of a table or of a 4 KiB page) as a GPA."""
        if self._frame_to_gpa is None:
            return addr & ~(PAGE_4K - 1)
        frame = addr >> PAGE_SHIFT
        gpa_frame = self._frame_to_gpa(frame)
        if gpa_frame is None:
            raise PageWalkError(va, level, entry_gpa if entry_gpa is not None else addr,
                                f"names frame 0x{frame:x}, which the dump's frame map "
                                "(p2m) does not hold", cr3=self.cr3, entry=entry)
        return gpa_frame << PAGE_SHIFT

    # -- one VA -------------------------------------------------------------------------------

    def check_va(self, va: int) -> None:
        if self.mode in ("pae", "32"):
            if not 0 <= va < 1 << 32:
                raise BadVirtualAddressError(va, f"does not fit in 32 bits "
                                                 f"({MODE_NAMES[self.mode]} paging)")
            return
        width = 57 if self.mode == "5" else 48
        top = va >> (width - 1)
        if not (0 <= va < 1 << 64) or top not in (0, (1 << (65 - width)) - 1):
            raise BadVirtualAddressError(va, f"is not canonical for {MODE_NAMES[self.mode]} paging "
                                             f"(bits 63:{width - 1} must be equal)")

    def _entry(self, va: int, level: Level, gpa: int) -> int:
        data, pieces = self.space.read(gpa, level.entry_size)
        bad = next((p for p in pieces if p.status is not Status.PRESENT), None)
        if bad is not None:
            raise PageWalkError(va, level.name, gpa, f"cannot be read: the table page is "
                                f"{bad.status.value} in the dump", cr3=self.cr3)
        return int.from_bytes(data, "little")

    def translate(self, va: int) -> tuple[int, int]:
        """``(gpa, page_size)``: the GPA of ``va`` and the size of the page that maps it."""
        self.check_va(va)
        table = self._root(va)
        for i, level in enumerate(self.levels):
            index = (va >> level.shift) & ((1 << level.bits) - 1)
            entry_gpa = table + index * level.entry_size
            entry = self._entry(va, level, entry_gpa)
            if not entry & P:
                raise PageNotPresentError(va, level.name, entry_gpa, "is not present",
                                          cr3=self.cr3, entry=entry)
            if self.mode == "pae" and i == 0 and entry & PAE_PDPTE_RESERVED:
                raise PageWalkError(va, level.name, entry_gpa, "has reserved bits set "
                                    "(2:1 or 8:5 of a PAE PDPTE)", cr3=self.cr3, entry=entry)
            last = i == len(self.levels) - 1
            if not last and level.large and entry & PS and (self.mode != "32" or self.pse):
                base = self._large_base(va, level, entry_gpa, entry)
                offset = va & (level.large - 1)
                page = self._frame(base + (offset & ~(PAGE_4K - 1)), level.name, entry_gpa, va,
                                   entry)
                return page | va & (PAGE_4K - 1), level.large
            addr = (entry & 0xFFFF_F000) if self.mode == "32" else entry & ADDR_64
            table = self._frame(addr, level.name, entry_gpa, va, entry)
        return table | va & (PAGE_4K - 1), PAGE_4K

    def _large_base(self, va: int, level: Level, entry_gpa: int, entry: int) -> int:
        """Physical base of the large page an entry with PS maps (SDM tables 4-4, 4-15, 4-17)."""
        if self.mode == "32":
            # 4 MiB page: PA[31:22] from bits 31:22, PA[39:32] from bits 20:13 (PSE-36/40);
            # bit 21 must be 0.
            if entry & 1 << 21:
                raise PageWalkError(va, level.name, entry_gpa, "maps a 4 MiB page with "
                                    "reserved bit 21 set", cr3=self.cr3, entry=entry)
            return (entry & 0xFFC0_0000) | ((entry >> 13) & 0xFF) << 32
        # bit 12 is PAT; bits 13 .. log2(size)-1 must be 0
        reserved = (level.large - 1) & ~((1 << 13) - 1)
        if entry & reserved:
            size = "1 GiB" if level.large == 1 << 30 else "2 MiB"
            raise PageWalkError(va, level.name, entry_gpa, f"maps a {size} page with reserved "
                                f"address bits set (bits {level.large.bit_length() - 2}:13)",
                                cr3=self.cr3, entry=entry)
        return entry & ADDR_64 & ~(level.large - 1)

    # -- a range ----------------------------------------------------------------------------

    def spans(self, va: int, size: int) -> list[Span]:
        """``[va, va+size)`` as runs of GPA-contiguous bytes, in VA order. Two virtual pages
        that map to non-adjacent GPAs give two spans (the case KVM's translate-once misses)."""
        out: list[Span] = []
        cur, end = va, va + size
        while cur < end:
            stop = min(end, (cur // PAGE_4K + 1) * PAGE_4K)
            gpa, _ = self.translate(cur)
            if out and out[-1].gpa + out[-1].len == gpa:
                last = out[-1]
                out[-1] = Span(last.va, last.gpa, last.len + stop - cur)
            else:
                out.append(Span(cur, gpa, stop - cur))
            cur = stop
        return out
