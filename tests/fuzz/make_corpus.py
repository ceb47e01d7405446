"""Seed corpus for ``fuzz_xenrs.py``: small dumps of every format from the independent writer
(``tests/dumpwriter.py``), each prefixed with every target byte.

    python tests/fuzz/make_corpus.py DIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from dumpwriter import (PAGE, Kdump, Load, Note, elf_core, flatten, kdump_file,  # noqa: E402
                        runstate64, runstate_compat)


def seeds() -> dict[str, bytes]:
    rec = runstate64(1, 10**12, (10**12 - 30, 10, 10, 10))
    page = bytearray(PAGE)
    page[PAGE - 24:] = rec[:24]
    nxt = bytearray(PAGE)
    nxt[:24] = rec[24:]
    page2 = bytearray(PAGE)
    page2[100:144] = runstate_compat(2, 5 * 10**9, (10**9,) * 4 + ())[:44]
    out = {"raw": bytes(page) + bytes(nxt) + bytes(page2)}
    loads = [Load(0x1000, bytes(page)), Load(0x2000, bytes(nxt), memsz=2 * PAGE),
             Load(0x10000, bytes(page2)[:100])]
    notes = [Note(b"CORE", 1, bytes(336)), Note(b"VMCOREINFO", 0, b"OSRELEASE=6.1\n")]
    out["elf-qemu"] = elf_core(loads, notes)
    out["elf-classic"] = elf_core(loads, notes, qemu_layout=False)
    out["elf32"] = elf_core(loads[:2], elf64=False)
    out["elf-xnum"] = elf_core(loads, pn_xnum=True)
    pages = {0x10: bytes(page), 0x11: bytes(nxt), 0x12: bytes(PAGE), 0x20: bytes(page2)}
    for codec in (None, "zlib", "lzo", "snappy", "zstd"):
        k = Kdump(0x40, [(0x10, 0x18), (0x20, 0x22)], pages, codec=codec,
                  notes=notes, vmcoreinfo=b"OSRELEASE=6.1\n")
        plain = kdump_file(k)
        out[f"kdump-{codec}"] = plain
        out[f"flat-{codec}"] = flatten(plain, chunk=4096)
    out["kdump-32"] = kdump_file(Kdump(0x40, [(0x10, 0x13)], {0x10: bytes(page)},
                                       header64=False, header_version=1))
    return out


def main() -> None:
    target = sys.argv[1]
    os.makedirs(target, exist_ok=True)
    for name, data in seeds().items():
        for t in range(8):
            with open(os.path.join(target, f"{name}-{t}"), "wb") as f:
                f.write(bytes([t]) + data)


if __name__ == "__main__":
    main()
