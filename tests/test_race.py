"""The race checker (SPEC §5) on hand-checked cases, and every witness replayed independently."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.errors import UsageError
from xenrs_cli.layouts import (LAYOUT_64, LAYOUT_COMPAT, XEN_RUNSTATE_UPDATE, RunstateInfo,
                               encode)
from xenrs_cli.race import Problem, Witness, check, problem
from xenrs_cli.race_report import (field_sources, parse_before, race, report_json, timeline,
                                   torn_fields)
from xenrs_cli.readers import default_reader, line_split, programs
from xenrs_cli.simulate import Scenario, simulate
from xenrs_cli.sweep import canonical, ranges, sweep
from xenrs_cli.trace import Barrier, Write

PAGE = 0xc0001000
E_OLD, E_NEW = 0x0000_0001_35e2_71c0, 0x0000_0001_35f1_b400  # differ only in the low 4 bytes
BEFORE = RunstateInfo(1, E_OLD, (4_000_000_000, 199_000_000, 1_000_000_000, 0))
AFTER = RunstateInfo(0, E_NEW, (4_000_000_000, 200_000_000, 1_000_000_000, 0))


def scenario(model="kvm", layout=LAYOUT_64, gpa=PAGE, flag=True, event="update",
             before=BEFORE, after=AFTER) -> Scenario:
    return Scenario(model, layout.name, gpa, flag, event, after, encode(layout, before))


def verdict(**kw):
    rep = race(scenario(**kw))
    return rep, rep.verdict


def replay(p: Problem, w: Witness) -> None:
    """Check a witness against SPEC §5 directly: writer units in an order the barriers allow,
    reader units in one of the reader's program orders, every observation what memory held,
    the reader accepts, and the copy is torn."""
    lay = p.lay
    writers = [s.writer for s in w.steps if s.writer is not None]
    for k, u in enumerate(writers):  # group order: no unit before a unit of an earlier group
        assert all(v.group >= u.group for v in writers[k:])
        assert all(v.group <= u.group for v in writers[:k])
    shown = [s.writer for s in w.steps if s.writer is not None]
    hidden = [u for u in p.units if u not in shown]
    assert all(u.group >= max((v.group for v in shown), default=0) for u in hidden) or \
        all(u.group >= v.group for u in hidden for v in shown if v.group < u.group)
    order = tuple(s.reader for s in w.steps if s.reader is not None)
    assert order in programs(lay, p.reader, p.split)
    mem = bytearray(p.before)
    r1: dict[int, int] = {}
    copy = bytearray(p.before)
    for s in w.steps:
        if s.writer is not None:
            mem[s.writer.offset:s.writer.end] = s.writer.data
            continue
        r = s.reader
        assert s.seen == bytes(mem[r.offset:r.end])
        if r.role == "set":
            r1.update({b: mem[b] for b in range(r.offset, r.end)})
        elif r.role == "check":
            assert all(mem[b] == r1[b] for b in range(r.offset, r.end))
        else:
            copy[r.offset] = mem[r.offset]
    e = lay.entry_offset
    value = int.from_bytes(bytes(r1[b] for b in range(e, e + 8)), "little")
    assert value == w.r1 == w.r2 and not value & XEN_RUNSTATE_UPDATE
    keep = [b for b in range(lay.size) if not (lay.has_padding and 4 <= b < 8)]
    assert [copy[b] for b in keep] == [w.copy[b] for b in keep]
    assert any(copy[b] != p.before[b] for b in keep)
    assert any(copy[b] != p.final[b] for b in keep)


# --- hand-checked cases (issue #5) -----------------------------------------------------------

def test_kvm_flag_on_at_page_offset_0_is_not_torn():
    # Fast path, struct in one line: flag byte set, body, flag byte clear; R1 is one load.
    rep, v = verdict(model="kvm", gpa=PAGE)
    assert rep.refused is None and not v.torn and v.cause is None and v.witness is None


@pytest.mark.parametrize("model,layout", [("kvm", LAYOUT_64), ("kvm", LAYOUT_COMPAT),
                                          ("xen", LAYOUT_64), ("xen", LAYOUT_COMPAT)])
@pytest.mark.parametrize("gpa", [PAGE, PAGE + 0x20, PAGE + 0xff1])
def test_flag_off_is_torn_by_the_writer_with_half_copied_times(model, layout, gpa):
    rep, v = verdict(model=model, layout=layout, gpa=gpa, flag=False)
    assert v.torn and v.cause == "writer"
    replay(rep.problem, v.witness)
    sources = field_sources(rep.problem, v.witness)
    # The reader validated one entry time while the times were half copied.
    assert sources["state_entry_time"] in ("before", "after")
    assert {sources[f"time[{i}]"] for i in range(4)} - {"both"} != set()
    assert torn_fields(rep.problem, v.witness)


def test_kvm_6_1_entry_time_across_a_line_is_torn_as_the_seed_commit_says():
    # Page offset 0x34: state_entry_time (struct 8..15) is at 0x3c..0x43, across a line.
    # The 8-byte store of E|UPDATE is two units; its low half alone is visible: R1 reads the
    # new low bytes with the old (flag-clear) high bytes, equal here to the new E.
    rep, v = verdict(model="kvm-6.1", gpa=PAGE + 0x34)
    assert v.torn and v.cause == "writer"
    w = v.witness
    replay(rep.problem, w)
    assert w.r1 == E_NEW
    writers = [s.writer for s in w.steps if s.writer is not None]
    assert [(u.offset, u.data, u.part) for u in writers] == \
        [(8, E_NEW.to_bytes(8, "little")[:4], "line 0")]
    assert field_sources(rep.problem, w) == {
        "state": "before", "state_entry_time": "after", "time[0]": "both", "time[1]": "before",
        "time[2]": "both", "time[3]": "both"}
    assert torn_fields(rep.problem, w) == ["state", "time[1]"]


def test_kvm_6_1_at_page_offset_0_is_not_torn():
    _, v = verdict(model="kvm-6.1", gpa=PAGE)
    assert not v.torn


def test_kvm_6_1_high_bytes_changing_tears_the_entry_time_itself():
    # With the high half changing too, R1 = old high half : new low half is a value neither
    # record has, and it is still accepted (its flag bit comes from the old high half).
    after = replace(AFTER, state_entry_time_raw=E_NEW + (1 << 40),
                    time=(4_000_000_000 + (1 << 40), 200_000_000, 1_000_000_000, 0))
    rep, v = verdict(model="kvm-6.1", gpa=PAGE + 0x34, after=after)
    assert v.torn and v.cause == "writer"
    replay(rep.problem, v.witness)
    assert v.witness.r1 == (E_OLD & ~0xffff_ffff) | (E_NEW & 0xffff_ffff)
    assert "state_entry_time" in torn_fields(rep.problem, v.witness)


@pytest.mark.parametrize("layout,offset,errno", [
    (LAYOUT_64, 0x004, "ENXIO"),     # not 8-aligned
    (LAYOUT_64, 0xfd8, "ENXIO"),     # 0xfd8 + 47 crosses the page
    (LAYOUT_COMPAT, 0x002, "ENXIO"),  # not 4-aligned
    (LAYOUT_COMPAT, 0xfd8, "ENXIO"),  # 0xfd8 + 43 crosses
])
def test_xen_phys_refuses_what_spec_says(layout, offset, errno):
    rep, v = verdict(model="xen-phys", layout=layout, gpa=PAGE + offset)
    assert rep.refused is not None and rep.refused.errno == errno and v is None
    assert rep.finding
    obj = report_json(rep)
    assert obj["refused"] is True and obj["torn"] is False and obj["witness"] is None


@pytest.mark.parametrize("layout,offset", [(LAYOUT_64, 0xfd0), (LAYOUT_COMPAT, 0xfd4)])
def test_xen_phys_accepts_the_last_fitting_offsets_and_is_not_torn(layout, offset):
    rep, v = verdict(model="xen-phys", layout=layout, gpa=PAGE + offset)
    assert rep.refused is None and not v.torn


def test_xen_phys_compat_write_atomic_across_a_line_is_torn():
    # Compat only needs 4-byte alignment: at 0x38 state_entry_time is 0x3c..0x43, so Xen's
    # 8-byte write_atomic() crosses a line and is two units.
    rep, v = verdict(model="xen-phys", layout=LAYOUT_COMPAT, gpa=PAGE + 0x38)
    assert v.torn and v.cause == "writer"
    replay(rep.problem, v.witness)


def test_kvm_flag_on_reader_split_load_is_a_reader_tear():
    # 0x31: the line boundary falls between struct bytes 14 and 15, inside R1's load only.
    rep, v = verdict(model="kvm", gpa=PAGE + 0x31)
    assert v.torn and v.cause == "reader"
    replay(rep.problem, v.witness)
    labels = [s.reader.label for s in v.witness.steps if s.reader is not None]
    assert "R1[15..15]" in labels


def test_kvm_6_1_register_writes_nothing_so_nothing_tears():
    rep, v = verdict(model="kvm-6.1", event="register")
    assert rep.problem.units == () and not v.torn


# --- the checker can fail --------------------------------------------------------------------

def _w(seq, group, off, data, kind="store", gpa=PAGE):
    return Write(seq, group, kind, gpa + off, off, data, 0, "f", "hand-written")


def _protocol(layout, before, after, clear_first):
    """KVM's fixed sequence by hand; ``clear_first`` clears the flag before the body (broken)."""
    f, e = layout.flag_offset, layout.entry_offset
    flagged = (after.state_entry_time | XEN_RUNSTATE_UPDATE).to_bytes(8, "little")
    body = encode(layout, after)
    set_ = _w(0, 0, f, flagged[7:])
    clear = _w(5, 2, f, body[f:f + 1])
    state = _w(2, 1, 0, body[0:4])
    entry = _w(3, 1, e, flagged)
    times = _w(4, 1, layout.times_offset, body[layout.times_offset:], "copy")
    if clear_first:
        # The bug: the flag is cleared and the entry time written plain, then the body copied.
        return [set_, Barrier(1, 0), _w(2, 1, e, body[e:e + 8]), Barrier(3, 1),
                _w(4, 2, 0, body[0:4]), _w(5, 2, layout.times_offset,
                                            body[layout.times_offset:], "copy")]
    return [set_, Barrier(1, 0), state, entry, times, Barrier(4, 1), clear, Barrier(6, 2)]


@pytest.mark.parametrize("layout", [LAYOUT_64, LAYOUT_COMPAT])
def test_a_writer_that_clears_the_flag_before_the_copy_is_torn(layout):
    good = problem(layout, PAGE, encode(layout, BEFORE),
                   _protocol(layout, BEFORE, AFTER, False), default_reader(layout))
    bad = problem(layout, PAGE, encode(layout, BEFORE),
                  _protocol(layout, BEFORE, AFTER, True), default_reader(layout))
    assert not check(good).torn
    v = check(bad)
    assert v.torn and v.cause == "writer"
    replay(bad, v.witness)


def test_no_barrier_between_flag_and_body_is_torn():
    layout = LAYOUT_64
    recs = [r for r in _protocol(layout, BEFORE, AFTER, False) if not isinstance(r, Barrier)]
    recs = [replace(r, group=0) for r in recs]  # one group: the compiler may reorder it all
    assert check(problem(layout, PAGE, encode(layout, BEFORE), recs, "linux64")).torn


# --- properties ------------------------------------------------------------------------------

MODELS = ["kvm", "kvm-6.1", "xen", "xen-phys"]


@settings(max_examples=40, deadline=None)
@given(model=st.sampled_from(MODELS), layout=st.sampled_from([LAYOUT_64, LAYOUT_COMPAT]),
       offset=st.integers(0, 4095), flag=st.booleans())
def test_every_witness_replays_and_json_is_exact(model, layout, offset, flag):
    rep = race(scenario(model=model, layout=layout, gpa=PAGE + offset, flag=flag))
    obj = report_json(rep)
    assert list(obj) == ["model", "layout", "gpa", "reader", "update_flag", "event", "refused",
                         "torn", "cause", "witness"]
    assert obj["gpa"] == f"0x{PAGE + offset:x}"
    if rep.verdict and rep.verdict.torn:
        replay(rep.problem, rep.verdict.witness)
        rows = obj["witness"]["timeline"]
        assert [r["step"] for r in rows] == list(range(len(rows)))
        assert obj["cause"] in ("writer", "reader")
    else:
        assert obj["witness"] is None and obj["cause"] is None


@settings(max_examples=25, deadline=None)
@given(model=st.sampled_from(MODELS), offset=st.integers(0, 4095), flag=st.booleans())
def test_sweeps_memo_key_is_exact(model, offset, flag):
    """Two offsets with the same canonical problem get the same verdict without the memo."""
    sc = scenario(model=model, flag=flag)
    other = (offset + 64 * 7) % 4096

    def prob(o):
        recs = simulate(replace(sc, gpa=PAGE + o))
        if any(r.op == "reject" for r in recs):
            return None
        return problem(LAYOUT_64, PAGE + o, sc.before, recs, "linux64")

    a, b = prob(offset), prob(other)
    if a is None or b is None or canonical(a) != canonical(b):
        return
    va, vb = check(a, witness=False), check(b, witness=False)
    assert (va.torn, va.cause) == (vb.torn, vb.cause)


def test_sweep_summary_matches_direct_checks_on_the_first_line():
    sc = scenario(model="kvm", flag=True)
    s = sweep(sc, "linux64", PAGE)
    assert len(s.results) == 4096
    for r in s.results[:64]:
        v = race(replace(sc, gpa=PAGE + r.offset)).verdict
        assert (r.verdict == "torn", r.cause) == (v.torn, v.cause)
    d = s.to_json_dict()
    assert d["offsets"] == 4096 and d["torn"] == d["torn_writer"] + d["torn_reader"]
    assert sum(b - a + 1 for a, b in d["torn_offsets"]) == d["torn"]


def test_sweep_kvm_6_1_golden():
    d = sweep(scenario(model="kvm-6.1"), "linux64", PAGE).to_json_dict()
    # Refused: 0xfd1..0xfff (47). Torn: the 8-byte entry store crosses a line at offsets
    # 0x31..0x37 of each line (7 per line, 63 lines; the 64th line is refused there).
    assert d["refused"] == 47 and d["torn"] == d["torn_writer"] == 441
    assert d["torn_offsets"][:2] == [[0x31, 0x37], [0x71, 0x77]]
    assert d["torn_offsets"][-1] == [0xfb1, 0xfb7]


def test_ranges_are_inclusive():
    assert ranges([]) == []
    assert ranges([1, 2, 3, 7, 9, 10]) == [[1, 3], [7, 7], [9, 10]]


# --- readers and options ---------------------------------------------------------------------

def test_reader_programs():
    assert default_reader(LAYOUT_64) == "linux64" and default_reader(LAYOUT_COMPAT) == "linux32"
    assert line_split(PAGE, LAYOUT_64) is None and line_split(PAGE + 0x34, LAYOUT_64) == 12
    (prog,) = programs(LAYOUT_64, "linux64", None)
    assert [u.label for u in prog[:2]] == ["R1", "C[0]"] and prog[-1].label == "R2"
    assert len(prog) == 1 + 44 + 1  # padding is copied but never compared
    assert len(programs(LAYOUT_64, "linux64", 12)) == 4
    # linux32: hi, lo, hi' per get64; a line inside hi splits both hi loads of both get64s.
    assert [u.label for u in programs(LAYOUT_COMPAT, "linux32", None)[0][:3]] == \
        ["R1.hi", "R1.lo", "R1.hi'"]
    assert len(programs(LAYOUT_COMPAT, "linux32", 10)) == 16
    assert len(programs(LAYOUT_COMPAT, "linux32", 6)) == 4


def test_parse_before():
    info = parse_before("state=blocked,running=5,offline=2", LAYOUT_64)
    assert (info.state, info.state_entry_time, info.time) == (2, 7, (5, 0, 0, 2))
    assert parse_before("entry=0x10,state=1", LAYOUT_COMPAT).state_entry_time == 16
    for bad in ("state=9", "bogus=1", "running=1,running=2", "entry=0x8000000000000000",
                "running"):
        with pytest.raises(UsageError):
            parse_before(bad, LAYOUT_64)


def test_timeline_merges_copy_bytes_and_copy_reads():
    rep, v = verdict(model="kvm", gpa=PAGE + 0x31)
    rows = timeline(v.witness)
    copy_rows = [r for r in rows if r["actor"] == "reader" and r["phase"] == "C"]
    assert sum(r["len"] for r in copy_rows) == 44
    assert all(len(r["seen"]) == 2 * r["len"] for r in copy_rows)
