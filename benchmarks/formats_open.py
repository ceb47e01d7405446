"""``xenrs decode`` on xen-core, LiME and AVML dumps against the same memory as a raw image.

Each format is opened whole at every run (its headers, its PFN table or block/chunk headers),
so the ratio to raw is the cost of opening it. Dumps, built in a temporary directory:

* the real ``xl dump-core`` of ``tests/data/realxen-domu`` (96 MiB, PFN table in order) and a
  raw image of its ``.xen_pages`` (PFN i at offset i × 4096, so the same GPAs);
* a synthetic 256 MiB PV dump-core from the tests' writer with its 65,536 PFNs shuffled (the
  table is sorted at open) and its raw image;
* 256 MiB of guest memory as LiME, as AVML (snappy, 16 MiB blocks) and as a raw image.

Prints the median wall time of ``xenrs decode --format json`` (fresh process per run) and the
ratio to the raw image of the same memory.

    python benchmarks/formats_open.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

from timing import median_time, xenrs_command

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
import limewriter  # noqa: E402
import realxen  # noqa: E402
from dumpwriter import XenVcpu, runstate64, xen_core_file  # noqa: E402

PAGE = 4096
RECORD = runstate64(1, 5_200_000_000, (4_000_000_000, 200_000_000, 1_000_000_000, 0))


def memory(pages: int, seed: int) -> bytearray:
    """Guest-like memory: a few random words per page in zeros, a record near the top."""
    rng = random.Random(seed)
    b = bytearray(pages * PAGE)
    for p in range(pages):
        for _ in range(8):
            at = p * PAGE + rng.randrange(0, PAGE - 8)
            b[at:at + 8] = rng.randbytes(8)
    top = (pages - 3) * PAGE - 15
    b[top:top + 48] = RECORD
    return b


def build(tmp: str) -> list[tuple[str, str, str, list[str]]]:
    """(name, dump, raw reference, GPAs)."""
    out = []
    core = str(realxen.path("du1.core"))
    raw = os.path.join(tmp, "du1.raw")
    with open(core, "rb") as f, open(raw, "wb") as w:
        f.seek(0x4000)
        w.write(f.read(0x6000000))
    out.append(("real du1.core (xen-core, 96 MiB)", core, raw, ["0x5a2f040", "0x5b2f040"]))

    pages = 65536
    mem = memory(pages, 1)
    gpa = f"0x{(pages - 3) * PAGE - 15:x}"
    entries = [(p, 0x100000 + p, bytes(mem[p * PAGE:(p + 1) * PAGE])) for p in range(pages)]
    shuffled = os.path.join(tmp, "shuffled.core")
    with open(shuffled, "wb") as f:
        f.write(xen_core_file(entries, [XenVcpu()], seed=3))
    del entries
    mem_raw = os.path.join(tmp, "mem.raw")
    with open(mem_raw, "wb") as f:
        f.write(mem)
    out.append(("xen-core, 256 MiB, PFNs shuffled", shuffled, mem_raw, [gpa]))
    for name, data in (("lime", limewriter.lime([(0, bytes(mem))])),
                       ("avml", limewriter.avml([(0, bytes(mem))]))):
        path = os.path.join(tmp, f"mem.{name}")
        with open(path, "wb") as f:
            f.write(data)
        out.append((f"{name}, 256 MiB", path, mem_raw, [gpa]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    xenrs = xenrs_command()
    with tempfile.TemporaryDirectory(prefix="xenrs-bench-") as tmp:
        cases = build(tmp)
        print(f"{'dump':36} {'decode':>9} {'raw':>9} {'ratio':>6}")
        for name, dump, raw, gpas in cases:
            args_gpa = [a for g in gpas for a in ("--gpa", g)]
            t = median_time([*xenrs, "decode", dump, *args_gpa, "--format", "json", "-q"],
                            args.runs)
            r = median_time([*xenrs, "decode", raw, *args_gpa, "--format", "json", "-q"],
                            args.runs)
            print(f"{name:36} {t * 1000:7.1f}ms {r * 1000:7.1f}ms {t / r:6.2f}")


if __name__ == "__main__":
    main()
