"""Wall time of ``xenrs sweep`` for every configuration, and of ``xenrs sweep --all``.

Each run is a fresh process (``python -m xenrs_cli sweep ... --format json``), so the figures
include start-up, as a user sees them. Issue #5's targets on a 2-core machine: at most 2 s per
configuration and 30 s for ``--all``. Also prints how many distinct problems the checker
solved per configuration (the rest of the 4096 offsets share a canonical problem).

    python benchmarks/sweep.py [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TARGET_ONE, TARGET_ALL = 2.0, 30.0


def timed(args: list[str], runs: int) -> tuple[float, list[dict]]:
    times, out = [], ""
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "xenrs_cli", "sweep", *args, "--format",
                               "json"], capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if proc.returncode not in (0, 1):
            sys.exit(f"xenrs sweep {' '.join(args)} failed: {proc.stderr.strip()}")
        out = proc.stdout
    return statistics.median(times), [json.loads(line) for line in out.splitlines()]


def distinct_problems(model: str, layout: str, flag: bool) -> int:
    from xenrs_cli.layouts import LAYOUTS
    from xenrs_cli.readers import default_reader
    from xenrs_cli.simulate import DEFAULT_VALUES, Scenario, default_before_image
    from xenrs_cli.sweep import sweep

    lay = LAYOUTS[layout]
    sc = Scenario(model, layout, 0xc0001000, flag, "update", DEFAULT_VALUES,
                  default_before_image(lay, DEFAULT_VALUES))
    return sweep(sc, default_reader(lay), 0xc0001000).checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1, help="runs per command (median reported)")
    a = ap.parse_args()
    from xenrs_cli.sweep import matrix

    print(f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}")
    print(f"{'model':9} {'layout':7} {'flag':4} {'seconds':>8} {'checks':>6} {'torn':>5} "
          f"{'writer':>6} {'reader':>6} {'refused':>7}")
    worst = 0.0
    for model, layout, flag in matrix():
        args = ["--model", model, "--layout", layout,
                "--update-flag" if flag else "--no-update-flag"]
        secs, (obj,) = timed(args, a.runs)
        worst = max(worst, secs)
        print(f"{model:9} {layout:7} {'on' if flag else 'off':4} {secs:8.2f} "
              f"{distinct_problems(model, layout, flag):6} {obj['torn']:5} "
              f"{obj['torn_writer']:6} {obj['torn_reader']:6} {obj['refused']:7}")
    total, objs = timed(["--all"], a.runs)
    print(f"slowest configuration: {worst:.2f} s (target <= {TARGET_ONE} s): "
          f"{'ok' if worst <= TARGET_ONE else 'MISSED'}")
    print(f"sweep --all: {total:.2f} s for {len(objs)} configurations (target <= {TARGET_ALL} s): "
          f"{'ok' if total <= TARGET_ALL else 'MISSED'}")


if __name__ == "__main__":
    main()
