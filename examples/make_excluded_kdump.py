"""Build ``examples/excluded.kdump``: a small makedumpfile kdump (zlib, dump level 1) of a guest
whose RAM is PFNs 0x10..0x1f and 0x40..0x47, with PFNs 0x13 and 0x44 excluded by the dump level.

* GPA 0x11ff1: a 64-bit runstate area (running; 5 s, 1.5 s, 0.5 s, 0; entry 7 s) crossing from
  PFN 0x11 into PFN 0x12, as the KVM selftest places it.
* GPA 0x13ff0: the README's example of a record that starts in an excluded page (0x13) and ends
  in a present one (0x14).

The file is written by the tests' own kdump writer, ``tests/dumpwriter.py`` (stdlib ``struct``,
no code shared with xenrs's readers); run this from the repository root.
"""

import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dumpwriter import Kdump, kdump_file, runstate64  # noqa: E402

PAGE = 4096
REC = runstate64(0, 7_000_000_000, (5_000_000_000, 1_500_000_000, 500_000_000, 0))


def text_page(seed: int) -> bytes:
    return (f"page {seed} ".encode() * 1000)[:PAGE]


pages = {pfn: bytes(PAGE) for pfn in list(range(0x10, 0x20)) + list(range(0x40, 0x48))}
del pages[0x13], pages[0x44]
p11, p12 = bytearray(text_page(0x11)), bytearray(text_page(0x12))
p11[-15:] = REC[:15]
p12[:33] = REC[15:]
pages[0x11], pages[0x12] = bytes(p11), bytes(p12)
pages[0x15] = random.Random(0x15).randbytes(PAGE)  # incompressible: stored as-is
pages[0x16] = text_page(0x16)
data = kdump_file(Kdump(max_mapnr=0x50, in_map=[(0x10, 0x20), (0x40, 0x48)], pages=pages))
out = pathlib.Path(__file__).with_name("excluded.kdump")
out.write_bytes(data)
print(f"wrote {out} ({len(data)} bytes)")
