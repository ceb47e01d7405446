"""``xenrs_cli.scan``: the search for runstate areas, on synthetic address spaces and on every
shared fixture dump."""

from __future__ import annotations

import random
import struct
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fixtures import accounting_of, cases, fixture_path, manifest
from xenrs_cli.address_space import (PAGE_SIZE, AddressSpace, Extent, LinearSegment, Segment,
                                     Status, ZeroSegment)
from xenrs_cli.dumps import open_dump
from xenrs_cli.errors import UsageError
from xenrs_cli.layouts import (LAYOUT_64, LAYOUT_COMPAT, LAYOUTS, XEN_RUNSTATE_UPDATE, Layout,
                               RunstateInfo, encode)
from xenrs_cli.scan import (DEFAULT_MIN_ENTRY_TIME, MissingNumpyError, ScanOptions, Scanner,
                            hit_to_json_dict)


def record(layout: Layout, state: int, times: tuple[int, int, int, int], *, flag: bool = False,
           padding: bytes | None = None, entry: int | None = None) -> bytes:
    entry = sum(times) if entry is None else entry
    raw = entry | (XEN_RUNSTATE_UPDATE if flag else 0)
    return encode(layout, RunstateInfo(state, raw, times, padding))


TIMES = (6_531_581_186_223, 423_211_356_430, 2_223_247_431_020, 0)  # d1's qword_aligned64


def plant(buf: bytearray, gpa: int, data: bytes, base: int = 0) -> None:
    buf[gpa - base:gpa - base + len(data)] = data


def linear(buf: bytes | bytearray, gpa: int = 0) -> AddressSpace:
    return AddressSpace([LinearSegment(gpa, len(buf), bytes(buf), 0, "test")])


def found(space: AddressSpace, **opts) -> list[tuple[int, str]]:
    return [(h.gpa, h.layout.name) for h in Scanner(space, ScanOptions(**opts)).hits()]


# The synthetic tests below check the scan's mechanics (windows, seams, twins, shifted
# readings, arrays) with several hand-made records in one page; they run with loose=True, as the
# rules of what a hypervisor writes (several areas in one page at uneven strides, a single
# accounted state, ...) are tested on their own in tests/test_scan_rules.py.
LOOSE = {"loose": True}


class PagedSegment(Segment):
    """A segment whose pages have their own status, as a kdump's do (1st/2nd bitmap)."""

    def __init__(self, gpa: int, data: bytes, statuses: dict[int, Status]) -> None:
        self.gpa, self.size, self.data, self.statuses = gpa, len(data), data, statuses

    def chunk(self, rel: int, size: int) -> tuple[Status, int | None]:
        status = self.statuses.get((self.gpa + rel) // PAGE_SIZE, Status.PRESENT)
        return status, None

    def read(self, rel: int, size: int) -> bytes:
        return self.data[rel:rel + size]

    def extents(self):
        yield Extent(self.gpa, self.size, Status.PRESENT, None)


# -- synthetic: edges --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS)
@pytest.mark.parametrize("off", [-47, -44, -40, -33, -15, -11, -8, -5, -1])
def test_record_straddling_chunk_and_page_edge(layout, off):
    # chunk_size 8192: the first zero-copy core ends at 8192, which is also a page boundary.
    buf = bytearray(16 * PAGE_SIZE)
    gpa = 2 * PAGE_SIZE + off
    plant(buf, gpa, record(layout, 2, TIMES))
    hits = list(Scanner(linear(buf), ScanOptions(align=1, chunk_size=8192)).hits())
    assert [(h.gpa, h.layout.name) for h in hits] == [(gpa, layout.name)]
    obj = hit_to_json_dict(hits[0], "t")
    crosses = -off < layout.size  # compat at -47..-44 ends before the edge
    assert obj["crosses_page"] == crosses and obj["split_at"] == (-off if crosses else None)
    assert obj["state"] == "blocked" and obj["state_entry_time"] == sum(TIMES)
    assert len(obj["pieces"]) == (2 if crosses else 1)


def test_record_across_two_segments_and_at_both_ends():
    # Three GPA-adjacent segments of odd sizes: records across each seam, at GPA 0 and at the end.
    size = 3 * PAGE_SIZE
    buf = bytearray(size)
    r64, rc = record(LAYOUT_64, 1, TIMES), record(LAYOUT_COMPAT, 3, TIMES)
    planted = [(0, "compat"), (5000 - 20, "64"), (9001 - 30, "compat"), (size - 48, "64")]
    for gpa, name in planted:
        plant(buf, gpa, r64 if name == "64" else rc)
    segs = [LinearSegment(0, 5000, bytes(buf[:5000]), 0),
            LinearSegment(5000, 4001, bytes(buf[5000:9001]), 0),
            LinearSegment(9001, size - 9001, bytes(buf[9001:]), 0)]
    assert found(AddressSpace(segs), align=1) == planted


def test_zero_filled_bytes_stitch_but_do_not_count_as_present():
    # An ELF PT_LOAD whose file part ends inside a record: its tail (time[3] = 0 and the top of
    # time[2]) lies in [p_filesz, p_memsz), which reads as zeros.
    data = bytearray(PAGE_SIZE)
    gpa = PAGE_SIZE - 48
    plant(data, gpa, record(LAYOUT_64, 1, TIMES))
    assert not any(data[PAGE_SIZE - 8:])  # time[3] is zero: what the zero-fill supplies
    space = AddressSpace([LinearSegment(0, PAGE_SIZE - 8, bytes(data[:-8]), 0),
                          ZeroSegment(PAGE_SIZE - 8, 1 << 30)])
    sc = Scanner(space, ScanOptions())
    hits = list(sc.hits())
    assert [(h.gpa, h.layout.name) for h in hits] == [(gpa, "64")]
    obj = hit_to_json_dict(hits[0], "t")
    assert [p["status"] for p in obj["pieces"]] == ["present", "zero-filled"]
    assert obj["time"]["offline"] is None and obj["state_entry_time"] == sum(TIMES)
    # the 1 GiB of zero fill is counted, not read
    assert sc.stats.bytes["zero-filled"] == 1 << 30


def test_excluded_and_absent_pages_are_skipped_and_counted():
    data = bytearray(4 * PAGE_SIZE)
    r = record(LAYOUT_64, 2, TIMES)
    inside_present = PAGE_SIZE + 8
    inside_excluded = 2 * PAGE_SIZE + 16
    across = 2 * PAGE_SIZE - 24  # its second half is in the excluded page
    after = 3 * PAGE_SIZE + 64
    for g in (inside_present, inside_excluded, across, after):
        plant(data, g, r)
    seg = PagedSegment(0, bytes(data), {2: Status.EXCLUDED})
    far = LinearSegment(16 * PAGE_SIZE, PAGE_SIZE, bytes(PAGE_SIZE), 0)  # 12 absent pages before
    sc = Scanner(AddressSpace([seg, far]), ScanOptions())
    assert [h.gpa for h in sc.hits()] == [inside_present, after]
    assert sc.stats.pages(Status.EXCLUDED, PAGE_SIZE) == 1
    assert sc.stats.pages(Status.ABSENT, PAGE_SIZE) == 12
    assert sc.stats.pages(Status.PRESENT, PAGE_SIZE) == 4


# -- synthetic: what the rules accept -----------------------------------------------------------


def test_four_entry_per_vcpu_array():
    base = 0xb40fb8 - 0xb40000  # the fixture's array: entry 1 crosses a page
    buf = bytearray(3 * PAGE_SIZE)
    for i, state in enumerate((1, 0, 2, 0)):
        times = tuple(t + 1_000_003 * i for t in TIMES)
        plant(buf, base + 48 * i, record(LAYOUT_64, state, times))
    hits = list(Scanner(linear(buf), ScanOptions(align=1)).hits())
    # The state-0 entries have all-zero state and padding, so compat reads them too at +4; a
    # 64-bit array around them settles it.
    assert [(h.gpa, h.layout.name) for h in hits] == [(base + 48 * i, "64") for i in range(4)]
    assert [(h.array_gpa, h.array_index, h.array_len) for h in hits] == [
        (base, i, 4) for i in range(4)]
    obj = hit_to_json_dict(hits[1], "t")
    assert obj["array_gpa"] == hex(base) and obj["array_index"] == 1 and obj["array_len"] == 4


def test_compat_array_and_lone_records():
    buf = bytearray(2 * PAGE_SIZE)
    for i in range(3):
        plant(buf, 0x104 + 44 * i, record(LAYOUT_COMPAT, 1 + i, TIMES))
    plant(buf, 0x400, record(LAYOUT_64, 3, TIMES))
    hits = list(Scanner(linear(buf), ScanOptions(**LOOSE)).hits())
    assert [(h.gpa, h.layout.name, h.array_index) for h in hits] == [
        (0x104, "compat", 0), (0x130, "compat", 1), (0x15c, "compat", 2), (0x400, "64", None)]


def test_mid_update_and_padding_records_are_hits():
    buf = bytearray(PAGE_SIZE)
    plant(buf, 0x100, record(LAYOUT_64, 1, TIMES, flag=True))
    plant(buf, 0x200, record(LAYOUT_64, 2, TIMES, padding=bytes.fromhex("0df0feca")))
    plant(buf, 0x304, record(LAYOUT_COMPAT, 2, TIMES, flag=True))
    hits = {h.gpa: h for h in Scanner(linear(buf), ScanOptions(**LOOSE)).hits()}
    assert sorted(hits) == [0x100, 0x200, 0x304]
    assert hits[0x100].decoded.info.update_in_progress
    assert hits[0x304].decoded.info.update_in_progress
    assert hit_to_json_dict(hits[0x200], "t")["padding"] == "0df0feca"


def test_rules_reject():
    buf = bytearray(PAGE_SIZE)
    pad = bytes([0xff] * 4)  # so that compat does not read a valid state from the padding
    plant(buf, 0x100, record(LAYOUT_64, 4, TIMES, padding=pad))                   # unknown state
    plant(buf, 0x200, record(LAYOUT_64, 1, TIMES, entry=sum(TIMES) + 1))          # sum rule
    plant(buf, 0x300, record(LAYOUT_64, -1, TIMES, padding=pad))                  # negative state
    plant(buf, 0x3fc, pad + record(LAYOUT_COMPAT, 7, TIMES))  # unknown state; 64 at -4 too
    assert found(linear(buf), align=1) == []
    # With zero padding, the bytes from +4 of a 64-bit record with a bad state are a valid
    # compat record (state 0): the rules accept it, as the fixture's negative_state64 shows.
    plant(buf, 0x300, record(LAYOUT_64, -1, TIMES))
    assert found(linear(buf), align=1) == [(0x304, "compat")]


def test_min_entry_time():
    small = (600_000_000, 399_999_999, 0, 0)  # 999,999,999 ns: below the default 1 s
    buf = bytearray(PAGE_SIZE)
    plant(buf, 0x100, record(LAYOUT_64, 1, small))
    plant(buf, 0x200, record(LAYOUT_64, 1, (700_000_000, 300_000_000, 0, 0)))  # exactly 1 s
    sc = Scanner(linear(buf), ScanOptions(**LOOSE))
    assert [h.gpa for h in sc.hits()] == [0x200]
    # 0x100's compat reading from 0x100 is its entry time x 2^32 (above 1 s): a shadow, dropped,
    # and the record it shadows named with the option that hides it
    assert {(u.gpa, u.layout.name, u.excluded_by) for u in sc.unreported} == {
        (0x100, "64", "min-entry-time")}
    assert found(linear(buf), min_entry_time=999_999_999, **LOOSE) == [(0x100, "64"),
                                                                       (0x200, "64")]
    assert DEFAULT_MIN_ENTRY_TIME == 1_000_000_000


def test_zero_entry_time_is_never_a_hit():
    buf = bytearray(PAGE_SIZE)
    plant(buf, 0x100, record(LAYOUT_64, 1, (0, 0, 0, 0)))
    plant(buf, 0x200, bytes([1]) + bytes(47))
    assert found(linear(buf), min_entry_time=0, align=1) == []


def test_range_clips_the_scan():
    buf = bytearray(4 * PAGE_SIZE)
    for g in (0x100, 0x1100, 0x1fe8, 0x2100):
        plant(buf, g, record(LAYOUT_64, 1, TIMES))
    # [0x1000, 0x2000): 0x1fe8 runs to 0x2018, past the end, so it is not wholly inside
    assert found(linear(buf), start=0x1000, end=0x2000) == [(0x1100, "64")]
    assert found(linear(buf), start=0x1000, end=0x2018) == [(0x1100, "64"), (0x1fe8, "64")]
    assert found(linear(buf, gpa=0x80000000), start=0x80001000) == [
        (0x80001100, "64"), (0x80001fe8, "64"), (0x80002100, "64")]


def test_alignment():
    buf = bytearray(PAGE_SIZE)
    plant(buf, 0x104, record(LAYOUT_64, 1, TIMES))      # 4-aligned, not 8
    plant(buf, 0x202, record(LAYOUT_COMPAT, 1, TIMES))  # 2-aligned
    assert found(linear(buf)) == []
    assert found(linear(buf), align=4) == [(0x104, "64")]
    assert found(linear(buf), align=1) == [(0x104, "64"), (0x202, "compat")]
    assert found(linear(buf), align=1, layouts=(LAYOUT_COMPAT,)) == [(0x202, "compat")]


def test_shifted_readings_are_dropped_and_the_hidden_record_named():
    # A 64-bit record at an odd GPA in zeroed memory: read 1 byte early every field is 256 x the
    # real one and the sum rule still holds. Compat at 0x104 (4-aligned) is such a reading: its
    # state is the top byte of the real state and three padding bytes, all zero.
    buf = bytearray(PAGE_SIZE)
    plant(buf, 0x101, record(LAYOUT_64, 1, TIMES))
    sc = Scanner(linear(buf), ScanOptions())
    assert list(sc.hits()) == []
    assert sc.stats.readings_dropped == 1
    assert {(u.gpa, u.layout.name, u.instead_of) for u in sc.unreported} == {(0x101, "64", 0x104)}
    assert found(linear(buf), align=1) == [(0x101, "64")]


def test_twin_readings():
    # 64 at g and compat at g+4 share entry time and times.
    buf = bytearray(PAGE_SIZE)
    plant(buf, 0x100, record(LAYOUT_64, 2, TIMES))     # 64 state nonzero: 64
    plant(buf, 0x204, record(LAYOUT_COMPAT, 3, TIMES))  # = 64 at 0x200 with padding 3: compat
    plant(buf, 0x300, record(LAYOUT_64, 0, TIMES))     # all zero before the entry: both
    hits = list(Scanner(linear(buf), ScanOptions(**LOOSE)).hits())
    assert [(h.gpa, h.layout.name) for h in hits] == [
        (0x100, "64"), (0x204, "compat"), (0x300, "64"), (0x304, "compat")]
    objs = [hit_to_json_dict(h, "t") for h in hits]
    assert objs[2]["ambiguous_with"] == {"gpa": "0x304", "layout": "compat"}
    assert objs[3]["ambiguous_with"] == {"gpa": "0x300", "layout": "64"}
    assert objs[0]["ambiguous_with"] is None and objs[1]["ambiguous_with"] is None
    assert any("also read as a compat record" in w for w in objs[2]["warnings"])


def test_progress_reports_bytes_of_the_range():
    calls = []
    buf = bytearray(64 * PAGE_SIZE)
    space = AddressSpace([LinearSegment(0, len(buf), bytes(buf), 0),
                          LinearSegment(len(buf) + PAGE_SIZE, PAGE_SIZE, bytes(PAGE_SIZE), 0)])
    list(Scanner(space, ScanOptions(chunk_size=8192), lambda d, t: calls.append((d, t))).hits())
    total = 66 * PAGE_SIZE
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) > 5


def test_options_are_checked():
    with pytest.raises(UsageError):
        ScanOptions(align=2)
    with pytest.raises(UsageError):
        ScanOptions(start=0x2000, end=0x1000)


def test_numpy_missing_gives_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy raises ImportError
    with pytest.raises(MissingNumpyError) as e:
        list(Scanner(linear(bytes(PAGE_SIZE))).hits())
    assert e.value.exit_code == 3 and "pip install 'xenrs[scan]'" in str(e.value)


# -- property: planted records in zeroed memory, split into segments at random places ----------

# Nanosecond counters as a hypervisor accumulates them: 0 (a state never entered) or an
# arbitrary value between 1 ms and 13 days, drawn through a seeded RNG so that shrinking cannot
# steer them to structured values. Structured counters (a few ns, equal neighbours, 2^38,
# 2^32 + 1) make byte-shifted readings pass the sum rule by construction; the README states
# that limit of the shadow resolution.
COUNTER = st.one_of(st.just(0), st.integers(0, 2**32).map(
    lambda seed: random.Random(seed).randrange(10**6, 1 << 50)))
PLANTS = st.lists(
    st.tuples(st.sampled_from(["64", "compat"]), st.integers(1, 3),
              st.lists(COUNTER, min_size=4, max_size=4),
              st.booleans()),
    min_size=1, max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plants=PLANTS, slots=st.data(), chunk=st.sampled_from([4096, 8192, 12288, 65536]),
       cuts=st.lists(st.integers(1, 6 * PAGE_SIZE - 1), max_size=4, unique=True))
def test_planted_records_are_found_exactly(plants, slots, chunk, cuts):
    size = 6 * PAGE_SIZE
    buf = bytearray(size)
    # one slot of 96 bytes per record, anywhere in the slot's range (so records never overlap)
    starts = slots.draw(st.lists(st.integers(0, size // 96 - 1), min_size=len(plants),
                                 max_size=len(plants), unique=True))
    planted = []
    for (name, state, times, flag), slot in zip(plants, starts):
        layout = LAYOUTS[name]
        if sum(times) < DEFAULT_MIN_ENTRY_TIME:
            times = [times[0] + DEFAULT_MIN_ENTRY_TIME, *times[1:]]
        gpa = slot * 96 + slots.draw(st.integers(0, 96 - layout.size))
        plant(buf, gpa, record(layout, state, tuple(times), flag=flag))
        planted.append((gpa, name))
    edges = [0, *sorted(cuts), size]
    segs = [LinearSegment(a, b - a, bytes(buf[a:b]), 0) for a, b in zip(edges, edges[1:])]
    got = found(AddressSpace(segs), align=1, chunk_size=chunk, **LOOSE)
    assert got == sorted(planted)


# -- the shared fixtures: every format ---------------------------------------------------------

FORMAT_OF = {"raw": "raw", "elf": "elf", "kdump": "kdump", "kdump-flattened": "kdump"}
DUMPS = manifest()["dumps"]


# Planted records that SPEC §6's rules accept but no hypervisor writes (xenrs_cli.scan_rules):
# found by --loose only.
HYPERVISOR_CANNOT = {
    "padding_set64": "padding",  # 0xcafef00d in the 64-bit padding
    "high_padding64": "padding",
    # offset accounting (Xen's) with time[offline] = 0: Xen's vCPUs start offline
    "inconsistent_compat_entry_ahead": "lifecycle",
}


def rule_cases(entry: dict, loose: bool = False) -> list[dict]:
    """The planted records that satisfy SPEC §6's rules (state 0..3, exact or offset accounting,
    >= 1 s) and, unless ``loose``, that a hypervisor could have written."""
    return [c for c in cases(entry) if accounting_of(c) != "broken" and 0 <= c["state"] <= 3
            and c["state_entry_time"] >= DEFAULT_MIN_ENTRY_TIME
            and (loose or c["name"] not in HYPERVISOR_CANNOT)]


# Bytes of the fixtures' firmware that read as a record any hypervisor could write, at an
# alignment only --align 1 looks at: in SeaBIOS's ROM of the d2 guests (QEMU 7.2 at 0xfffd4026,
# 10.0 at 0xfffd3266), the same 44 bytes read as a compat record of a vCPU running for the first
# time (offset accounting, runnable 37 us, offline 459 us, entry 1.8 days) that no rule of
# xenrs_cli.scan_rules can tell from one.
LOOKALIKES = {(0xfffd4026, "compat"), (0xfffd3266, "compat")}


def explained(hit, entry: dict) -> bool:
    """A hit that is not a planted record: the twin of one (same bytes, both readings valid),
    the compat reading (from +4) of a planted 64-bit record whose state is not 0..3, or a
    known look-alike."""
    if (hit.gpa, hit.layout.name) in LOOKALIKES:
        return True
    by_key = {(int(c["gpa"], 16), c["layout"]): c for c in cases(entry)}
    if hit.twin is not None and (hit.twin[0], hit.twin[1].name) in by_key:
        return True
    base = by_key.get((hit.gpa - 4, "64"))
    return hit.layout is LAYOUT_COMPAT and base is not None and not 0 <= base["state"] <= 3


def open_fixture(entry: dict):
    fmt = FORMAT_OF[entry["container"]]
    d = open_dump(str(fixture_path(entry["file"])))
    assert d.format == fmt
    return d


@pytest.mark.parametrize("entry", DUMPS, ids=[d["file"] for d in DUMPS])
def test_fixture_every_planted_record_any_alignment(entry):
    with open_fixture(entry) as d:
        sc = Scanner(d.space, ScanOptions(align=1))
        hits = list(sc.hits())
    got = {(h.gpa, h.layout.name) for h in hits}
    want = {(int(c["gpa"], 16), c["layout"]) for c in rule_cases(entry)}
    assert want <= got, sorted(want - got)
    extra = [h for h in hits if (h.gpa, h.layout.name) not in want]
    assert all(explained(h, entry) for h in extra), [(hex(h.gpa), h.layout.name) for h in extra]
    probes = {int(p["gpa"], 16) for p in manifest()["guests"][entry["guest"]]["absent"]}
    assert not probes & {g for g, _ in got}
    for h in hits:
        if (h.gpa, h.layout.name) in want:
            case = next(c for c in cases(entry) if int(c["gpa"], 16) == h.gpa)
            assert h.decoded.raw.hex() == case["raw_hex"]
            assert h.decoded.info.update_in_progress == case["update_in_progress"]


@pytest.mark.parametrize("entry", DUMPS[:4], ids=[d["file"] for d in DUMPS[:4]])
def test_fixture_loose_finds_what_no_hypervisor_writes(entry):
    with open_fixture(entry) as d:
        sc = Scanner(d.space, ScanOptions(align=1, loose=True))
        got = {(h.gpa, h.layout.name) for h in sc.hits()}
        strict = {(h.gpa, h.layout.name) for h in Scanner(d.space, ScanOptions(align=1)).hits()}
    want = {(int(c["gpa"], 16), c["layout"]) for c in rule_cases(entry, loose=True)}
    assert want <= got, sorted(want - got)
    cannot = {(int(c["gpa"], 16), c["layout"]) for c in cases(entry)
              if c["name"] in HYPERVISOR_CANNOT}
    assert cannot & want and not cannot & strict


@pytest.mark.parametrize("entry", DUMPS, ids=[d["file"] for d in DUMPS])
def test_fixture_default_alignment(entry):
    with open_fixture(entry) as d:
        sc = Scanner(d.space, ScanOptions())
        hits = list(sc.hits())
        hidden = {(u.gpa, u.layout.name) for u in sc.unreported}
    got = {(h.gpa, h.layout.name) for h in hits}
    aligned = {(int(c["gpa"], 16), c["layout"]) for c in rule_cases(entry)
               if int(c["gpa"], 16) % (8 if c["layout"] == "64" else 4) == 0}
    assert aligned <= got, sorted(aligned - got)
    assert all(explained(h, entry) for h in hits if (h.gpa, h.layout.name) not in aligned)
    # Misaligned records are not reported, but the ones whose shifted readings passed are named.
    everything = {(int(c["gpa"], 16), c["layout"]) for c in rule_cases(entry)}
    assert hidden <= everything | {(t[0], t[1].name) for h in hits if (t := h.twin)} | {
        (g + 4 if l == "64" else g - 4, "compat" if l == "64" else "64") for g, l in everything}


@pytest.mark.parametrize("name", ["d2.q72.raw", "d2.q72.elf"])
def test_fixture_vcpu_array(name):
    entry = next(d for d in DUMPS if d["file"] == name)
    with open_fixture(entry) as d:
        hits = [h for h in Scanner(d.space).hits() if h.array_gpa is not None]
    assert [(h.gpa, h.array_index, h.array_len) for h in hits] == [
        (0xb40fb8 + 48 * i, i, 4) for i in range(4)]


def exclude_pages(kdump: bytes, pfns: list[int]) -> bytes:
    """A plain kdump file with ``pfns`` excluded, as makedumpfile's filtering leaves them: the
    2nd-bitmap bit cleared and the page's descriptor taken out of ``page_desc[]`` (fixtures
    README: 64-bit ``disk_dump_header``, block_size @428, sub_hdr_size @432, bitmap_blocks @436;
    index of a PFN = popcount of the 2nd bitmap below it)."""
    out = bytearray(kdump)
    bs, sub, blocks = struct.unpack_from("<III", out, 428)
    bitmap2 = (1 + sub + blocks // 2) * bs
    descs = (1 + sub + blocks) * bs
    for pfn in sorted(pfns, reverse=True):
        byte, bit = bitmap2 + pfn // 8, 1 << (pfn % 8)
        assert out[byte] & bit
        index = sum(bin(b).count("1") for b in out[bitmap2:bitmap2 + pfn // 8])
        index += bin(out[byte] & (bit - 1)).count("1")
        total = sum(bin(b).count("1") for b in out[bitmap2:bitmap2 + blocks // 2 * bs])
        at, end = descs + 24 * index, descs + 24 * total
        out[at:end] = out[at + 24:end] + bytes(24)
        out[byte] &= ~bit
    return bytes(out)


def test_kdump_excluded_pages_are_skipped(tmp_path):
    entry = next(d for d in DUMPS if d["file"] == "d1.q72.kdump-zlib.kdump")
    path = tmp_path / "filtered.kdump"
    # qword_aligned64 lies in PFN 0x603; cross64_flag_first_in_next (0x625ff1) has 33 bytes in 0x626
    path.write_bytes(exclude_pages(fixture_path(entry["file"]).read_bytes(), [0x603, 0x626]))
    with open_dump(str(path)) as d:
        sc = Scanner(d.space, ScanOptions(align=1))
        got = {(h.gpa, h.layout.name) for h in sc.hits()}
        assert sc.stats.pages(Status.EXCLUDED, PAGE_SIZE) == 2
    gone = {(0x6036a8, "64"), (0x625ff1, "64"), (0x625ff5, "compat")}
    want = {(int(c["gpa"], 16), c["layout"]) for c in rule_cases(entry)}
    assert not got & gone
    assert want - gone <= got
    assert (0x614b53, "64") in got  # odd_offset64, in the next present page range


@pytest.mark.parametrize("name", ["d2.q72.elf", "d1.q72.kdump-zlib.kdump"])
def test_rejection_counts_do_not_depend_on_windows(name):
    # Each 8-byte field and each reading is counted once, whatever the window size: fields in
    # a window's tail are the next window's.
    entry = next(d for d in DUMPS if d["file"] == name)
    with open_fixture(entry) as d:
        counts = []
        for chunk in (8192, 65536, 1 << 20):
            sc = Scanner(d.space, ScanOptions(chunk_size=chunk))
            hits = [(h.gpa, h.layout.name) for h in sc.hits()]
            counts.append((hits, sc.stats.rejected))
    assert counts[0] == counts[1] == counts[2]
