"""Median wall time of ``xenrs decode --format json`` against the ``import click, construct`` floor.

Builds a 64 MiB and a 64 GiB sparse raw dump (``truncate``-style: a hole with one planted record),
runs each command ``--runs`` times in a fresh process and prints the medians and the ratios.
Issue #2's target: decode ≤ 1.3× the import floor, and the same on both dump sizes.

    python benchmarks/decode_latency.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile

from timing import median_time, xenrs_command

GPA = 0x1ff1  # crosses a page: the expensive path
RECORD = struct.pack("<iI5Q", 1, 0, 5_200_000_000, 4_000_000_000, 200_000_000,
                     1_000_000_000, 0)


def make_sparse(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(GPA)
        f.write(RECORD)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    xenrs = xenrs_command()
    with tempfile.TemporaryDirectory() as tmp:
        small, big = os.path.join(tmp, "64M.raw"), os.path.join(tmp, "64G.raw")
        make_sparse(small, 64 << 20)
        make_sparse(big, 64 << 30)
        floor = median_time([sys.executable, "-c", "import click, construct"], args.runs)
        rows = [("python -c 'import click, construct'", floor)]
        for path, label in ((small, "64 MiB"), (big, "64 GiB")):
            cmd = xenrs + ["decode", path, "--gpa", hex(GPA), "--format", "json"]
            rows.append((f"xenrs decode --format json ({label} sparse raw)",
                         median_time(cmd, args.runs)))
    for label, t in rows:
        print(f"{t * 1000:8.1f} ms  {t / floor:5.2f}x  {label}")
    print(f"64 GiB / 64 MiB: {rows[2][1] / rows[1][1]:.2f}x   target: decode <= 1.30x floor")


if __name__ == "__main__":
    main()
