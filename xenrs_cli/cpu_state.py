"""What a dump records about each vCPU's paging state, whatever its format.

Readers fill :attr:`xenrs_cli.dumps.Dump.cpus` with one :class:`CpuState` per vCPU from what the
file holds (QEMU ELF/kdump notes, Xen ``.xen_prstatus``, a migration stream's CPU vmstate);
a register the file does not carry is ``None``. The page-table walker (SPEC §8) chooses CR3 and
the paging mode from these.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CpuState:
    """One vCPU's control registers as the dump recorded them (``None``: not in the file)."""

    index: int
    cr0: int | None = None
    cr3: int | None = None
    cr4: int | None = None
    efer: int | None = None
    source: str = ""  # where the values came from: "QEMU note", ".xen_prstatus", ...
