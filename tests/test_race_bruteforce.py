"""The fast checker against a brute-force enumeration of every interleaving (SPEC §5).

The enumerator below shares nothing with :mod:`xenrs_cli.race` but the input (writer units
and the images): it builds the reader's programs itself, walks every linear extension of the
barrier groups, every order of a split load's halves and every merge of the writer's
visibility order with the reader's program, and evaluates SPEC §5's acceptance and torn rules
directly. The only reduction: a byte that no writer unit touches reads the same at every
instant, so the copy's reads of it are left out (they can neither fail nor tear).
"""

from __future__ import annotations

import itertools
import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from xenrs_cli.layouts import LAYOUTS
from xenrs_cli.race import Problem, check, is_torn, problem
from xenrs_cli.trace import Barrier, Write

BASE = 0xc0001000


# --- the brute force -------------------------------------------------------------------------

def _loads(p: Problem, atomic: bool) -> list[list[tuple[str, int, int]]]:
    """Per load, its alternatives: each a list of (role, start, end) in time order."""
    lay = LAYOUTS[p.layout]
    e = lay.entry_offset
    cut = None if atomic else (-(p_gpa(p)) % 64)

    def load(role, a, b):
        if cut is not None and a < cut < b:
            return [[(role, a, cut), (role, cut, b)], [(role, cut, b), (role, a, cut)]]
        return [[(role, a, b)]]

    def get64(first, then):
        if p.reader == "linux64":
            return [load(first, e, e + 8)]
        return [load(first, e + 4, e + 8), load(first, e, e + 4), load(then, e + 4, e + 8)]

    touched = sorted({b for u in p.units for b in range(u.offset, u.end)})
    pad = range(4, 8) if lay.has_padding else range(0)
    copies = [[[("copy", b, b + 1)]] for b in touched if b not in pad]
    return get64("set", "check") + copies + get64("check", "check")


def p_gpa(p: Problem) -> int:
    # The problem keeps the line boundary, not the GPA: any GPA with that boundary will do.
    return BASE + (64 - p.split if p.split is not None else 0)


def _extensions(p: Problem):
    groups = sorted({u.group for u in p.units})
    per = [[u for u in p.units if u.group == g] for g in groups]
    for combo in itertools.product(*(itertools.permutations(g) for g in per)):
        yield [u for g in combo for u in g]


def brute(p: Problem, atomic: bool = False, where=None) -> float:
    """The fewest writer units visible when the reader's last unit runs, over every torn
    execution (inf if none); ``where(r1_bytes, copy_bytes)`` filters the executions."""
    lay = LAYOUTS[p.layout]
    flag = lay.flag_offset
    best = float("inf")
    programs = [[u for load in combo for u in load]
                for combo in itertools.product(*_loads(p, atomic))]
    for order in _extensions(p):
        for prog in programs:
            def walk(i, j, mem, r1, db, da, copy=p.before):
                nonlocal best
                if j == len(prog):
                    if db and da and (where is None or where(r1, copy)):
                        best = min(best, i)
                    return
                if i < len(order):
                    u = order[i]
                    walk(i + 1, j, mem[:u.offset] + u.data + mem[u.end:], r1, db, da, copy)
                role, a, b = prog[j]
                if role == "copy":
                    walk(i, j + 1, mem, r1, db or mem[a] != p.before[a],
                         da or mem[a] != p.final[a], copy[:a] + mem[a:a + 1] + copy[a + 1:])
                elif role == "set":
                    if a <= flag < b and mem[flag] & 0x80:
                        return
                    r = dict(r1)
                    r.update({k: mem[k] for k in range(a, b)})
                    walk(i, j + 1, mem, r, db, da, copy)
                elif all(mem[k] == r1[k] for k in range(a, b)):
                    walk(i, j + 1, mem, r1, db, da, copy)
            walk(0, 0, p.before, {}, False, False)
    return best


# --- random tiny traces ----------------------------------------------------------------------

ALPHABET = [0x00, 0x01, 0x80, 0x81]


@st.composite
def tiny_problems(draw):
    layout = LAYOUTS[draw(st.sampled_from(["64", "compat"]))]
    reader = draw(st.sampled_from(["linux64", "linux32"]))
    e = layout.entry_offset
    # Bytes worth writing: the whole entry time, the state, a time[] byte.
    spots = [0, e, e + 3, e + 4, e + 6, e + 7, layout.times_offset + 1]
    gpa = BASE + draw(st.sampled_from([0, 64 - e - 4, 64 - e - 6, 64 - e - 1, 64 - e - 2]))
    before = bytearray(draw(st.binary(min_size=layout.size, max_size=layout.size)))
    for b in spots:
        before[b] = draw(st.sampled_from(ALPHABET))
    records, group, seq = [], 0, 0
    for _ in range(draw(st.integers(1, 4))):
        if seq and draw(st.booleans()):
            records.append(Barrier(seq, group))
            group, seq = group + 1, seq + 1
        start = draw(st.sampled_from(spots))
        size = draw(st.integers(1, 2 if start < layout.size - 1 else 1))
        data = bytes(draw(st.sampled_from(ALPHABET)) for _ in range(size))
        kind = draw(st.sampled_from(["store", "copy"]))
        records.append(Write(seq, group, kind, gpa + start, start, data, 0, "f", "w"))
        seq += 1
    units = problem(layout, gpa, bytes(before), records, reader).units
    units = units[:4]  # at most 4! visibility orders per group for the brute force
    p = problem(layout, gpa, bytes(before), records, reader)
    return Problem(p.layout, p.reader, p.before,
                   _final(p.before, units), units, p.split)


def _final(before: bytes, units) -> bytes:
    buf = bytearray(before)
    for u in units:
        buf[u.offset:u.end] = u.data
    return bytes(buf)


@st.composite
def protocol_problems(draw):
    """Traces shaped like the real ones: flag byte set, barrier, body, barrier, flag byte
    clear, with a short body, random values and the line boundary anywhere in the entry time."""
    layout = LAYOUTS[draw(st.sampled_from(["64", "compat"]))]
    reader = draw(st.sampled_from(["linux64", "linux32"]))
    e, f = layout.entry_offset, layout.flag_offset
    gpa = BASE + 64 - e - draw(st.integers(1, 7))
    old = draw(st.integers(0, 2**63 - 1))
    new = old + draw(st.sampled_from([1, 0x100, 0x1_0000_0000, 2**56]))
    new &= 2**63 - 1
    before = bytearray(draw(st.binary(min_size=layout.size, max_size=layout.size)))
    before[e:e + 8] = old.to_bytes(8, "little")
    t = layout.times_offset + draw(st.integers(0, 7))
    flagged = (new | 1 << 63).to_bytes(8, "little")
    # (a store: a copy of the entry time would be 8 units, 9! orders for the brute force)
    body_kind = "store"
    recs = [Write(0, 0, "store", gpa + f, f, flagged[7:], 0, "f", "set"), Barrier(1, 0),
            Write(2, 1, body_kind, gpa + e, e, flagged, 0, "f", "entry"),
            Write(3, 1, "copy", gpa + t, t, bytes([before[t] ^ 1]), 0, "f", "time"),
            Barrier(4, 1),
            Write(5, 2, "store", gpa + f, f, new.to_bytes(8, "little")[7:], 0, "f", "clear")]
    if draw(st.booleans()):
        recs = recs[2:4] + [Barrier(4, 1)]  # the flag left off
    return problem(layout, gpa, bytes(before), recs, reader)


def interleavings(p: Problem) -> int:
    """How many executions :func:`brute` walks (before pruning): programs × visibility orders
    × merges of the two sequences."""
    progs = math.prod(len(alts) for alts in _loads(p, False))
    m = sum(len(alts[0]) for alts in _loads(p, False))
    orders = math.prod(math.factorial(sum(1 for u in p.units if u.group == g))
                       for g in {u.group for u in p.units})
    n = len(p.units)
    return progs * orders * math.comb(n + m, n)


LIMIT = 400_000  # keeps each example well under a second


def _check_against_brute(p):
    assume(interleavings(p) <= LIMIT)
    want = brute(p)
    assert is_torn(p) == (want < float("inf"))
    assert is_torn(p, atomic=True) == (brute(p, atomic=True) < float("inf"))
    v = check(p)
    if v.torn:
        writers = [s for s in v.witness.steps if s.writer is not None]
        assert len(writers) == want  # the witness is minimal
    else:
        assert v.witness is None
    return v


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(protocol_problems())
def test_fast_checker_agrees_with_brute_force_on_protocol_traces(p):
    _check_against_brute(p)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(tiny_problems())
def test_fast_checker_agrees_with_brute_force(p):
    _check_against_brute(p)


def test_the_issues_flag_off_witness_exists_too():
    """Flag off: besides the minimal witness the checker prints (old entry time, a time byte
    new), the issue's own one exists: the entry time read new and the times half copied.
    Shown on a kvm-shaped trace cut down to two time bytes so every interleaving is listed."""
    layout = LAYOUTS["64"]
    old, new = 0x1_35e2_71c0, 0x1_35f1_b400
    before = bytearray(48)
    before[8:16] = old.to_bytes(8, "little")
    before[24:32] = (1000).to_bytes(8, "little")
    gpa = BASE + 0x20
    recs = [Write(0, 0, "store", gpa, 0, bytes(4), 0, "state", "S"),
            Write(1, 0, "store", gpa + 8, 8, new.to_bytes(8, "little"), 0, "e", "E"),
            Write(2, 0, "copy", gpa + 24, 24, (1000 + 0x101).to_bytes(8, "little")[:2], 0,
                  "time[1]", "T"),
            Barrier(3, 0)]
    before[0:4] = (1).to_bytes(4, "little")
    p = problem(layout, gpa, bytes(before), recs, "linux64")
    assert check(p).torn and check(p).cause == "writer"

    def entry_new_times_half(r1, copy):
        r1_value = int.from_bytes(bytes(r1[k] for k in range(8, 16)), "little")
        return r1_value == new and copy[24] != before[24] and copy[25] == before[25]

    assert brute(p, where=entry_new_times_half) < float("inf")
