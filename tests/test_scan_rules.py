"""``xenrs_cli.scan_rules``: each rule rejects the look-alike it was written for (values taken
from the real Xen dumps of ``tests/data/realxen``) and keeps what Xen and KVM write; the
vectorised prefilter never rejects what the rules accept; the page and clock rules."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.accounting import Accounting
from xenrs_cli.address_space import PAGE_SIZE, AddressSpace, LinearSegment
from xenrs_cli.layouts import LAYOUT_64, LAYOUT_COMPAT, RunstateInfo, encode
from xenrs_cli.scan import ScanOptions, Scanner
from xenrs_cli.scan_rules import (CLOCK, CROWD, DISTINCT, IDLE, LIFECYCLE, PADDING, PERIOD, TEXT,
                                  TEXTURE, UPTIME, failed_rule, prefilter, texture_p)

# What Xen 4.17 wrote (tests/data/realxen, p1): dom0 vCPU 0's guest area (offset accounting:
# created at 1.906 s), an idle vCPU's copy (exact), and the offline vCPU 2.
DOM0_V0 = RunstateInfo(0, 24685928390, (8394861966, 704050675, 8593250489, 5087678078), bytes(4))
IDLE_P1 = RunstateInfo(1, 29998518599, (25357411181, 4641107418, 0, 0), bytes(4))
DOM0_V2 = RunstateInfo(3, 18504150169, (2424363831, 420768918, 5389867649, 3809864688), bytes(4))
# KVM: the first transition books kvmclock 0..now to offline; the selftest-like example.
KVM_FIRST = RunstateInfo(0, 7_000_123_457, (0, 0, 0, 7_000_123_457), bytes(4))
EXAMPLE = RunstateInfo(0, 5_200_000_000, (4_000_000_000, 200_000_000, 1_000_000_000, 0), bytes(4))


@pytest.mark.parametrize("info", [DOM0_V0, IDLE_P1, DOM0_V2, KVM_FIRST, EXAMPLE],
                         ids=["xen-guest", "xen-idle", "xen-offline", "kvm-first", "example"])
def test_what_hypervisors_write_passes(info):
    assert failed_rule(info) is None


@pytest.mark.parametrize("info,rule", [
    # A kernel pointer or text as the entry time: beyond 2.28 years of uptime.
    (RunstateInfo(0, 0xFFFF888009800000 & ~(1 << 63), (1, 2, 3, 4), bytes(4)), UPTIME),
    (RunstateInfo(0, 24685928390, DOM0_V0.time, bytes.fromhex("0df0feca")), PADDING),
    # "two equal timestamps followed by zeros": nothing accounted (offset, state offline)
    (RunstateInfo(3, 0x5000190000, (0, 0, 0, 0), bytes(4)), IDLE),
    # sched_entity: on_rq, exec_start, sum_exec_runtime, vruntime, prev_sum_exec_runtime,
    # nr_migrations: offset accounting with no offline time (Xen's vCPUs start offline)
    (RunstateInfo(0, 0x6B0CD602, (0x2160EC00, 0, 0x8A1FF, 0), bytes(4)), LIFECYCLE),
    # a table of 0xffffffff: the single accounted state is not offline
    (RunstateInfo(0, 0xFFFFFFFF, (0, 0, 0xFFFFFFFF, 0), bytes(4)), LIFECYCLE),
    # Xen: ran without ever being runnable
    (RunstateInfo(0, 70622009825631371, (4311631770074509, 0, 16457257, 229797), None),
     LIFECYCLE),
    # blocked without having run
    (RunstateInfo(2, 10_000_000_000, (0, 1_000_000, 2_000_000_000, 3_000_000_000), bytes(4)),
     LIFECYCLE),
    # small integers as times (counts, flags)
    (RunstateInfo(1, 0x2000000001C, (0x1, 0x3, 0, 0x2000000001B - 4), None), PERIOD),
    (RunstateInfo(2, 0x200000002, (0x100000001 - 7, 0x100000001 - 7, 0, 1200), bytes(4)),
     DISTINCT),
    # packed 32-bit pairs (0x406000003, 0x1000277dc, ...) and multiples of 2^32
    (RunstateInfo(0, 0x277BD00011801, (0x406000003, 0x277C9, 0x1000277DC, 0x2000277E7),
                  bytes(4)), TEXTURE),
    (RunstateInfo(1, 0x790669066, (0, 0, 0, 0x300000000), None), TEXTURE),
    # ACPI/PnP IDs: "CTL7005", "ENS2020"-like text in two counters
    (RunstateInfo(1, 0x353030374C5443, (0, 0, 0, 0x30323032534E45), None), TEXT),
])
def test_each_rule_rejects_its_look_alike(info, rule):
    assert failed_rule(info) is rule


def test_texture_bound_is_what_it_says():
    # Random nanosecond sums: the texture rule almost never fires (its bound is 1e-6 per
    # record); 20,000 records of 5 random counters between 1 ms and 13 days.
    rng = random.Random(9)
    hits = 0
    for _ in range(20_000):
        values = [rng.randrange(10**6, 1 << 50) for _ in range(5)]
        hits += texture_p(values) < 1e-6
    assert hits == 0
    assert texture_p([0x0000000100000001]) < 1e-6  # a packed pair
    assert texture_p([24685928390]) > 0.01


COUNTER = st.one_of(st.just(0), st.integers(0, 2**64 - 1), st.integers(0, 2**40),
                    st.sampled_from([999, 1000, 0xFFFFFFFF, 1 << 56, (1 << 56) - 1]))


@settings(max_examples=400, deadline=None)
@given(state=st.integers(0, 3), entry=COUNTER, times=st.lists(COUNTER, min_size=4, max_size=4),
       padding=st.sampled_from([0, 1, 0xCAFEF00D]))
def test_prefilter_never_rejects_what_the_rules_accept(state, entry, times, padding):
    entry &= (1 << 63) - 1
    info = RunstateInfo(state, entry, tuple(times), padding.to_bytes(4, "little"))
    if info.accounting is Accounting.BROKEN:
        return
    arrays = [np.array([t], dtype=np.uint64) for t in times]
    exact = np.array([info.accounting is Accounting.EXACT])
    masks = prefilter(np, np.array([state], dtype=np.uint32), np.array([padding], dtype=np.uint32),
                      np.array([entry], np.uint64), arrays, exact)
    rejected = [rule for rule, mask in masks if mask[0]]
    # what numpy rejects, the rules reject too (it applies a subset of them)
    assert not rejected or failed_rule(info) is not None


def _space(records: list[tuple[int, bytes]], size: int = 4 * PAGE_SIZE) -> AddressSpace:
    buf = bytearray(size)
    for gpa, data in records:
        buf[gpa:gpa + len(data)] = data
    return AddressSpace([LinearSegment(0, size, bytes(buf), 0, "t")])


def _rec(info: RunstateInfo, layout=LAYOUT_64) -> bytes:
    return encode(layout, info)


def test_crowded_page_is_rejected_but_an_array_is_not():
    v = [RunstateInfo(2, DOM0_V0.state_entry_time + 7919 * i,
                      (*DOM0_V0.time[:3], DOM0_V0.time[3] + 7919 * i), bytes(4)) for i in range(4)]
    # three places at uneven strides in one page: rejected, all of them
    crowd = _space([(0x100, _rec(v[0])), (0x300, _rec(v[1])), (0x700, _rec(v[2])),
                    (PAGE_SIZE + 0x40, _rec(v[3]))])
    sc = Scanner(crowd, ScanOptions())
    assert [h.gpa for h in sc.hits()] == [PAGE_SIZE + 0x40]
    assert sc.stats.rejected[CROWD.name] == 3
    assert [h.gpa for h in Scanner(crowd, ScanOptions(loose=True)).hits()] == [
        0x100, 0x300, 0x700, PAGE_SIZE + 0x40]
    # an array at one stride, and two lone areas in a page: kept
    array = _space([(0x100 + 48 * i, _rec(v[i])) for i in range(3)]
                   + [(PAGE_SIZE + 0x40, _rec(v[3])), (PAGE_SIZE + 0x800, _rec(DOM0_V2))])
    assert [h.gpa for h in Scanner(array, ScanOptions()).hits()] == [
        0x100, 0x130, 0x160, PAGE_SIZE + 0x40, PAGE_SIZE + 0x800]


def test_clock_rule_drops_offset_hits_far_beyond_the_witnesses():
    far = RunstateInfo(2, DOM0_V0.state_entry_time * 5,
                       (*DOM0_V0.time[:3], DOM0_V0.time[3] + DOM0_V0.state_entry_time * 4),
                       bytes(4))
    near = RunstateInfo(2, DOM0_V0.state_entry_time * 3,
                        (*DOM0_V0.time[:3], DOM0_V0.time[3] + DOM0_V0.state_entry_time * 2),
                        bytes(4))
    assert failed_rule(far) is None and far.accounting is Accounting.OFFSET
    recs = [(0x100, _rec(IDLE_P1)), (PAGE_SIZE + 0x100, _rec(far)),
            (2 * PAGE_SIZE + 0x100, _rec(near))]
    sc = Scanner(_space(recs), ScanOptions())
    assert [h.gpa for h in sc.hits()] == [0x100, 2 * PAGE_SIZE + 0x100]
    assert sc.clock == IDLE_P1.state_entry_time and sc.stats.rejected[CLOCK.name] == 1
    # no exact witness (a Xen guest's memory alone): the rule does not apply
    sc = Scanner(_space(recs[1:]), ScanOptions())
    assert [h.gpa for h in sc.hits()] == [PAGE_SIZE + 0x100, 2 * PAGE_SIZE + 0x100]
    assert sc.clock is None


def test_hypervisor_option_narrows_the_accounting():
    space = _space([(0x100, _rec(DOM0_V2)), (PAGE_SIZE + 0x100, _rec(IDLE_P1))])
    assert [h.gpa for h in Scanner(space, ScanOptions()).hits()] == [0x100, PAGE_SIZE + 0x100]
    assert [h.gpa for h in Scanner(space, ScanOptions(hypervisor="xen")).hits()] == [
        0x100, PAGE_SIZE + 0x100]
    assert [h.gpa for h in Scanner(space, ScanOptions(hypervisor="kvm")).hits()] == [
        PAGE_SIZE + 0x100]


def test_compat_records_go_through_the_same_rules():
    space = _space([(0x104, _rec(DOM0_V0, LAYOUT_COMPAT)),
                    (PAGE_SIZE + 0x104, _rec(RunstateInfo(0, 0x6B0CD602, (0x2160EC00, 0, 0x8A1FF, 0)),
                                             LAYOUT_COMPAT))])
    sc = Scanner(space, ScanOptions(layouts=(LAYOUT_COMPAT,)))
    assert [h.gpa for h in sc.hits()] == [0x104]
    assert sc.stats.rejected[LIFECYCLE.name] >= 1
