"""``xenrs diff``: deltas and verdicts, on pairs made by patching copies of a fixture dump."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures import fixture_path, manifest
from xenrs_cli.address_space import AddressSpace, LinearSegment
from xenrs_cli.cli import xenrs
from xenrs_cli.decode import decode_at
from xenrs_cli.diff import REGRESSIONS, VERDICTS, compare
from xenrs_cli.layouts import LAYOUTS, XEN_RUNSTATE_UPDATE, RunstateInfo, encode

CASES = {c["name"]: c for c in manifest()["guests"]["d1"]["cases"]}


def gpa_of(name: str) -> int:
    return int(CASES[name]["gpa"], 16)


def info_of(name: str) -> RunstateInfo:
    c = CASES[name]
    return RunstateInfo(c["state"], c["state_entry_time_raw"], tuple(c["time"]),
                        (c["padding"] or 0).to_bytes(4, "little") if c["layout"] == "64" else None)


@pytest.fixture(scope="module")
def d1(tmp_path_factory):
    return fixture_path("d1.q72.raw")


def patched(tmp_path, src, name: str, **patches: RunstateInfo):
    """A copy of ``src`` with the record named ``k`` of d1 replaced by ``v``, for each k=v."""
    out = tmp_path / name
    shutil.copyfile(src, out)
    with open(out, "r+b") as f:
        for case, info in patches.items():
            f.seek(gpa_of(case))
            f.write(encode(LAYOUTS[CASES[case]["layout"]], info))
    return out


def run(*args):
    return CliRunner().invoke(xenrs, [str(a) for a in args])


def records(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_identical_dumps_state_unchanged(d1):
    r = run("diff", d1, d1, "--gpa", hex(gpa_of("qword_aligned64")), "--format", "json", "--strict")
    assert r.exit_code == 0, r.stderr
    (rec,) = records(r)
    assert set(rec) >= {"gpa", "layout", "before", "after", "delta", "verdicts"}
    assert rec["gpa"] == "0x6036a8" and rec["layout"] == "64"
    assert rec["verdicts"] == ["state_unchanged"]
    assert rec["delta"] == {"state_entry_time": 0, "running": 0, "runnable": 0, "blocked": 0,
                            "offline": 0, "steal": 0}
    assert rec["before"]["state_entry_time"] == CASES["qword_aligned64"]["state_entry_time"]
    assert rec["before"]["dump"] == rec["after"]["dump"] == str(d1)


def test_accounted_progress_has_no_verdict(d1, tmp_path):
    # kvm_xen_update_runstate(): runnable -> running at now = entry + 4000 ns with 300 ns of
    # steal: time[runnable] += 4000 (the runnable period, steal included); state running.
    before = info_of("qword_aligned64")
    t = list(before.time)
    t[1] += 4000
    after = RunstateInfo(0, before.state_entry_time + 4000, tuple(t), before.padding)
    d2 = patched(tmp_path, d1, "after.raw", qword_aligned64=after)
    r = run("diff", d1, d2, "--gpa", "0x6036a8", "--format", "json", "--strict")
    assert r.exit_code == 0, r.stderr
    (rec,) = records(r)
    assert rec["verdicts"] == []
    assert rec["delta"] == {"state_entry_time": 4000, "running": 0, "runnable": 4000,
                            "blocked": 0, "offline": 0, "steal": 4000}
    assert rec["elapsed"] == 4000
    assert rec["before"]["state"] == "runnable" and rec["after"]["state"] == "running"


def test_steal_went_backwards_after_migration(d1, tmp_path):
    # Xen clears the runstate times on migration: every counter restarts small.
    times = (5_000_000_000, 20_000_000, 1_000_000_000, 0)
    after = RunstateInfo(0, sum(times), times, bytes(4))
    d2 = patched(tmp_path, d1, "migrated.raw", qword_aligned64=after)
    gpa = "0x6036a8"
    lax = run("diff", d1, d2, "--gpa", gpa, "--format", "json")
    assert lax.exit_code == 0
    (rec,) = records(lax)
    assert rec["verdicts"] == ["time_went_backwards", "steal_went_backwards"]
    assert rec["delta"]["steal"] == 20_000_000 - CASES["qword_aligned64"]["time_runnable"]
    assert rec["regression"] is True
    strict = run("diff", d1, d2, "--gpa", gpa, "--format", "json", "--strict")
    assert strict.exit_code == 1 and records(strict) == records(lax)


def test_steal_alone_went_backwards(d1, tmp_path):
    # runnable shrinks while blocked grows by more: entry time still moves forward
    before = info_of("offline_state64")
    t = list(before.time)
    t[1] -= 1_000
    t[2] += 5_000
    after = RunstateInfo(before.state, before.state_entry_time + 4_000, tuple(t), before.padding)
    d2 = patched(tmp_path, d1, "steal.raw", offline_state64=after)
    (rec,) = records(run("diff", d1, d2, "--gpa", hex(gpa_of("offline_state64")),
                         "--format", "json"))
    assert rec["verdicts"] == ["time_went_backwards", "steal_went_backwards"]
    assert rec["delta"]["runnable"] == -1_000 and rec["delta"]["steal"] == -1_000


def test_flag_stuck(d1, tmp_path):
    # update_flag64 has XEN_RUNSTATE_UPDATE set; in the second dump it is still set, later on.
    before = info_of("update_flag64")
    t = list(before.time)
    t[0] += 7_000
    after = RunstateInfo(before.state, (before.state_entry_time + 7_000) | XEN_RUNSTATE_UPDATE,
                         tuple(t), before.padding)
    d2 = patched(tmp_path, d1, "stuck.raw", update_flag64=after)
    r = run("diff", d1, d2, "--gpa", hex(gpa_of("update_flag64")), "--format", "json",
            "--strict")
    assert r.exit_code == 1
    (rec,) = records(r)
    assert rec["verdicts"] == ["flag_stuck"]
    assert rec["delta"]["state_entry_time"] == 7_000  # bit 63 cleared on both sides
    # and when the second dump has it cleared: no verdict
    cleared = RunstateInfo(before.state, before.state_entry_time + 7_000, tuple(t),
                           before.padding)
    d3 = patched(tmp_path, d1, "cleared.raw", update_flag64=cleared)
    r = run("diff", d1, d3, "--gpa", hex(gpa_of("update_flag64")), "--format", "json",
            "--strict")
    assert r.exit_code == 0 and records(r)[0]["verdicts"] == []


def test_inconsistent(d1):
    r = run("diff", d1, d1, "--gpa", hex(gpa_of("inconsistent64_sum_ahead")), "--format", "json",
            "--strict")
    assert r.exit_code == 1
    assert records(r)[0]["verdicts"] == ["state_unchanged", "inconsistent"]


def test_compat_layout_inferred_from_the_first_dump(d1, tmp_path):
    before = info_of("compat_odd")
    t = list(before.time)
    t[2] += 123
    after = RunstateInfo(2, before.state_entry_time + 123, tuple(t))
    d2 = patched(tmp_path, d1, "c.raw", compat_odd=after)
    (rec,) = records(run("diff", d1, d2, "--gpa", hex(gpa_of("compat_odd")), "--format", "json"))
    assert rec["layout"] == "compat" and rec["after"]["layout"] == "compat"
    assert rec["delta"]["blocked"] == 123 and rec["verdicts"] == []


def test_gpa_missing_in_one_dump(d1):
    # d2.q72.raw holds 16 MiB; ram_tail_compat is at the end of d1's 32 MiB.
    d2 = fixture_path("d2.q72.raw")
    r = run("diff", d1, d2, "--gpa", hex(gpa_of("ram_tail_compat")), "--gpa", "0x6036a8",
            "--format", "json")
    assert r.exit_code == 3
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("xenrs: error: ")
    assert str(d2) in r.stderr and "0x1ffffd4" in r.stderr and "--allow-missing" not in r.stderr
    assert [rec["gpa"] for rec in records(r)] == ["0x6036a8"]  # the other GPA is still compared


def test_diff_scan(d1, tmp_path):
    before = info_of("qword_aligned64")
    times = (1_000_000_000, 1_000, 0, 0)
    d2 = patched(tmp_path, d1, "scan.raw",
                 qword_aligned64=RunstateInfo(1, sum(times), times, before.padding))
    r = run("diff", d1, d2, "--scan", "--layout", "64", "--format", "json")
    recs = {rec["gpa"]: rec for rec in records(r)}
    scan = run("scan", d1, "--layout", "64", "--format", "json", "-q")
    assert set(recs) == {json.loads(line)["gpa"] for line in scan.stdout.splitlines()}
    assert "time_went_backwards" in recs["0x6036a8"]["verdicts"]
    assert recs["0x702a28"]["verdicts"] == ["state_unchanged"]  # offline_state64
    assert "0x724588" not in recs  # padding_set64: no hypervisor leaves 0xcafef00d there


def test_usage_errors(d1):
    for args in (["diff", d1, d1], ["diff", d1, d1, "--gpa", "0x0", "--scan"],
                 ["diff", d1, d1, "--gpa", "0x10000000000000"]):
        r = run(*args)
        assert r.exit_code == 2 and r.stderr.startswith("xenrs: error: ") and r.stdout == ""


def test_table_and_csv(d1):
    r = run("diff", d1, d1, "--gpa", "0x6036a8", "--format", "table")
    assert r.exit_code == 0 and "state_unchanged" in r.stdout and "0x6036a8" in r.stdout
    r = run("diff", d1, d1, "--gpa", "0x6036a8", "--gpa", "0x0", "--format", "csv")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("gpa,layout,before_dump,") and len(lines) == 3
    assert lines[2].startswith("0x0,compat,")


# -- compare() itself --------------------------------------------------------------------------

U64 = st.integers(0, 1 << 60)  # four of them sum below 2^63: bit 63 stays the flag


def decoded(info: RunstateInfo):
    data = encode(LAYOUTS["64"], info)
    return decode_at(AddressSpace([LinearSegment(0, 48, data, 0)]), 0, "64")


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 3), st.lists(U64, min_size=4, max_size=4), st.booleans(),
       st.integers(0, 3), st.lists(U64, min_size=4, max_size=4), st.booleans())
def test_compare_properties(s1, t1, f1, s2, t2, f2):
    b = decoded(RunstateInfo(s1, sum(t1) | (XEN_RUNSTATE_UPDATE if f1 else 0), tuple(t1)))
    a = decoded(RunstateInfo(s2, sum(t2) | (XEN_RUNSTATE_UPDATE if f2 else 0), tuple(t2)))
    d = compare(b, a)
    assert [d.delta[k] for k in ("running", "runnable", "blocked", "offline")] == [
        y - x for x, y in zip(t1, t2)]
    assert d.delta["steal"] == (t2[1] + t2[3]) - (t1[1] + t1[3])
    assert d.delta["state_entry_time"] == sum(t2) - sum(t1) == d.elapsed
    assert ("time_went_backwards" in d.verdicts) == any(y < x for x, y in zip(t1, t2)) or (
        sum(t2) < sum(t1))
    assert ("steal_went_backwards" in d.verdicts) == (d.delta["steal"] < 0)
    assert ("flag_stuck" in d.verdicts) == (f1 and f2)
    assert ("state_unchanged" in d.verdicts) == (s1 == s2 and sum(t1) == sum(t2))
    assert "inconsistent" not in d.verdicts
    assert set(d.verdicts) <= set(VERDICTS)
    assert list(d.verdicts) == [v for v in VERDICTS if v in d.verdicts]
    assert set(d.regressions) == set(d.verdicts) & REGRESSIONS


def test_accounting_drift(d1, tmp_path):
    # offline_state64 blocked for 2.5 s more, but the entry time moved 1 ms further than the
    # times: unaccounted changed, which no hypervisor update does (the area was rewritten).
    before = info_of("offline_state64")
    t = list(before.time)
    t[2] += 2_500_000_000
    d2 = patched(tmp_path, d1, "drift.raw", offline_state64=RunstateInfo(
        2, before.state_entry_time + 2_501_000_000, tuple(t), before.padding))
    r = run("diff", d1, d2, "--gpa", hex(gpa_of("offline_state64")), "--format", "json",
            "--strict")
    (rec,) = records(r)
    assert rec["verdicts"] == ["accounting_drift"] and rec["regression"] is True
    assert rec["after"]["unaccounted"] - rec["before"]["unaccounted"] == 1_000_000
    assert r.exit_code == 1
    assert "accounting_drift" in VERDICTS and "accounting_drift" in REGRESSIONS


def test_offset_record_is_consistent_for_xen_not_for_kvm(d1):
    # the fixture's inconsistent_compat_entry_ahead: entry = sum + 12,345,678 ns, Xen's offset
    gpa = hex(gpa_of("inconsistent_compat_entry_ahead"))
    for hypervisor, consistent, code in (("any", True, 0), ("xen", True, 0), ("kvm", False, 1)):
        r = run("diff", d1, d1, "--gpa", gpa, "--format", "json", "--strict",
                "--hypervisor", hypervisor)
        (rec,) = records(r)
        assert rec["before"]["accounting"] == "offset"
        assert rec["before"]["unaccounted"] == 12_345_678
        assert rec["before"]["consistent"] is consistent
        assert ("inconsistent" in rec["verdicts"]) is not consistent
        assert r.exit_code == code
        d = run("decode", d1, "--gpa", gpa, "--strict", "--hypervisor", hypervisor,
                "--format", "json")
        assert d.exit_code == code and json.loads(d.stdout)["consistent"] is consistent
