"""Throughput of ``xenrs scan`` against its references, on sparse, dense and real memory.

First the sparse case below; then (unless ``--sparse-only``) every dense and real case of
``benchmarks/readers.py`` — the real Xen dumps (ELF, plain and flattened kdump), 256 MiB of
random pages as raw and ELF, and all of p1.elf's real memory as a kdump with each codec, plain and
flattened — with ``scan``, ``scan --align 1``, the reference (one numpy pass, or libkdumpfile
reading every page of the plain file), their ratios and peak RSS.

Makes a sparse 2 GiB raw dump (zero pages, 0.5 % random pages, planted 64-bit and compat
records, some crossing pages), then in one run times: the reference pass (``np.count_nonzero``
on a uint64 view of the mapping: the least any scan must do), ``scan`` with the default
alignments (both layouts), and ``scan --align 1``. Each is run after a warm-up read, so all
three see the file in the page cache. Peak memory is the scanning process's peak resident set
(``VmHWM``: heap, numpy buffers and the mapped dump pages it holds), one child process per scan.

    python benchmarks/scan.py [--size-gib 2] [--keep PATH]

Targets (issue #6): default scan >= 0.25x the reference pass, --align 1 >= 0.5 GB/s, peak RSS
< 300 MB whatever the dump size.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import subprocess
import sys
import tempfile
import time

PAGE = 4096


def make_dump(path: str, size: int, seed: int = 6) -> list[tuple[int, str]]:
    """Sparse file: random pages and planted records; returns the planted (gpa, layout)."""
    from xenrs_cli.layouts import LAYOUTS, RunstateInfo, encode

    rng = random.Random(seed)
    planted = []
    with open(path, "wb") as f:
        f.truncate(size)
        pages = size // PAGE
        for p in rng.sample(range(pages), pages // 200):  # 0.5 % random pages
            f.seek(p * PAGE)
            f.write(rng.randbytes(PAGE))
        used = set()
        for i in range(64):
            layout = LAYOUTS["64" if i % 2 else "compat"]
            while True:
                page = rng.randrange(1, pages - 1)
                if page not in used and page + 1 not in used:
                    break
            used.update((page, page + 1))
            align = 8 if layout.name == "64" else 4
            off = (PAGE - 24 if i % 4 == 1 else rng.randrange(0, PAGE - 64)) // align * align
            times = tuple(rng.randrange(10**12, 10**13) for _ in range(4))
            info = RunstateInfo(1 + i % 3, sum(times), times)
            gpa = page * PAGE + off
            f.seek(gpa)
            f.write(bytes(PAGE - off + 64))  # the random-page sampler may have hit it
            f.seek(gpa)
            f.write(encode(layout, info))
            planted.append((gpa, layout.name))
    return sorted(planted)


def reference_pass(path: str) -> float:
    import numpy as np

    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        a = np.frombuffer(m, dtype=np.uint64)
        t0 = time.perf_counter()
        np.count_nonzero(a)
        dt = time.perf_counter() - t0
        del a
        m.close()
    return dt


CHILD = r"""
import json, sys, time
from xenrs_cli.dumps import open_dump
from xenrs_cli.scan import ScanOptions, Scanner, numpy
numpy()  # the import is paid once per run, not per byte: keep it out of the rate
path, align = sys.argv[1], sys.argv[2]
with open_dump(path) as d:
    sc = Scanner(d.space, ScanOptions(align=None if align == "default" else int(align)))
    t0 = time.perf_counter()
    hits = [(h.gpa, h.layout.name) for h in sc.hits()]
    dt = time.perf_counter() - t0
# VmHWM: this process's peak resident set (ru_maxrss would carry the parent's over exec).
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"seconds": dt, "hits": hits, "stats": sc.stats.to_json_dict(4096),
                  "maxrss_kib": hwm}))
"""


def run_scan(path: str, align: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", CHILD, path, align], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--keep", help="write the dump here and keep it")
    ap.add_argument("--sparse-only", action="store_true", help="skip the dense and real cases")
    ap.add_argument("--runs", type=int, default=3, help="runs per dense/real measurement")
    args = ap.parse_args()
    size = int(args.size_gib * (1 << 30)) // PAGE * PAGE
    path = args.keep or os.path.join(tempfile.mkdtemp(prefix="xenrs-bench-"), "sparse.raw")
    t0 = time.perf_counter()
    planted = make_dump(path, size)
    print(f"dump: {path}, {size / 2**30:.2f} GiB, {len(planted)} planted records, "
          f"made in {time.perf_counter() - t0:.1f} s")
    try:
        reference_pass(path)  # warm the page cache
        ref = min(reference_pass(path) for _ in range(3))
        ref_rate = size / ref / 1e9
        print(f"reference  np.count_nonzero(uint64 view): {ref:.3f} s  {ref_rate:6.2f} GB/s")
        for align, label in (("default", "scan (default: 64 align 8 + compat align 4)"),
                             ("1", "scan --align 1")):
            best = min((run_scan(path, align) for _ in range(2)), key=lambda r: r["seconds"])
            rate = size / best["seconds"] / 1e9
            found = {(g, l) for g, l in best["hits"]}
            missed = [p for p in planted if p not in found]
            print(f"{label:45s}: {best['seconds']:.3f} s  {rate:6.2f} GB/s  "
                  f"ratio {rate / ref_rate:.2f}x  peak RSS {best['maxrss_kib'] / 1024:.0f} MiB  "
                  f"hits {len(best['hits'])}, planted missed {len(missed)}")
    finally:
        if not args.keep:
            os.unlink(path)
            os.rmdir(os.path.dirname(path))
    if not args.sparse_only:
        print(flush=True)
        readers = os.path.join(os.path.dirname(os.path.abspath(__file__)), "readers.py")
        subprocess.run([sys.executable, readers, "--align1", "--runs", str(args.runs)],
                       check=True)


if __name__ == "__main__":
    main()
