"""``xenrs decode`` on a sparse kdump of a 64 GiB guest against the same record in a raw dump.

Builds, with the tests' independent writer (``tests/dumpwriter.py``), a zlib kdump of a guest
with 64 GiB of RAM (``[0, 3 GiB)`` and ``[4 GiB, 65 GiB)``: 16.6 Mi PFNs, two 2 MiB bitmaps).
8192 scattered pages (half of them incompressible) and the two pages of one page-crossing record
near the top of memory are dumped, the rest is excluded (dump level 31 style). Also the same
file flattened, and a 65 GiB sparse raw image holding the same record. It prints the median
wall time of ``xenrs decode --format json`` on each (fresh process per run), the ratios to raw
(issue #3's target: kdump <= 1.5x raw), and how much of each file the decode brought into the
page cache (``mincore`` after ``posix_fadvise(DONTNEED)``, with read-ahead off on the mapping):
the plain kdump reads its headers, both bitmaps, its descriptors and the pages asked for; a
flattened stream also reads the header of each of its records (one per <= 16 KiB).

    python benchmarks/kdump_open.py [--runs 20]
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
import time

from timing import median_time, xenrs_command

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from dumpwriter import Kdump, flatten, kdump_file, runstate64  # noqa: E402

PAGE = 4096
GIB_PFNS = (1 << 30) // PAGE
IN_MAP = [(0, 3 * GIB_PFNS), (4 * GIB_PFNS, 65 * GIB_PFNS)]
MAX_MAPNR = 65 * GIB_PFNS
GPA = (64 * GIB_PFNS + 12345) * PAGE - 15  # flag byte first in the next page, near the top
DUMPED = 8192
RECORD = runstate64(1, 5_200_000_000, (4_000_000_000, 200_000_000, 1_000_000_000, 0))


def build(tmp: str) -> dict[str, str]:
    pfn = GPA // PAGE
    first, second = bytearray(b"runstate page ".ljust(PAGE, b".")), bytearray(PAGE)
    first[-15:] = RECORD[:15]
    second[:33] = RECORD[15:]
    pages = {pfn: bytes(first), pfn + 1: bytes(second)}
    for k in range(DUMPED):  # scattered dumped pages spread over all of RAM, half of them
        p = (k * 4093 + 7) * 4 % (61 * GIB_PFNS) + 4 * GIB_PFNS  # incompressible (stored as-is)
        if p not in pages:
            pages[p] = os.urandom(PAGE) if k % 2 else (b"%d" % k).ljust(PAGE, b"\x01")
    plain = kdump_file(Kdump(max_mapnr=MAX_MAPNR, in_map=IN_MAP, pages=pages, codec="zlib",
                             dump_level=31))
    paths = {"kdump (plain)": os.path.join(tmp, "vm.kdump"),
             "kdump (flattened)": os.path.join(tmp, "vm.flat"),
             "raw": os.path.join(tmp, "vm.raw")}
    with open(paths["kdump (plain)"], "wb") as f:
        f.write(plain)
    with open(paths["kdump (flattened)"], "wb") as f:
        f.write(flatten(plain, chunk=16384, seed=1))
    with open(paths["raw"], "wb") as f:
        f.truncate(MAX_MAPNR * PAGE)
        f.seek(GPA)
        f.write(RECORD)
    return paths


# ``xenrs decode`` with kernel read-ahead turned off on the dump's mapping (MADV_RANDOM), so that
# the page cache afterwards holds what the reader touched, not the 8 MiB read-around of a fault.
PROBE = """
import mmap, sys
import xenrs_cli.files as files
_map = files._map_fd
def _map_random(name, fd, size):
    m = _map(name, fd, size)
    m.madvise(mmap.MADV_RANDOM)
    return m
files._map_fd = _map_random
from xenrs_cli.cli import main
sys.argv = ["xenrs"] + sys.argv[1:]
main()
"""


def resident_after(cmd: list[str], path: str) -> int | None:
    """Bytes of ``path`` in the page cache after running ``cmd`` on a cold file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages of the freshly written file would stay cached
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        size = os.fstat(fd).st_size
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            npages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * npages)()
            if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec) != 0:
                return None
            return bytes(vec).count(1) * PAGE  # bit 0: resident; the other bits are reserved
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    xenrs = xenrs_command()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = build(tmp)
        print(f"built in {time.perf_counter() - t0:.1f} s: 64 GiB guest, max_mapnr "
              f"{MAX_MAPNR:,} PFNs, record at GPA 0x{GPA:x}")
        times = {}
        for label, path in paths.items():
            cmd = xenrs + ["decode", path, "--gpa", hex(GPA), "--format", "json"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            assert RECORD.hex() in out, out
            times[label] = median_time(cmd, args.runs)
            probe = [sys.executable, "-c", PROBE, "decode", path, "--gpa", hex(GPA),
                     "--format", "json"]
            resident = resident_after(probe, path)
            size = os.path.getsize(path)
            touched = "" if resident is None else \
                f"  read {resident / 2**20:6.2f} MiB of {size / 2**20:6.2f} MiB"
            print(f"{label:18s} median {times[label] * 1000:7.1f} ms{touched}")
        for label in ("kdump (plain)", "kdump (flattened)"):
            print(f"{label} / raw: {times[label] / times['raw']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
