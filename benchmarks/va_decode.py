"""What translating a virtual address costs: ``xenrs decode --va`` and ``--vcpus --symbols``
against ``--gpa`` of the same area, on the real Xen dumps (tests/data/realxen, decompressed
into the test cache by tests/realxen.py), each command ``--runs`` times in a fresh process.

At p1 the first vCPU's CR3 does not map the VA (a user page table), so ``--va`` there walks two
page tables; ``--vcpus`` walks once per ``__per_cpu_offset[n]`` and once per area.

    python benchmarks/va_decode.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from timing import xenrs_command

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import realxen  # noqa: E402

KALLSYMS = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "dom0.kallsyms")


def interleaved_medians(cmds: list[list[str]], runs: int) -> list[float]:
    """Median wall time of each command, the commands run round-robin so that a busy machine
    slows them alike (the ratios are what this script reports)."""
    samples: list[list[float]] = [[] for _ in cmds]
    for _ in range(runs):
        for i, cmd in enumerate(cmds):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    xenrs = xenrs_command()
    area = realxen.truth("p1")["true_areas"][0]
    for name in ("p1.elf", "p1.kdump-zlib.flat"):
        dump = realxen.dump_arg(name)
        base = xenrs + ["decode", dump, "--layout", "64", "--format", "json", "-q"]
        labels = ["--gpa", "--va (2 CR3s tried)", "--vcpus --symbols (3 areas)"]
        times = interleaved_medians([base + ["--gpa", area["gpa"]],
                                     base + ["--va", area["guest_va"]],
                                     base + ["--vcpus", "--symbols", KALLSYMS]], args.runs)
        ref = times[0]
        for label, t in zip(labels, times):
            print(f"{name:20} {t * 1000:8.1f} ms  {t / ref:5.2f}x  {label}")


if __name__ == "__main__":
    main()
