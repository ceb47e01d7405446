"""Properties of the simulator over every page offset, and the pure value helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.apply import apply, images, patch_runs, xxd_patch
from xenrs_cli.errors import UsageError
from xenrs_cli.layouts import LAYOUTS, PAGE_SIZE, XEN_RUNSTATE_UPDATE, RunstateInfo, encode
from xenrs_cli.models import MODELS, PHYS_AREA_ALIGN, uses_byte_flag
from xenrs_cli.simulate import (DEFAULT_VALUES, Scenario, account_transition, default_before,
                                default_before_image, make_values, parse_state, parse_time_spec,
                                simulate, split_gpa)
from xenrs_cli.trace import Barrier, Reject, Write

PAGE = 0xc0001000
U63 = (1 << 63) - 1
COMBOS = [(m, l, f) for m in MODELS for l in LAYOUTS for f in (True, False)]


def expected_refusal(model: str, layout, off: int) -> str | None:
    """The documented refusals (SPEC §4), restated independently of models.py."""
    if model == "kvm-6.1" and off > 0xfd0:
        return "EINVAL"
    if model == "xen-phys":
        crosses = off + layout.size > PAGE_SIZE
        if crosses or off % {"64": 8, "compat": 4}[layout.name]:
            return "ENXIO"
    return None


def writes_of(recs):
    return [r for r in recs if isinstance(r, Write)]


def check_trace(model, layout, off, flag, event, info, before):
    gpa = PAGE + off
    recs = MODELS[model](layout, gpa, info, flag, event)
    refusal = expected_refusal(model, layout, off)
    if refusal:
        assert len(recs) == 1 and isinstance(recs[0], Reject) and recs[0].errno == refusal
        return
    assert not any(isinstance(r, Reject) for r in recs)
    assert [r.seq for r in recs] == list(range(len(recs)))
    group = 0
    for r in recs:
        assert r.group == group
        if isinstance(r, Barrier):
            group += 1
    ws = writes_of(recs)
    for wr in ws:
        # inside the area, never across a page, placed by its struct offset
        assert gpa <= wr.gpa and wr.gpa + wr.len <= gpa + layout.size
        assert wr.gpa % PAGE_SIZE + wr.len <= PAGE_SIZE
        assert wr.gpa == gpa + wr.offset
        assert wr.page == (wr.gpa // PAGE_SIZE) - (gpa // PAGE_SIZE)
    silent = event == "register" and model in ("kvm-6.1", "xen-phys")
    if silent:
        assert ws == []
        return
    final = apply(before, gpa, recs)
    want = encode(layout, RunstateInfo(info.state, info.state_entry_time, info.time,
                                       final[4:8] if layout.has_padding else None))
    assert final == want  # exactly the after-record's fields (padding compared below)
    if layout.has_padding:
        split = off + layout.size > PAGE_SIZE
        if model == "kvm" and not split:
            assert final[4:8] == before[4:8]  # the fast path never writes bytes 4..7
        elif model != "kvm-6.1":
            assert final[4:8] == bytes(4)
    fo = layout.flag_offset
    byte_flag = uses_byte_flag(model, flag) and not (model == "xen" and event == "register")
    if byte_flag:
        first, last = ws[0], ws[-1]
        assert (first.gpa, first.len, first.data[0]) == \
            (gpa + fo, 1, 0x80 | info.state_entry_time >> 56)
        assert (last.gpa, last.len, last.data[0]) == (gpa + fo, 1, info.state_entry_time >> 56)
    else:
        assert not any(wr.kind == "store" and wr.len == 1 for wr in ws)  # no flag-byte stores
    flagged = flag or model in ("kvm-6.1", "xen-phys")
    if flagged and not (model == "xen" and event == "register"):
        # from the first write until the last, the bytes in memory carry XEN_RUNSTATE_UPDATE
        assert all(img[fo] & 0x80 for img in images(before, gpa, recs)[:-1])
    else:
        # the flag is never written set
        assert not any(wr.data[fo - wr.offset] & 0x80 for wr in ws
                       if wr.offset <= fo < wr.offset + wr.len)


VALUES = RunstateInfo(2, 0x0123456789abcdef, (0x1111, 0x2222, 0x3333, 0x0123456789a9ab61))


@pytest.mark.parametrize("model,layout_name,flag", COMBOS)
@pytest.mark.parametrize("event", ["update", "register"])
def test_every_page_offset(model, layout_name, flag, event):
    layout = LAYOUTS[layout_name]
    before = bytes(range(0xa0, 0xa0 + layout.size))  # recognisable, flag bit set in byte 15/11
    for off in range(PAGE_SIZE):
        check_trace(model, layout, off, flag, event, VALUES, before)


def test_refusal_offsets_are_exact():
    # kvm-6.1: 0xfd1..0xfff in both layouts; xen-phys 64: crossing (> 0xfd0) or unaligned.
    for layout in LAYOUTS.values():
        refused = {o for o in range(PAGE_SIZE)
                   if isinstance(MODELS["kvm-6.1"](layout, PAGE + o, VALUES, True, "update")[0],
                                 Reject)}
        assert refused == set(range(0xfd1, 0x1000))
    ok64 = {o for o in range(PAGE_SIZE)
            if not isinstance(MODELS["xen-phys"](LAYOUTS["64"], PAGE + o, VALUES, True,
                                                 "update")[0], Reject)}
    assert ok64 == set(range(0, 0xfd1, 8))
    okc = {o for o in range(PAGE_SIZE)
           if not isinstance(MODELS["xen-phys"](LAYOUTS["compat"], PAGE + o, VALUES, True,
                                                "update")[0], Reject)}
    assert okc == set(range(0, 0xfd5, 4))
    assert PHYS_AREA_ALIGN == {"64": 8, "compat": 4}


u64 = st.integers(0, (1 << 64) - 1)
info_st = st.builds(RunstateInfo, st.integers(0, 3), st.integers(0, U63),
                    st.tuples(u64, u64, u64, u64))


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(list(MODELS)), layout_name=st.sampled_from(list(LAYOUTS)),
       off=st.integers(0, PAGE_SIZE - 1), flag=st.booleans(),
       event=st.sampled_from(["update", "register"]), info=info_st, data=st.data())
def test_any_values(model, layout_name, off, flag, event, info, data):
    layout = LAYOUTS[layout_name]
    before = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    check_trace(model, layout, off, flag, event, info, before)


@settings(max_examples=200, deadline=None)
@given(layout_name=st.sampled_from(list(LAYOUTS)), off=st.integers(0, PAGE_SIZE - 1),
       info=info_st, data=st.data())
def test_patch_reproduces_final_bytes(layout_name, off, info, data):
    layout = LAYOUTS[layout_name]
    gpa = PAGE + off
    before = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    recs = MODELS["kvm"](layout, gpa, info, True, "update")
    final = apply(before, gpa, recs)
    patched = bytearray(before)
    for start, chunk in patch_runs(gpa, final, recs):
        patched[start - gpa:start - gpa + len(chunk)] = chunk
    assert bytes(patched) == final


def test_xxd_patch_text():
    recs = MODELS["kvm"](LAYOUTS["64"], 0xc0001020, VALUES, False, "update")
    final = apply(bytes(48), 0xc0001020, recs)
    # fast path, flag off: bytes 0..3 and 8..47 written, the padding 4..7 is not
    assert patch_runs(0xc0001020, final, recs) == [(0xc0001020, final[:4]),
                                                    (0xc0001028, final[8:])]
    text = xxd_patch(patch_runs(0xc0001020, final, recs))
    assert text.splitlines() == [
        "c0001020: 0200 0000",
        "c0001028: efcd ab89 6745 2301 1111 0000 0000 0000",
        "c0001038: 2222 0000 0000 0000 3333 0000 0000 0000",
        "c0001048: 61ab a989 6745 2301",
    ]


def test_apply_rejects_writes_outside():
    recs = MODELS["kvm"](LAYOUTS["64"], 0xc0001020, VALUES, False, "update")
    with pytest.raises(ValueError):
        apply(bytes(48), 0xc0001021, recs)


# --- values --------------------------------------------------------------------------------


def test_parse_state():
    assert [parse_state(s) for s in ("running", "Runnable", "blocked", "offline", "0", "3")] == \
        [0, 1, 2, 3, 0, 3]
    for bad in ("4", "-1", "sleeping", ""):
        with pytest.raises(UsageError):
            parse_state(bad)


def test_parse_time_spec():
    assert parse_time_spec("running=1,runnable=0x10,blocked=1_000,offline=4") == (1, 16, 1000, 4)
    assert parse_time_spec("offline=5") == (0, 0, 0, 5)
    for bad in ("running", "running=1,running=2", "idle=3", "running=-1",
                f"running={1 << 64}"):
        with pytest.raises(UsageError):
            parse_time_spec(bad)


def test_sum_rule_like_runstate_data():
    # kernel-facts §9 vector 16: entry 0x6bc5 = 0x6b6b + 0x5a is accepted; 0x6bc6 refused.
    times = (0, 0, 0x6b6b, 0x5a)
    assert make_values(0, 0x6bc5, times).state_entry_time == 0x6bc5
    assert make_values(0, None, times).state_entry_time == 0x6bc5
    with pytest.raises(UsageError, match="--allow-inconsistent"):
        make_values(0, 0x6bc6, times)
    assert not make_values(0, 0x6bc6, times, allow_inconsistent=True).exact
    with pytest.raises(UsageError, match="bit 63"):
        make_values(0, XEN_RUNSTATE_UPDATE | 5, (5, 0, 0, 0))


def test_transition_accounting():
    # kernel-facts §9 vector 17: running since 1000, now 5000, steal 300.
    before = RunstateInfo(0, 1000, (600, 100, 300, 0))
    after = account_transition(before, 1, 5000, 300)
    assert after == RunstateInfo(1, 5000, (600 + 3700, 100 + 300, 300, 0))
    assert after.exact
    # leaving blocked: steal ignored, the interval goes to blocked
    blocked = RunstateInfo(2, 1000, (600, 100, 300, 0))
    assert account_transition(blocked, 0, 1500, 77) == RunstateInfo(0, 1500, (600, 100, 800, 0))
    # first transition: entry time 0 books everything to offline, whatever the state
    assert account_transition(RunstateInfo(0, 0, (0, 0, 0, 0)), 0, 5000) == \
        RunstateInfo(0, 5000, (0, 0, 0, 5000))
    with pytest.raises(UsageError):
        account_transition(before, 1, 999)
    with pytest.raises(UsageError):
        account_transition(before, 1, 1200, 300)  # more steal than time spent running
    with pytest.raises(UsageError):
        account_transition(RunstateInfo(-1, 1000, (1000, 0, 0, 0)), 1, 2000)
    with pytest.raises(UsageError, match="--allow-inconsistent"):
        account_transition(RunstateInfo(0, 1000, (1, 0, 0, 0)), 1, 2000)


def test_default_before():
    layout = LAYOUTS["64"]
    after = DEFAULT_VALUES  # running: the state left is runnable
    b = default_before(layout, after)
    assert b == RunstateInfo(1, 5_199_000_000, (4_000_000_000, 199_000_000, 1_000_000_000, 0),
                             bytes(4))
    assert b.exact
    # not running: the state left is running; clamped at what time[running] holds
    assert default_before(LAYOUTS["compat"], RunstateInfo(2, 500, (400, 0, 100, 0))) == \
        RunstateInfo(0, 100, (0, 0, 100, 0), None)
    assert default_before_image(layout, after) == encode(layout, b)


@settings(max_examples=200, deadline=None)
@given(layout_name=st.sampled_from(list(LAYOUTS)), state=st.integers(0, 3),
       times=st.tuples(*[st.integers(0, 1 << 60)] * 4))
def test_default_before_stays_consistent(layout_name, state, times):
    after = RunstateInfo(state, sum(times), times)
    b = default_before(LAYOUTS[layout_name], after)
    assert b.exact and min(b.time) >= 0 and b.state_entry_time <= after.state_entry_time
    assert b.state != state or b.time == after.time


def test_split_gpa_and_scenario():
    assert split_gpa(LAYOUTS["64"]) == 0xc0001ff1
    assert split_gpa(LAYOUTS["compat"]) == 0xc0001ff5
    s = Scenario("kvm", "64", 0xc0001ff1, True, "update", DEFAULT_VALUES,
                 default_before_image(LAYOUTS["64"], DEFAULT_VALUES))
    recs = simulate(s)
    assert recs[0].gpa == 0xc0002000 and recs[0].data == b"\x80"
    with pytest.raises(ValueError):
        Scenario("kvm", "64", 0, True, "update", DEFAULT_VALUES, bytes(44))
    with pytest.raises(ValueError):
        Scenario("bhyve", "64", 0, True, "update", DEFAULT_VALUES, bytes(48))
