"""What the benchmark scripts share: finding the ``xenrs`` to time and timing a command.

Importable from a script in this folder (``python benchmarks/x.py`` puts it on ``sys.path``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time


def xenrs_command() -> list[str]:
    """The console script of the interpreter running the benchmark (its venv), else PATH's.

    Its bytecode is compiled first: an installed package has it compiled at install time (as
    click's and construct's are), while an editable checkout under PYTHONDONTWRITEBYTECODE=1
    would recompile xenrs on every run and time the compiler.
    """
    import xenrs_cli

    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.dirname(xenrs_cli.__file__)],
                   check=True)
    beside = os.path.join(os.path.dirname(sys.executable), "xenrs")
    return [beside if os.path.exists(beside) else shutil.which("xenrs") or "xenrs"]


def median_time(cmd: list[str], runs: int) -> float:
    """Median wall time of ``cmd`` over ``runs`` fresh processes (stdout discarded)."""
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)
