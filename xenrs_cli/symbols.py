"""Linux kernel symbols from a ``System.map`` or ``/proc/kallsyms`` text, and the KASLR offset.

Both files are lines of ``ADDRESS TYPE NAME`` (kallsyms adds ``[module]`` for module symbols,
which are skipped). ``System.map`` holds link-time addresses; ``/proc/kallsyms`` holds run-time
ones, already moved by KASLR. :func:`kaslr_offset` tells them apart with VMCOREINFO when the dump
has it: ``SYMBOL(_stext)`` is the run-time address of ``_stext`` (kernel/vmcore_info.c,
``VMCOREINFO_SYMBOL(_stext)``), so its distance from the file's ``_stext`` is the offset to add
(0 for a kallsyms text); without ``_stext`` in the file, ``KERNELOFFSET`` (``kaslr_offset()``).

x86-64 per-CPU symbols before Linux 6.15 are offsets into a zero-based per-CPU section
(``xen_runstate`` = 0x2f040) that KASLR does not move; only symbols at or above the kernel's
``_text`` (or ``_stext``) are relocated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xenrs_cli.errors import UsageError

# A 32-bit kernel's image starts at PAGE_OFFSET + 16 MiB at the lowest (VMSPLIT_1G: 0x40000000);
# with neither _text nor _stext named, anything below 1 GiB is taken for a per-CPU offset.
FALLBACK_KERNEL_START = 0x4000_0000
_LINE = re.compile(r"^([0-9a-fA-F]{1,16})\s+([A-Za-z?-])\s+(\S+)(\s+\[\S+\])?\s*$")
_VMCOREINFO_STEXT = re.compile(r"^SYMBOL\(_stext\)=([0-9a-fA-F]+)\s*$", re.M)
_VMCOREINFO_OFFSET = re.compile(r"^KERNELOFFSET=([0-9a-fA-F]+)\s*$", re.M)


@dataclass(frozen=True, slots=True)
class SymbolTable:
    """Kernel symbols as the file gives them (``name`` → address) and where it came from."""

    path: str
    addresses: dict[str, int]

    def __contains__(self, name: str) -> bool:
        return name in self.addresses

    @property
    def kernel_start(self) -> int:
        for name in ("_text", "_stext"):
            if name in self.addresses:
                return self.addresses[name]
        return FALLBACK_KERNEL_START

    def address(self, name: str, kaslr: int = 0) -> int:
        """The run-time value of ``name``: moved by ``kaslr`` unless it is a per-CPU offset."""
        if name not in self.addresses:
            raise UsageError(f"{self.path} does not name {name} (is it the System.map or "
                             "/proc/kallsyms of this guest's kernel?)")
        value = self.addresses[name]
        if value >= self.kernel_start:
            value = (value + kaslr) % (1 << 64)
        return value


def parse_symbols(text: str, path: str) -> SymbolTable:
    """Kernel symbols of a ``System.map`` / ``/proc/kallsyms`` text (first definition wins)."""
    addresses: dict[str, int] = {}
    nonzero = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if m is None:
            raise UsageError(f"{path}: line {lineno} is not 'ADDRESS TYPE NAME' (a System.map "
                             "or /proc/kallsyms text): " + repr(line[:60]))
        if m.group(4):  # a module's symbol
            continue
        value = int(m.group(1), 16)
        nonzero |= value != 0
        addresses.setdefault(m.group(3), value)
    if not addresses:
        raise UsageError(f"{path}: no kernel symbols in it")
    if not nonzero:
        # kernel/kallsyms.c prints 0 for every address unless kallsyms_show_value() allows it
        raise UsageError(f"{path}: every address is 0: /proc/kallsyms was read without the "
                         "right to see addresses (read it as root, kernel.kptr_restrict)")
    return SymbolTable(path, addresses)


def read_symbols(path: str) -> SymbolTable:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64 << 20)  # a System.map is a few MiB; never more than 64 MiB
    except OSError as e:
        raise UsageError(f"--symbols {path}: {e.strerror or e}") from None
    return parse_symbols(text, path)


def kaslr_offset(table: SymbolTable, vmcoreinfo: str | None) -> tuple[int, str]:
    """The offset to add to the file's kernel addresses, and where it came from."""
    if vmcoreinfo:
        m = _VMCOREINFO_STEXT.search(vmcoreinfo)
        if m and "_stext" in table:
            off = (int(m.group(1), 16) - table.addresses["_stext"]) % (1 << 64)
            return off, "VMCOREINFO SYMBOL(_stext)"
        m = _VMCOREINFO_OFFSET.search(vmcoreinfo)
        if m:
            return int(m.group(1), 16), "VMCOREINFO KERNELOFFSET"
    return 0, "none (the dump has no VMCOREINFO)"
