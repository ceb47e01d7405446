"""Seed corpus for ``fuzz_xenrs.py``: small dumps of every format from the independent writers
(``tests/dumpwriter.py``, ``limewriter.py``, ``migwriter.py``), each prefixed with every target
byte.

    python tests/fuzz/make_corpus.py DIR
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import limewriter  # noqa: E402
import migwriter  # noqa: E402
from dumpwriter import (PAGE, Kdump, Load, Note, XenVcpu, elf_core, flatten,  # noqa: E402
                        kdump_file, runstate64, runstate_compat, xen_core_file)


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
    # the formats added after the first campaign: LiME and AVML, xl dump-core (PV and HVM),
    # QEMU migration streams (plain, zero and compressed pages, CPU state, a libvirt header)
    ranges = [(0x1000, bytes(page) + bytes(nxt)), (0x10000, bytes(page2))]
    out["lime"] = limewriter.lime(ranges)
    out["avml"] = limewriter.avml(ranges)
    out["avml-raw"] = limewriter.avml(ranges, uncompressed=True)
    entries = [(0, 0x1000, bytes(page)), (1, 0x1001, bytes(nxt)), (4, 0x2000, bytes(page2))]
    out["xen-core-pv"] = xen_core_file(entries, [XenVcpu()])
    out["xen-core-hvm"] = xen_core_file(entries, [XenVcpu(), XenVcpu()], hvm=True, seed=1)
    cpus = [migwriter.x86_cpu(0, 0x80050033, 0x1000, 0x3406F0, 0xD01, 0x1FE8)]
    records = [("page", "pc.ram", 0x1000, bytes(page)), ("zero", "pc.ram", 0x3000),
               ("zlib", "pc.ram", 0x2000, bytes(nxt)), ("page", "pc.ram", 0x10000, bytes(page2))]
    mig, _ = migwriter.stream([("pc.ram", 0x20000)], records, devices=cpus, per_part=2)
    out["migration"] = mig
    out["migration-q35"], _ = migwriter.stream([("pc.ram", 0x20000)], records[:2],
                                               machine="pc-q35-7.2", footers=False)
    out["migration-libvirt"] = migwriter.libvirt_header(b"<domain/>") + mig
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
