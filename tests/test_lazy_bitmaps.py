"""kdump bitmaps read lazily from a sparse file (``FileBytes``, holes skipped) against naive
definitions over the same bytes held whole."""

from __future__ import annotations

import random
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.dumps.kdump import RANK_BLOCK, SCAN_BYTES, Bitmap, Rank, bit_runs, popcount
from xenrs_cli.dumps.source import FileBytes


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * SCAN_BYTES), st.integers(1, 3 * RANK_BLOCK)),
                max_size=6), st.integers(0, 2**32), st.integers(1, 64))
def test_lazy_bitmap_equals_naive(islands, seed, at_blocks):
    rng = random.Random(seed)
    length = 4 * SCAN_BYTES + 123
    whole = bytearray(length)
    for start, n in islands:  # data islands in a sparse file; the rest are holes
        n = min(n, length - start)
        whole[start:start + n] = rng.randbytes(n)
    at = at_blocks * 4096  # the bitmap's offset in the file
    with tempfile.TemporaryFile() as f:
        f.truncate(at + length + 4096)
        for start, n in islands:
            f.seek(at + start)
            f.write(whole[start:start + min(n, length - start)])
        f.flush()
        bm = Bitmap(FileBytes(f.fileno(), at + length + 4096), at, length)
        value = int.from_bytes(whole, "little")
        nbits = 8 * length
        for _ in range(8):
            lo = rng.randrange(0, nbits)
            hi = rng.randrange(lo, nbits + 1)
            naive = (value >> lo) & ((1 << (hi - lo)) - 1)
            assert popcount(bm, lo, hi) == naive.bit_count()
            runs = list(bit_runs(bm, lo, hi))
            assert runs == list(bit_runs(bytes(whole), lo, hi))
            assert sum(e - s for s, e in runs) == naive.bit_count()
        rank = Rank(bm)
        for bit in sorted(rng.randrange(0, nbits) for _ in range(10)) + [nbits - 1, 0]:
            assert rank(bit) == (value & ((1 << bit) - 1)).bit_count()
