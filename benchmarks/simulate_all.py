"""Cost of simulating every page offset × layout × model (× update flag) in-process.

Target (issue #4): all 4096 offsets × 2 layouts × 4 models in ≤ 1 s; a single trace well under
the CLI's start-up time. Prints figures; asserts nothing.

    /work/venv/bin/python benchmarks/simulate_all.py
"""

from __future__ import annotations

import subprocess
import sys
import time

from xenrs_cli.layouts import LAYOUTS, PAGE_SIZE
from xenrs_cli.models import MODELS
from xenrs_cli.simulate import DEFAULT_VALUES

PAGE = 0xc0001000


def sweep(flags: tuple[bool, ...]) -> tuple[float, int]:
    n = 0
    start = time.perf_counter()
    for fn in MODELS.values():
        for layout in LAYOUTS.values():
            for flag in flags:
                for off in range(PAGE_SIZE):
                    fn(layout, PAGE + off, DEFAULT_VALUES, flag, "update")
                    n += 1
    return time.perf_counter() - start, n


def startup() -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xenrs_cli", "simulate", "--split", "--format",
                        "json"], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    sweep((True,))  # warm up
    for flags in ((True,), (True, False)):
        best = min(sweep(flags)[0] for _ in range(3))
        n = 4096 * len(LAYOUTS) * len(MODELS) * len(flags)
        print(f"{n:>7} traces (offsets x layouts x models x {len(flags)} flag setting(s)): "
              f"{best:.3f} s, {best / n * 1e6:.1f} us per trace")
    print(f"CLI 'xenrs simulate --split --format json' wall time (best of 5): "
          f"{startup() * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
