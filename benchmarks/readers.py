"""The dump readers' bulk path (what ``scan`` streams a dump through) against references.

For each case it times, in a fresh process each and side by side in one run:

* **read**: xenrs reading every readable byte of the dump the way ``scan`` does
  (``scan_windows.streams``/``windows``: ``Segment.read_into`` into one reused buffer, kdump
  pages decompressed on every core), with one ``np.count_nonzero`` per window so that the bytes
  are really looked at;
* **scan**: ``xenrs scan --format json`` (the readers plus ``scan``'s candidate rules);
* **reference**: for kdump, libkdumpfile (Debian ``python3-libkdumpfile``, run by the system
  ``/usr/bin/python3``) reading every dumped page of the *plain* file with the same pages
  (its page map walked with ``find_set``/``find_clear``); for raw and ELF, one numpy pass
  (``np.count_nonzero`` over a ``uint64`` view of the mapped file);

and prints the best of ``--runs`` times of each, ``reference / time`` (above 1: faster than the reference) and each
process's peak resident set (``wait4``'s ``ru_maxrss``). Cases: the real Xen dumps of
``tests/realxen.py`` (``p2.kdump-zlib.kdump`` plain, ``p1.kdump-zlib.flat`` flattened,
``p1.elf``); 256 MiB of random pages as raw and ELF; and all of ``p1.elf``'s memory rewritten by
the tests' independent writer as a kdump with each codec, plain and flattened.

    python benchmarks/readers.py [--no-scan] [--only SUBSTRING]

All files are read once before timing, so every case runs from the page cache.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

SYSTEM_PYTHON = "/usr/bin/python3"
PAGE = 4096

READ_ALL = r"""
import sys
import numpy as np
from xenrs_cli.dumps import open_dump
from xenrs_cli.scan import ScanStats
from xenrs_cli.scan_windows import streams, windows
with open_dump(sys.argv[1]) as d:
    for s in streams(d.space.runs(0, d.space.end), ScanStats(), lambda n: None):
        for gpa, core, buf in windows(s, 16 << 20):
            np.count_nonzero(np.frombuffer(buf, dtype=np.uint64, count=len(buf) // 8))
"""

NUMPY_PASS = r"""
import mmap, sys
import numpy as np
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    a = np.frombuffer(m, dtype=np.uint64, count=len(m) // 8)
    np.count_nonzero(a)
    del a
    m.close()
"""

LIBKDUMPFILE_READ_ALL = r"""
import sys, kdumpfile
k = kdumpfile.kdumpfile(sys.argv[1])
bm, read, space = k.attr["file.pagemap"], k.read, kdumpfile.KDUMP_MACHPHYSADDR
end, pfn = int(k.attr["max_pfn"]), 0
while pfn < end:
    try:
        s = bm.find_set(pfn)
    except Exception:
        break
    try:
        e = min(bm.find_clear(s), end)
    except Exception:
        e = end
    for p in range(s, e):
        read(space, p * 4096, 4096)
    pfn = e
"""


def run(cmd: list[str], quiet: bool = False) -> tuple[float, int]:
    """Wall time and peak RSS (bytes) of one process. (The files are made by a child process,
    so this one stays small: a fork's peak RSS counts its parent's pages until exec.)"""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL if quiet else None)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"{cmd} failed")
    return dt, usage.ru_maxrss * 1024


RUNS = [3]


def best(cmd: list[str], quiet: bool = False) -> tuple[float, int]:
    """The fastest of ``RUNS`` runs (the machine is shared: the minimum is the least noisy)."""
    return min(run(cmd, quiet) for _ in range(RUNS[0]))


def python_run(code: str, *args: str, python: str = sys.executable) -> tuple[float, int]:
    return best([python, "-c", code, *args])


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def make_random(tmp: str) -> tuple[str, str]:
    from dumpwriter import Load, elf_core

    data = os.urandom(256 << 20)
    raw = os.path.join(tmp, "random.raw")
    with open(raw, "wb") as f:
        f.write(data)
    elf = os.path.join(tmp, "random.elf")
    with open(elf, "wb") as f:
        f.write(elf_core([Load(0x100000, data)]))
    return raw, elf


def make_codecs(tmp: str, source_elf: str) -> list[tuple[str, str, str]]:
    """``(codec, plain path, flattened path)``: all of ``p1.elf``'s memory (400 MiB, its zero
    pages shared as QEMU writes them) rewritten by the tests' writer with each codec."""
    from dumpwriter import Kdump, flatten, kdump_file

    from xenrs_cli.dumps import open_dump

    pages, in_map = {}, []
    with open_dump(source_elf) as d:
        for seg in d.space.segments:
            base, n = seg.gpa // PAGE, seg.size // PAGE
            in_map.append((base, base + n))
            for lo in range(0, n, 4096):
                blob = seg.read_span(lo * PAGE, min(4096, n - lo) * PAGE)
                for i in range(len(blob) // PAGE):
                    pages[base + lo + i] = blob[i * PAGE:(i + 1) * PAGE]
    out = []
    for codec in ("zlib", "lzo", "snappy", "zstd"):
        k = Kdump(max(pages) + 1, in_map, pages, codec=codec)
        plain = kdump_file(k)
        p = os.path.join(tmp, f"real.{codec}.kdump")
        with open(p, "wb") as f:
            f.write(plain)
        fl = os.path.join(tmp, f"real.{codec}.flat")
        with open(fl, "wb") as f:
            f.write(flatten(plain, chunk=16 << 10, seed=None))
        out.append((codec, p, fl))
        del plain
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-scan", action="store_true", help="time the readers only")
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    ap.add_argument("--runs", type=int, default=3, help="runs per measurement (the best is kept)")
    ap.add_argument("--align1", action="store_true", help="also time scan --align 1")
    ap.add_argument("--make", help=argparse.SUPPRESS)  # internal: make the files in DIR
    args = ap.parse_args()
    RUNS[0] = args.runs
    if args.make:
        import realxen

        make_random(args.make)
        make_codecs(args.make, str(realxen.path("p1.elf")))
        return
    import realxen
    from timing import xenrs_command

    xenrs = xenrs_command()
    have_lkdf = subprocess.run([SYSTEM_PYTHON, "-c", "import kdumpfile"],
                               capture_output=True).returncode == 0
    tmp = tempfile.mkdtemp(prefix="xenrs-bench-")
    real_elf = str(realxen.path("p1.elf"))
    p2_plain = str(realxen.path("p2.kdump-zlib.kdump"))
    cases = [  # (name, path, reference kind, reference path)
        ("real p2 kdump plain zlib", p2_plain, "kdump", p2_plain),
        # QEMU's p1 stream has no plain twin; p2's plain file holds the same machine's memory
        ("real p1 kdump flattened zlib", str(realxen.path("p1.kdump-zlib.flat")), "kdump",
         p2_plain),
        ("real p1 ELF", real_elf, "numpy", real_elf),
    ]
    subprocess.run([sys.executable, os.path.abspath(__file__), "--make", tmp], check=True)
    raw, elf = os.path.join(tmp, "random.raw"), os.path.join(tmp, "random.elf")
    cases += [("random 256 MiB raw", raw, "numpy", raw), ("random 256 MiB ELF", elf, "numpy", elf)]
    for codec in ("zlib", "lzo", "snappy", "zstd"):
        plain, flat = (os.path.join(tmp, f"real.{codec}.{ext}") for ext in ("kdump", "flat"))
        cases += [(f"rewritten p1 plain {codec}", plain, "kdump", plain),
                  (f"rewritten p1 flattened {codec}", flat, "kdump", plain)]
    print(f"{'case':34} {'read s':>7} {'scan s':>7} {'align1 s':>8} {'ref s':>7} {'ref/read':>8} "
          f"{'ref/scan':>8} {'ref/align1':>10} {'read RSS':>9} {'scan RSS':>9}  reference")
    for name, path, kind, ref_path in cases:
        if args.only and args.only not in name:
            continue
        warm(path)
        warm(ref_path)
        t_read, rss_read = python_run(READ_ALL, path)
        t_scan, rss_scan = (float("nan"), 0) if args.no_scan else best(
            [*xenrs, "scan", path, "--format", "json", "--quiet"], quiet=True)
        t_one, _ = (float("nan"), 0) if args.no_scan or not args.align1 else best(
            [*xenrs, "scan", path, "--align", "1", "--format", "json", "--quiet"], quiet=True)
        if kind == "numpy":
            t_ref, _ = python_run(NUMPY_PASS, ref_path)
            ref = "one numpy pass"
        elif have_lkdf:
            t_ref, _ = python_run(LIBKDUMPFILE_READ_ALL, ref_path, python=SYSTEM_PYTHON)
            ref = "libkdumpfile read-all (plain)"
        else:
            t_ref, ref = float("nan"), "libkdumpfile not installed"
        print(f"{name:34} {t_read:7.2f} {t_scan:7.2f} {t_one:8.2f} {t_ref:7.2f} "
              f"{t_ref / t_read:8.2f} {t_ref / t_scan:8.2f} {t_ref / t_one:10.2f} "
              f"{rss_read >> 20:8d}M {rss_scan >> 20:8d}M  {ref}", flush=True)
    for f in os.listdir(tmp):
        os.unlink(os.path.join(tmp, f))
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
