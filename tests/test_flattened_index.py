"""The flattened record index against a naive ``makedumpfile -R``: records painted in stream
order into a bytearray (later ones win, unwritten bytes are zeros, a zero-length record writes
nothing)."""

from __future__ import annotations

import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.dumps.flattened import FlatFile


def stream(records: list[tuple[int, bytes]]) -> bytes:
    out = (b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)).ljust(4096, b"\0")
    for off, data in records:
        out += struct.pack(">qq", off, len(data)) + data
    return out + struct.pack(">qq", -1, -1)


def reassemble(records: list[tuple[int, bytes]]) -> bytes:
    plain = bytearray()
    for off, data in records:
        if not data:
            continue  # write() of 0 bytes after lseek() does not extend the file
        if len(plain) < off + len(data):
            plain += bytes(off + len(data) - len(plain))
        plain[off:off + len(data)] = data
    return bytes(plain)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), max_size=40),
       st.sampled_from(["stream", "sorted", "interleaved"]), st.integers(0, 2**32))
def test_flatfile_equals_reassembly(specs, order, seed):
    rng = random.Random(seed)
    records = [(off, rng.randbytes(n)) for off, n in specs]
    if order == "sorted":
        records.sort(key=lambda r: r[0])
    elif order == "interleaved":  # two increasing sequences in turns, as QEMU writes
        a = sorted(records[::2], key=lambda r: r[0])
        b = sorted(records[1::2], key=lambda r: r[0])
        records = [r for pair in zip(a, b) for r in pair] + a[len(b):] + b[len(a):]
    buf = stream(records)
    flat = FlatFile(buf, len(buf))
    plain = reassemble(records)
    assert len(flat) == len(plain)
    assert flat[0:len(plain)] == plain
    for _ in range(10):
        lo = rng.randrange(0, len(plain) + 2)
        hi = rng.randrange(lo, len(plain) + 3)
        assert flat[lo:hi] == plain[lo:hi]
    # every byte some record wrote lies in data_ranges(); the rest is zeros
    covered = bytearray(len(plain))
    for a, b in flat.data_ranges(0, len(plain)):
        covered[a:b] = b"\1" * (b - a)
    assert all(covered[i] or plain[i] == 0 for i in range(len(plain)))
    assert flat.records == len(records)


def test_shuffled_stream_sorted_in_blocks(monkeypatch):
    # more increasing runs than MAX_PILES: the block sort and merge
    import xenrs_cli.dumps.flattened as flattened

    monkeypatch.setattr(flattened, "SORT_BLOCK", 64)
    rng = random.Random(11)
    records = [(off, rng.randbytes(rng.randrange(0, 9))) for off in range(0, 8000, 7)]
    records += [(rng.randrange(0, 8000), rng.randbytes(20)) for _ in range(300)]
    rng.shuffle(records)
    buf = stream(records)
    flat = FlatFile(buf, len(buf))
    plain = reassemble(records)
    assert flat[0:len(plain)] == plain and len(flat) == len(plain)
