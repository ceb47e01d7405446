"""Golden traces: the exact writes of each model, written out by hand from the kernel/Xen code.

Values written (chosen so every byte is recognisable; the models do not check the sum rule):
state = 1 (runnable), state_entry_time E = 0x1122334455667788, time[] = 0xa0, 0xb1, 0xc2,
0xd3. So the flag-set byte is 0x91 (0x80 | 0x11), the flag-clear byte 0x11.
Area pages: 0xc0001000 (page 0) and 0xc0002000 (page 1).
"""

from __future__ import annotations

import pytest

from xenrs_cli.layouts import LAYOUT_64, LAYOUT_COMPAT, RunstateInfo
from xenrs_cli.models import MODELS
from xenrs_cli.trace import Barrier, Reject, Write

INFO = RunstateInfo(state=1, state_entry_time_raw=0x1122334455667788, time=(0xa0, 0xb1, 0xc2, 0xd3))

S = "01000000"                    # state = 1, int32 LE
P = "00000000"                    # 64-bit padding, zero when the model writes it
E = "8877665544332211"            # state_entry_time, flag clear
EU = "8877665544332291"           # state_entry_time | XEN_RUNSTATE_UPDATE (top byte 0x11|0x80)
T = ("a000000000000000" "b100000000000000" "c200000000000000" "d300000000000000")
SET, CLEAR = "91", "11"           # the flag byte: (E|U) >> 56 and E >> 56

IMG64_U = S + P + EU + T          # 48 bytes as built aside, flag set
IMG64 = S + P + E + T
IMGC_U = S + EU + T               # 44 bytes, compat
IMGC = S + E + T
B = "B"
PAGE = 0xc0001000


def w(kind: str, gpa: int, offset: int, data: str, page: int) -> tuple:
    return ("write", kind, gpa, offset, data, page)


def shape(records) -> list:
    out = []
    for r in records:
        if isinstance(r, Write):
            out.append(w(r.kind, r.gpa, r.offset, r.data.hex(), r.page))
        elif isinstance(r, Barrier):
            out.append(B)
        else:
            out.append(("reject", r.errno))
    return out


def run(model: str, layout, page_off: int, flag: bool = True, event: str = "update"):
    return MODELS[model](layout, PAGE + page_off, INFO, flag, event)


def kvm_fast(gpa: int, t: int, f: int, flag: bool) -> list:
    """KVM >= 6.2 fast path (SPEC §4): W1@F, B, W4@0 S, W8@t E|U, W32@t+8 T, B, W1@F, B."""
    if not flag:
        return [w("store", gpa, 0, S, 0), w("store", gpa + t, t, E, 0),
                w("copy", gpa + t + 8, t + 8, T, 0), B]
    return [w("store", gpa + f, f, SET, 0), B, w("store", gpa, 0, S, 0),
            w("store", gpa + t, t, EU, 0), w("copy", gpa + t + 8, t + 8, T, 0), B,
            w("store", gpa + f, f, CLEAR, 0), B]


def kvm_split(gpa: int, img: str, l1: int, f: int, fpage: int) -> list:
    """KVM >= 6.2 page-split path: flag byte, B, memcpy user_len1, memcpy user_len2, B, flag, B."""
    return [w("store", gpa + f, f, SET, fpage), B,
            w("copy", gpa, 0, img[:2 * l1], 0), w("copy", gpa + l1, l1, img[2 * l1:], 1), B,
            w("store", gpa + f, f, CLEAR, fpage), B]


G = PAGE
KVM_GOLDEN = [
    # (layout, page offset, flag, expected) — kernel-facts §9 vectors 2..10
    (LAYOUT_64, 0xfcf, True, kvm_fast(G + 0xfcf, 8, 15, True)),
    (LAYOUT_64, 0xfd0, True, kvm_fast(G + 0xfd0, 8, 15, True)),  # ends at the page end: fast
    (LAYOUT_64, 0xfd1, True, [w("store", G + 0xfe0, 15, "91", 0), B,
                              w("copy", G + 0xfd1, 0, IMG64_U[:94], 0),
                              w("copy", G + 0x1000, 47, "00", 1), B,   # top byte of time[3]
                              w("store", G + 0xfe0, 15, "11", 0), B]),
    (LAYOUT_64, 0xff0, True, [w("store", G + 0xfff, 15, "91", 0), B,
                              w("copy", G + 0xff0, 0, S + P + EU, 0),
                              w("copy", G + 0x1000, 16, T, 1), B,
                              w("store", G + 0xfff, 15, "11", 0), B]),
    (LAYOUT_64, 0xff1, True, [w("store", 0xc0002000, 15, "91", 1), B,   # the selftest's case
                              w("copy", 0xc0001ff1, 0, S + P + "88776655443322", 0),
                              w("copy", 0xc0002000, 15, "91" + T, 1), B,
                              w("store", 0xc0002000, 15, "11", 1), B]),
    (LAYOUT_64, 0xff8, True, kvm_split(G + 0xff8, IMG64_U, 8, 15, 1)),
    (LAYOUT_64, 0xfff, True, [w("store", G + 0x100e, 15, "91", 1), B,
                              w("copy", G + 0xfff, 0, "01", 0),
                              w("copy", G + 0x1000, 1, "000000" + P + EU + T, 1), B,
                              w("store", G + 0x100e, 15, "11", 1), B]),
    (LAYOUT_64, 0xfcf, False, kvm_fast(G + 0xfcf, 8, 15, False)),
    (LAYOUT_64, 0xff1, False, [w("copy", 0xc0001ff1, 0, S + P + "88776655443322", 0),
                               w("copy", 0xc0002000, 15, "11" + T, 1), B]),
    (LAYOUT_64, 0xfff, False, [w("copy", G + 0xfff, 0, "01", 0),
                               w("copy", G + 0x1000, 1, "000000" + P + E + T, 1), B]),
    (LAYOUT_COMPAT, 0xfd4, True, kvm_fast(G + 0xfd4, 4, 11, True)),  # 0xfd4 + 44 = 4096
    (LAYOUT_COMPAT, 0xff4, True, [w("store", G + 0xfff, 11, "91", 0), B,
                                  w("copy", G + 0xff4, 0, S + EU, 0),
                                  w("copy", G + 0x1000, 12, T, 1), B,
                                  w("store", G + 0xfff, 11, "11", 0), B]),
    (LAYOUT_COMPAT, 0xff5, True, [w("store", 0xc0002000, 11, "91", 1), B,
                                  w("copy", G + 0xff5, 0, S + "88776655443322", 0),
                                  w("copy", 0xc0002000, 11, "91" + T, 1), B,
                                  w("store", 0xc0002000, 11, "11", 1), B]),
    (LAYOUT_COMPAT, 0xffc, True, kvm_split(G + 0xffc, IMGC_U, 4, 11, 1)),
    (LAYOUT_COMPAT, 0xffc, False, [w("copy", G + 0xffc, 0, S, 0),
                                   w("copy", G + 0x1000, 4, E + T, 1), B]),
    (LAYOUT_COMPAT, 0xfd4, False, kvm_fast(G + 0xfd4, 4, 11, False)),
]


@pytest.mark.parametrize("layout,off,flag,expected", KVM_GOLDEN,
                         ids=[f"{l.name}-{o:#x}-{'flag' if f else 'noflag'}"
                              for l, o, f, _ in KVM_GOLDEN])
@pytest.mark.parametrize("event", ["update", "register"])
def test_kvm_golden(layout, off, flag, expected, event):
    # 5ec3289b31ab: RUNSTATE_ADDR writes the same sequence at once.
    assert shape(run("kvm", layout, off, flag, event)) == expected


def test_kvm_fields_groups_and_seq():
    recs = run("kvm", LAYOUT_64, 0xff1)
    assert [r.seq for r in recs] == list(range(len(recs)))
    assert [r.group for r in recs] == [0, 0, 1, 1, 1, 2, 2]
    assert [r.field for r in recs if isinstance(r, Write)] == [
        "state_entry_time", "state,padding,state_entry_time",
        "state_entry_time,time[0],time[1],time[2],time[3]", "state_entry_time"]
    assert [r.kind for r in recs if isinstance(r, Write)] == ["store", "copy", "copy", "store"]


KVM61_OK = [w("store", G + 0xfd0 + 8, 8, EU, 0), B, w("store", G + 0xfd0, 0, S, 0),
            w("copy", G + 0xfd0 + 16, 16, T, 0), B, w("store", G + 0xfd0 + 8, 8, E, 0), B]


@pytest.mark.parametrize("flag", [True, False])  # ignored: 6.1 always uses the flag
def test_kvm61_golden(flag):
    assert shape(run("kvm-6.1", LAYOUT_64, 0xfd0, flag)) == KVM61_OK
    assert shape(run("kvm-6.1", LAYOUT_COMPAT, 0xfcf, flag)) == [
        w("store", G + 0xfcf + 4, 4, EU, 0), B, w("store", G + 0xfcf, 0, S, 0),
        w("copy", G + 0xfcf + 12, 12, T, 0), B, w("store", G + 0xfcf + 4, 4, E, 0), B]


@pytest.mark.parametrize("layout", [LAYOUT_64, LAYOUT_COMPAT])
@pytest.mark.parametrize("off", [0xfd1, 0xfd4, 0xff1, 0xff5, 0xfff])
@pytest.mark.parametrize("event", ["update", "register"])
def test_kvm61_refuses_past_0xfd0(layout, off, event):
    # 48 bytes are mapped whatever the mode: compat at 0xfd4 would fit but is refused too.
    recs = run("kvm-6.1", layout, off, True, event)
    assert shape(recs) == [("reject", "EINVAL")]
    assert "0x%x" % off in recs[0].why


def test_kvm61_register_writes_nothing():
    assert run("kvm-6.1", LAYOUT_64, 0xfd0, True, "register") == []


XEN_GOLDEN = [
    (LAYOUT_64, 0xfcf, True, [w("store", G + 0xfde, 15, SET, 0), B,
                              w("copy", G + 0xfcf, 0, IMG64_U, 0), B,
                              w("store", G + 0xfde, 15, CLEAR, 0)]),
    (LAYOUT_64, 0xff1, True, [w("store", 0xc0002000, 15, SET, 1), B,
                              w("copy", 0xc0001ff1, 0, S + P + "88776655443322", 0),
                              w("copy", 0xc0002000, 15, "91" + T, 1), B,
                              w("store", 0xc0002000, 15, CLEAR, 1)]),
    (LAYOUT_64, 0xff1, False, [w("copy", 0xc0001ff1, 0, S + P + "88776655443322", 0),
                               w("copy", 0xc0002000, 15, "11" + T, 1)]),
    (LAYOUT_COMPAT, 0xff4, True, [w("store", G + 0xfff, 11, SET, 0), B,
                                  w("copy", G + 0xff4, 0, S + EU, 0),
                                  w("copy", G + 0x1000, 12, T, 1), B,
                                  w("store", G + 0xfff, 11, CLEAR, 0)]),
    (LAYOUT_COMPAT, 0x10, False, [w("copy", G + 0x10, 0, IMGC, 0)]),
]


@pytest.mark.parametrize("layout,off,flag,expected", XEN_GOLDEN)
def test_xen_golden(layout, off, flag, expected):
    assert shape(run("xen", layout, off, flag)) == expected


@pytest.mark.parametrize("flag", [True, False])
def test_xen_register_copies_without_flag(flag):
    assert shape(run("xen", LAYOUT_64, 0xff1, flag, "register")) == [
        w("copy", 0xc0001ff1, 0, S + P + "88776655443322", 0),
        w("copy", 0xc0002000, 15, "11" + T, 1)]
    assert shape(run("xen", LAYOUT_COMPAT, 0x10, flag, "register")) == [
        w("copy", G + 0x10, 0, IMGC, 0)]


@pytest.mark.parametrize("flag", [True, False])  # ignored: always the flag
def test_xen_phys_golden(flag):
    assert shape(run("xen-phys", LAYOUT_64, 0xfd0, flag)) == [
        w("store", G + 0xfd8, 8, EU, 0), B, w("copy", G + 0xfd0, 0, IMG64_U, 0), B,
        w("store", G + 0xfd8, 8, E, 0)]
    assert shape(run("xen-phys", LAYOUT_COMPAT, 0xfd4, flag)) == [
        w("store", G + 0xfd8, 4, EU, 0), B, w("copy", G + 0xfd4, 0, IMGC_U, 0), B,
        w("store", G + 0xfd8, 4, E, 0)]


@pytest.mark.parametrize("layout,off", [(LAYOUT_64, 0xfd8), (LAYOUT_64, 0x004), (LAYOUT_64, 0xff1),
                                        (LAYOUT_COMPAT, 0xfd8), (LAYOUT_COMPAT, 0x002),
                                        (LAYOUT_COMPAT, 0xff5)])
@pytest.mark.parametrize("event", ["update", "register"])
def test_xen_phys_refuses(layout, off, event):
    assert shape(run("xen-phys", layout, off, True, event)) == [("reject", "ENXIO")]


def test_xen_phys_register_only_validates():
    assert run("xen-phys", LAYOUT_64, 0xfd0, True, "register") == []
    assert run("xen-phys", LAYOUT_COMPAT, 0x004, True, "register") == []


def test_reject_record_json():
    from xenrs_cli.trace import to_json_dict

    rec = run("xen-phys", LAYOUT_64, 0x004)[0]
    assert isinstance(rec, Reject)
    assert to_json_dict(rec) == {"seq": 0, "op": "reject", "errno": "ENXIO", "why": rec.why}
    assert "not 8-byte aligned" in rec.why
