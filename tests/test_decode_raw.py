"""Decoding through raw images built by an independent writer (stdlib ``struct`` only)."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from xenrs_cli.address_space import AddressSpace, LinearSegment, Status
from xenrs_cli.decode import decode_at, to_json_dict

# The writer's own idea of the layouts: shares nothing with xenrs_cli.layouts.
PACK = {"64": struct.Struct("<i4sQ4Q"), "compat": struct.Struct("<iQ4Q")}
ENTRY_OFFSET = {"64": 8, "compat": 4}
BASE = 0x7ff000  # the image covers GPAs [BASE, BASE + 3 pages)

u64 = st.integers(0, (1 << 64) - 1)


def pack(layout, state, entry_raw, times, padding=b"\0\0\0\0"):
    if layout == "64":
        return PACK[layout].pack(state, padding, entry_raw, *times)
    return PACK[layout].pack(state, entry_raw, *times)


def raw_space(image: bytes, base: int = BASE) -> AddressSpace:
    return AddressSpace([LinearSegment(base, len(image), image, 0)])


@settings(max_examples=300, deadline=None)
@given(offset=st.integers(0, 4095), layout=st.sampled_from(["64", "compat"]),
       state=st.integers(-(1 << 31), (1 << 31) - 1), entry=u64,
       times=st.tuples(u64, u64, u64, u64), padding=st.binary(min_size=4, max_size=4))
def test_any_page_offset_decodes_back(offset, layout, state, entry, times, padding):
    size = PACK[layout].size
    image = bytearray(b"\xa5" * 3 * 4096)  # sentinel around the struct
    at = 4096 + offset
    image[at:at + size] = pack(layout, state, entry, times, padding)
    gpa = BASE + at

    d = decode_at(raw_space(bytes(image)), gpa, layout)
    obj = to_json_dict(d, "img")

    assert d.info.state == state and d.info.state_entry_time_raw == entry
    assert d.info.time == times
    assert obj["state_entry_time"] == entry & ~(1 << 63)
    assert obj["update_in_progress"] == bool(entry >> 63)
    assert obj["padding"] == (padding.hex() if layout == "64" else None)
    split = 4096 - offset if offset + size > 4096 else None
    assert obj["split_at"] == split and obj["crosses_page"] == (split is not None)
    assert obj["flag_byte_gpa"] == hex(gpa + ENTRY_OFFSET[layout] + 7)
    lens = [size] if split is None else [split, size - split]
    assert [p["len"] for p in obj["pieces"]] == lens
    assert [p["offset"] for p in obj["pieces"]] == [0, lens[0]][:len(lens)]
    assert [p["file_offset"] for p in obj["pieces"]] == [at, at + lens[0]][:len(lens)]
    assert {p["status"] for p in obj["pieces"]} == {"present"}
    assert obj["raw"] == bytes(image[at:at + size]).hex()


@settings(max_examples=100, deadline=None)
@given(offset=st.integers(0, 4095), layout=st.sampled_from(["64", "compat"]),
       times=st.tuples(*[st.integers(0, 1 << 50)] * 4), state=st.integers(0, 3))
def test_auto_picks_the_written_layout_when_only_it_is_plausible(offset, layout, times, state):
    size = PACK[layout].size
    image = bytearray(3 * 4096)
    at = 4096 + offset
    image[at:at + size] = pack(layout, state, sum(times), times)
    d = decode_at(raw_space(bytes(image)), BASE + at, "auto")
    other = "compat" if layout == "64" else "64"
    other_bytes = bytes(image[at:at + PACK[other].size])
    o = PACK[other].unpack(other_bytes)
    o_entry, o_times = (o[2], o[3:]) if other == "64" else (o[1], o[2:])
    # SPEC §3: state 0..3 and an accounting that is not broken (§7: exact, or every time and
    # their sum below the entry time)
    entry = o_entry & ~(1 << 63)
    other_plausible = 0 <= o[0] <= 3 and (entry == sum(o_times) % (1 << 64) or (
        sum(o_times) < entry and max(o_times) <= entry))
    assert d.layout_inferred
    if other_plausible:
        assert d.layout.name == "64" and d.layout_warning
    else:
        assert d.layout.name == layout and d.layout_warning is None


def test_pieces_across_segments_and_holes():
    # Two GPA-adjacent segments stored far apart in the file, then a hole.
    image = bytes(range(256)) * 64  # 16 KiB
    space = AddressSpace([LinearSegment(0x1000, 0x800, image, 0x2000),
                          LinearSegment(0x1800, 0x800, image, 0x100)])
    data, pieces = space.read(0x17f8, 0x10)
    assert data == image[0x27f8:0x2800] + image[0x100:0x108]
    assert [(p.gpa, p.offset, p.len, p.file_offset, p.status) for p in pieces] == [
        (0x17f8, 0, 8, 0x27f8, Status.PRESENT), (0x1800, 8, 8, 0x100, Status.PRESENT)]
    data, pieces = space.read(0x1ff8, 0x10)
    assert data[8:] == bytes(8)
    assert [(p.gpa, p.len, p.status) for p in pieces] == [
        (0x1ff8, 8, Status.PRESENT), (0x2000, 8, Status.ABSENT)]


def test_absent_run_merges_across_pages_in_the_error():
    space = AddressSpace([LinearSegment(0x3000, 0x1000, bytes(0x1000), 0)])
    from xenrs_cli.errors import UnmappedAddressError
    import pytest

    with pytest.raises(UnmappedAddressError) as e:
        space.read_present(0x1ff0, 0x1100)
    assert (e.value.gpa, e.value.size, e.value.status) == (0x1ff0, 0x1010, "absent")


def test_runs_cover_holes_and_segments_in_order():
    from xenrs_cli.address_space import ZeroSegment

    space = AddressSpace([LinearSegment(0x2000, 0x1000, bytes(0x1000), 0),
                          ZeroSegment(0x3000, 0x800), LinearSegment(0x5000, 0x10, bytes(16), 0)])
    got = [(r.gpa, r.size, r.status) for r in space.runs(0x1800, 0x6000)]
    assert got == [(0x1800, 0x800, Status.ABSENT), (0x2000, 0x1000, Status.PRESENT),
                   (0x3000, 0x800, Status.ZERO_FILLED), (0x3800, 0x1800, Status.ABSENT),
                   (0x5000, 0x10, Status.PRESENT), (0x5010, 0xff0, Status.ABSENT)]
    # clipped inside a segment
    assert [(r.gpa, r.size) for r in space.runs(0x2100, 0x2200)] == [(0x2100, 0x100)]


def test_auto_fallback_does_not_claim_a_flag_it_guessed():
    # A broken compat record (sum ahead of the entry time) whose bytes read as 64-bit put a
    # byte of compat time[0] with its top bit set at bit 63 of the 64-bit state_entry_time: the
    # 64-bit reading is a guess, so no "XEN_RUNSTATE_UPDATE is set" warning comes with it.
    times = (0x8000_0001, 5, 6, 7)
    rec = pack("compat", 2, 1_000, times)
    image = bytearray(3 * 4096)
    image[4096:4096 + len(rec)] = rec
    d = decode_at(raw_space(bytes(image)), BASE + 4096, "auto")
    assert d.layout.name == "64" and "neither layout is plausible" in d.layout_warning
    assert d.info.update_in_progress  # the 64-bit reading's bit 63 is set...
    assert not any("XEN_RUNSTATE_UPDATE" in w for w in d.warnings)  # ...but not claimed
    # read as compat on purpose, the record is what it is: broken, no flag
    c = decode_at(raw_space(bytes(image)), BASE + 4096, "compat")
    assert c.info.accounting.value == "broken" and not c.info.update_in_progress
