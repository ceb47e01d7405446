"""``xenrs decode`` on the migration stream of a large guest against the same record in a raw dump.

Builds a precopy stream of a ``pc`` guest with ``--gib`` GiB of RAM (default 16: 4 Mi page
records, as QEMU writes an idle guest: one zero-page record per page, in order, then the one
page holding the record, resent once the way iterative precopy resends a dirtied page), and a
sparse raw image holding the same record at the same GPA. It prints the median wall time of
``xenrs decode --format json`` on each (fresh process per run) and their ratio: opening a stream
walks every record (QEMU writes no index), opening a raw image walks nothing.

    python benchmarks/migration_open.py [--gib 16] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile

from timing import median_time, xenrs_command

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import migwriter  # noqa: E402
from dumpwriter import runstate64  # noqa: E402

PAGE = 4096
RECORD = runstate64(1, 5_200_000_000, (4_000_000_000, 200_000_000, 1_000_000_000, 0))


def build(tmp: str, gib: int) -> tuple[str, str, int]:
    ram = gib << 30
    below = min(ram, 0xC0000000 if ram >= 0xE0000000 else 0xE0000000)
    offset = ram - 7 * PAGE  # a page near the top of pc.ram, above the 4 GiB hole
    gpa = (1 << 32) + offset - below + 0x100 if ram > below else offset + 0x100
    page = bytearray(PAGE)
    page[0x100:0x100 + len(RECORD)] = RECORD
    # the writer's header and tail around a hand-made run of zero-page records (ram.c
    # save_zero_page: be64 offset | ZERO | CONTINUE, then the byte 0)
    head, _ = migwriter.stream([("pc.ram", ram)], [("zero", "pc.ram", 0)], per_part=1)
    cut = head.index(struct.pack(">Q", migwriter.ZERO) + b"\x06pc.ram") + 16
    tail_at = head.index(struct.pack(">Q", migwriter.EOS), cut)
    stream = os.path.join(tmp, "guest.mig")
    with open(stream, "wb") as f:
        f.write(head[:cut])
        flags = migwriter.ZERO | migwriter.CONTINUE
        step = 1 << 16
        for first in range(1, ram // PAGE, step):
            f.write(b"".join(struct.pack(">QB", p * PAGE | flags, 0)
                             for p in range(first, min(first + step, ram // PAGE))))
        f.write(struct.pack(">Q", offset | migwriter.PAGE | migwriter.CONTINUE) + bytes(PAGE))
        f.write(struct.pack(">Q", offset | migwriter.PAGE | migwriter.CONTINUE) + page)
        f.write(head[tail_at:])
    raw = os.path.join(tmp, "guest.raw")
    with open(raw, "wb") as f:
        f.truncate(gpa & ~(PAGE - 1))
        f.seek(gpa & ~(PAGE - 1))
        f.write(bytes(page[:0x100]) + RECORD + bytes(PAGE - 0x100 - len(RECORD)))
    return stream, raw, gpa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    xenrs = xenrs_command()
    with tempfile.TemporaryDirectory() as tmp:
        stream, raw, gpa = build(tmp, args.gib)
        times = {}
        for name, path in (("raw", raw), ("qemu-migration", stream)):
            times[name] = median_time([*xenrs, "decode", path, "--gpa", hex(gpa), "--format",
                                       "json"], args.runs)
        size = os.path.getsize(stream)
    print(f"guest RAM {args.gib} GiB, stream {size / 2**20:.1f} MiB, record at GPA 0x{gpa:x}")
    for name, t in times.items():
        print(f"  decode {name:15s} {t * 1000:8.1f} ms  ({t / times['raw']:.1f}x raw)")


if __name__ == "__main__":
    main()
