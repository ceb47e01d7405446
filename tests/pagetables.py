"""An independent writer of x86 page tables for the tests: builds a guest's physical memory with
tables that map chosen virtual pages, for every paging mode and page size.

Shares nothing with ``xenrs_cli.paging``: the formats are written out here from the Intel SDM
vol. 3A ch. 4 (figures 4-4 32-bit, 4-7 PAE, 4-11 4-level; 5-level adds a PML5 above), so a
mistake in the walker cannot be repeated here by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE = 4096
PRESENT, WRITABLE, LARGE = 0x1, 0x2, 0x80
K4, M2, M4, G1 = 1 << 12, 1 << 21, 1 << 22, 1 << 30

# mode -> [(entry name, lowest VA bit of the index, highest VA bit, entry bytes, leaf sizes)]
GEOMETRY = {
    "5": [("PML5E", 48, 56, 8, ()), ("PML4E", 39, 47, 8, ()), ("PDPTE", 30, 38, 8, (G1,)),
          ("PDE", 21, 29, 8, (M2,)), ("PTE", 12, 20, 8, (K4,))],
    "4": [("PML4E", 39, 47, 8, ()), ("PDPTE", 30, 38, 8, (G1,)), ("PDE", 21, 29, 8, (M2,)),
          ("PTE", 12, 20, 8, (K4,))],
    "pae": [("PDPTE", 30, 31, 8, ()), ("PDE", 21, 29, 8, (M2,)), ("PTE", 12, 20, 8, (K4,))],
    "32": [("PDE", 22, 31, 4, (M4,)), ("PTE", 12, 21, 4, (K4,))],
}
LEVEL_SIZE = {"PDPTE": G1, "PTE": K4}


@dataclass
class Memory:
    """Sparse guest-physical memory: frame number → 4 KiB page."""

    pages: dict[int, bytearray] = field(default_factory=dict)

    def write(self, gpa: int, data: bytes) -> None:
        for i, b in enumerate(data):
            a = gpa + i
            self.pages.setdefault(a // PAGE, bytearray(PAGE))[a % PAGE] = b

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.pages.get((gpa + i) // PAGE, bytes(PAGE))[(gpa + i) % PAGE]
                     for i in range(n))

    def image(self, size: int) -> bytes:
        """A raw image of GPA ``[0, size)``."""
        out = bytearray(size)
        for pfn, page in self.pages.items():
            if pfn * PAGE < size:
                out[pfn * PAGE:pfn * PAGE + PAGE] = page[:size - pfn * PAGE]
        return bytes(out)


class Tables:
    """Page tables of one mode in ``mem``; table pages are taken from frame ``first_pfn`` up.

    ``frame_of`` maps a GPA frame to the number written into entries and CR3 (identity, or a
    PV guest's machine frames)."""

    def __init__(self, mem: Memory, mode: str, first_pfn: int, frame_of=lambda f: f) -> None:
        self.mem, self.mode, self.frame_of = mem, mode, frame_of
        self.geometry = GEOMETRY[mode]
        self.next_pfn = first_pfn
        # PAE's PDPT is 32 bytes, 32-byte aligned: put it off a page start to test CR3 masking
        self.root = self._new_table() + (0x60 if mode == "pae" else 0)
        self.tables: dict[tuple[int, int], int] = {(0, 0): self.root}  # (depth, VA prefix)

    def _new_table(self) -> int:
        gpa = self.next_pfn * PAGE
        self.next_pfn += 1
        self.mem.write(gpa, bytes(PAGE))
        return gpa

    @property
    def cr3(self) -> int:
        return self.frame_of(self.root // PAGE) * PAGE + self.root % PAGE

    def _linear(self, va: int) -> int:
        """The VA bits the tables index (the sign-extension above them dropped)."""
        return va & ((1 << (self.geometry[0][2] + 1)) - 1)

    def _slot(self, depth: int, va: int) -> tuple[int, int]:
        """GPA of the entry for ``va`` at ``depth`` (its table must exist), and its size."""
        name, lo, hi, size, _ = self.geometry[depth]
        va = self._linear(va)
        index = (va >> lo) & ((1 << (hi - lo + 1)) - 1)
        prefix = va >> (hi + 1)
        return self.tables[(depth, prefix)] + index * size, size

    def entry_gpa(self, va: int, name: str) -> int:
        depth = [g[0] for g in self.geometry].index(name)
        return self._slot(depth, va)[0]

    def put(self, va: int, name: str, value: int) -> None:
        gpa, size = self._slot([g[0] for g in self.geometry].index(name), va)
        self.mem.write(gpa, value.to_bytes(size, "little"))

    def get(self, va: int, name: str) -> int:
        gpa, size = self._slot([g[0] for g in self.geometry].index(name), va)
        return int.from_bytes(self.mem.read(gpa, size), "little")

    def map(self, va: int, gpa: int, page_size: int = K4) -> None:
        """Map the page of ``page_size`` at ``va`` (aligned) to ``gpa`` (aligned)."""
        assert va % page_size == 0 and gpa % page_size == 0
        for depth, (name, lo, hi, esize, leaves) in enumerate(self.geometry):
            slot, _ = self._slot(depth, va)
            if page_size in leaves:
                frame = self.frame_of(gpa // PAGE)
                if page_size == M4:  # PDE of a 4 MiB page: PA 31:22 in 31:22, PA 39:32 in 20:13
                    value = (frame << 12) & 0xFFC0_0000 | ((frame << 12) >> 32 & 0xFF) << 13
                else:
                    value = frame << 12
                flags = PRESENT | WRITABLE | (LARGE if page_size != K4 else 0)
                self.mem.write(slot, (value | flags).to_bytes(esize, "little"))
                return
            key = (depth + 1, self._linear(va) >> lo)
            if key not in self.tables:
                table = self._new_table()
                self.tables[key] = table
                # a PAE PDPTE has no R/W bit (bits 2:1 are reserved): present only
                flags = PRESENT if self.mode == "pae" and depth == 0 else PRESENT | WRITABLE
                value = self.frame_of(table // PAGE) << 12 | flags
                self.mem.write(slot, value.to_bytes(esize, "little"))
        raise AssertionError(f"{page_size:#x} pages do not exist in mode {self.mode}")
