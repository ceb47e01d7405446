"""Golden bytes for both runstate layouts, written out by hand and annotated field by field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.layouts import LAYOUT_64, LAYOUT_COMPAT, LAYOUTS, RunstateInfo, decode, encode

# running 0x1000 + runnable 0x200 + blocked 0x30 + offline 0x4 = 0x1234
TIMES = bytes.fromhex(
    "0010000000000000"  # time[0] running  = 0x1000
    "0002000000000000"  # time[1] runnable = 0x200
    "3000000000000000"  # time[2] blocked  = 0x30
    "0400000000000000"  # time[3] offline  = 0x4
)

GOLDEN = [
    # (name, layout, bytes, expected fields)
    ("64 blocked, padding set", LAYOUT_64,
     bytes.fromhex("02000000"            # state = 2 (blocked)
                   "0df0feca"            # padding = bytes 0d f0 fe ca (0xcafef00d LE)
                   "3412000000000000")   # state_entry_time = 0x1234
     + TIMES,
     dict(state=2, state_name="blocked", entry=0x1234, flag=False, consistent=True,
          padding=bytes.fromhex("0df0feca"), steal=0x204)),
    ("64 flag set", LAYOUT_64,
     bytes.fromhex("00000000" "00000000"
                   "3412000000000080")   # bit 63 set: top byte 0x80 at struct offset 15
     + TIMES,
     dict(state=0, state_name="running", entry=0x1234, flag=True, consistent=True,
          padding=bytes(4), steal=0x204)),
    ("64 sum rule broken", LAYOUT_64,
     bytes.fromhex("01000000" "00000000"
                   "3512000000000000")   # 0x1235 != 0x1234
     + TIMES,
     dict(state=1, state_name="runnable", entry=0x1235, flag=False, consistent=False,
          padding=bytes(4), steal=0x204)),
    ("64 unknown state", LAYOUT_64,
     bytes.fromhex("ffffffff" "00000000" "3412000000000000") + TIMES,
     dict(state=-1, state_name="unknown", entry=0x1234, flag=False, consistent=True,
          padding=bytes(4), steal=0x204)),
    ("compat offline", LAYOUT_COMPAT,
     bytes.fromhex("03000000"            # state = 3 (offline); no padding in compat
                   "3412000000000000")   # state_entry_time at offset 4
     + TIMES,
     dict(state=3, state_name="offline", entry=0x1234, flag=False, consistent=True,
          padding=None, steal=0x204)),
    ("compat flag set, state 0x5a", LAYOUT_COMPAT,
     bytes.fromhex("5a000000" "3412000000000080") + TIMES,
     dict(state=0x5a, state_name="unknown", entry=0x1234, flag=True, consistent=True,
          padding=None, steal=0x204)),
]


@pytest.mark.parametrize("name,layout,data,want", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_decode_and_round_trip(name, layout, data, want):
    info = decode(layout, data)
    assert info.state == want["state"]
    assert info.state_name == want["state_name"]
    assert info.state_entry_time == want["entry"]
    assert info.update_in_progress is want["flag"]
    assert info.time == (0x1000, 0x200, 0x30, 0x4)
    assert info.time_sum == 0x1234
    assert info.exact is want["consistent"]
    assert info.padding == want["padding"]
    assert info.steal == want["steal"]
    assert encode(layout, info) == data


def test_sizes_and_offsets_follow_the_abi():
    # Xen public/vcpu.h and Linux's BUILD_BUG_ONs in kvm_xen_update_runstate_guest().
    assert (LAYOUT_64.size, LAYOUT_64.entry_offset, LAYOUT_64.flag_offset) == (48, 8, 15)
    assert (LAYOUT_COMPAT.size, LAYOUT_COMPAT.entry_offset, LAYOUT_COMPAT.flag_offset) == (44, 4, 11)
    assert LAYOUT_64.times_offset == 16 and LAYOUT_COMPAT.times_offset == 12
    assert LAYOUT_64.entry_offset == LAYOUT_COMPAT.entry_offset + 4
    assert [f.offset for f in LAYOUT_64.fields] == [0, 4, 8, 16, 24, 32, 40]
    assert [f.offset for f in LAYOUT_COMPAT.fields] == [0, 4, 12, 20, 28, 36]
    assert set(LAYOUTS) == {"64", "compat"}


def test_fields_touching():
    assert LAYOUT_64.fields_touching(15, 16) == ["state_entry_time"]
    assert LAYOUT_64.fields_touching(0, 9) == ["state", "padding", "state_entry_time"]
    assert LAYOUT_COMPAT.fields_touching(40, 44) == ["time[3]"]


def test_sum_wraps_modulo_2_64():
    # KVM's RUNSTATE_DATA check is u64 arithmetic: a sum that wraps still "adds up".
    big = (1 << 64) - 1
    info = RunstateInfo(0, 1, (big, 2, 0, 0))
    assert info.time_sum == 1 and info.exact


def test_decode_rejects_wrong_length():
    with pytest.raises(ValueError):
        decode(LAYOUT_64, bytes(44))


@settings(max_examples=300, deadline=None)
@given(layout=st.sampled_from(list(LAYOUTS.values())), data=st.data())
def test_fast_decode_equals_the_construct_declaration(layout, data):
    raw = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    c = layout.struct.parse(raw)
    info = decode(layout, raw)
    assert (info.state, info.state_entry_time_raw, list(info.time)) == \
        (c.state, c.state_entry_time, list(c.time))
    assert info.padding == (bytes(c.padding) if layout.has_padding else None)


@settings(max_examples=200, deadline=None)
@given(layout=st.sampled_from(list(LAYOUTS.values())),
       state=st.integers(-(1 << 31), (1 << 31) - 1), entry=st.integers(0, (1 << 64) - 1),
       times=st.lists(st.integers(0, (1 << 64) - 1), min_size=4, max_size=4),
       padding=st.binary(min_size=4, max_size=4))
def test_fast_encode_equals_the_construct_declaration(layout, state, entry, times, padding):
    values = dict(state=state, state_entry_time=entry, time=times)
    if layout.has_padding:
        values["padding"] = padding
    info = RunstateInfo(state, entry, tuple(times), padding if layout.has_padding else None)
    assert encode(layout, info) == layout.struct.build(values)
