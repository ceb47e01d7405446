"""``xenrs simulate`` from the command line: traces, errors, exit codes, dumps, ``xxd -r``."""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from xenrs_cli.cli import xenrs

DATA = Path(__file__).parent / "data"

# d1 case "cross64_flag_first_in_next" (tests/data/MANIFEST.json): a 64-bit record at 0x625ff1,
# its flag byte the first byte of the next page.
CROSS_GPA = 0x625ff1
CROSS_ENTRY = 0x000008be4a4b16ec
CROSS_TIMES = (7228656944926, 440390723278, 1944335575296, 0)


@pytest.fixture(scope="session")
def d1_raw(tmp_path_factory) -> Path:
    """``d1.q72.raw`` (32 MiB, GPA = file offset), decompressed once for this module."""
    out = tmp_path_factory.mktemp("simulate-dumps") / "d1.q72.raw"
    out.write_bytes(lzma.decompress((DATA / "d1.q72.raw.xz").read_bytes()))
    return out


def run(*args, input=None):
    return CliRunner().invoke(xenrs, ["simulate", *[str(a) for a in args]], input=input)


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_split_default_is_the_selftest_case():
    r = run("--split")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    out = r.stdout.splitlines()
    # SPEC §4's example records, verbatim
    assert out[0] == ('{"seq": 0, "op": "write", "kind": "store", "group": 0, "gpa": "0xc0002000", '
                      '"offset": 15, "len": 1, "page": 1, "data": "80", "field": '
                      '"state_entry_time", "why": "set XEN_RUNSTATE_UPDATE"}')
    assert out[1] == '{"seq": 1, "op": "barrier", "group": 0, "kind": "smp_wmb"}'
    recs = lines(r)
    # default values: running, entry 5.2 s = 0x135f1b400, times 4 s, 0.2 s, 1 s, 0
    assert [(x["op"], x.get("gpa"), x.get("len"), x.get("data")) for x in recs] == [
        ("write", "0xc0002000", 1, "80"),
        ("barrier", None, None, None),
        ("write", "0xc0001ff1", 15, "00000000" "00000000" "00b4f135010000"),
        ("write", "0xc0002000", 33, "80" "00286bee00000000" "00c2eb0b00000000"
                                    "00ca9a3b00000000" "0000000000000000"),
        ("barrier", None, None, None),
        ("write", "0xc0002000", 1, "00"),
        ("barrier", None, None, None),
    ]
    assert [x["kind"] for x in recs] == ["store", "smp_wmb", "copy", "copy", "smp_wmb", "store",
                                         "smp_wmb"]


def test_compat_split_and_values():
    r = run("--split", "--layout", "compat", "--state", "blocked",
            "--time", "running=0x10,blocked=0x20", "--no-update-flag")
    assert r.exit_code == 0, r.stderr
    recs = lines(r)
    assert [(x["op"], x.get("gpa"), x.get("data")) for x in recs] == [
        ("write", "0xc0001ff5", "02000000" "30000000000000"),
        ("write", "0xc0002000", "00" "1000000000000000" "0000000000000000" "2000000000000000"
                                "0000000000000000"),
        ("barrier", None, None),
    ]


@pytest.mark.parametrize("args,message", [
    (["--split", "--gpa", "0x1000"], "--split and --gpa are exclusive"),
    (["--time", "running=5", "--entry-time", "6"], "--allow-inconsistent"),
    (["--state", "7"], "state '7' is not one of"),
    (["--time", "idle=3"], "'idle=3' is not NAME=N"),
    (["--now", "5"], "--now applies to --transition"),
    (["--transition", "running"], "--transition needs --now"),
    (["--transition", "running", "--now", "9", "--state", "0"], "drop --state"),
    (["--images", "--format", "json"], "--images applies to the table format"),
    (["--gpa", "0x10000000000000"], "is not a guest-physical address"),
    (["--entry-time", "5"], "--entry-time needs --time"),
])
def test_usage_errors(args, message):
    r = run(*args)
    assert r.exit_code == 2
    assert r.stdout == ""
    err = r.stderr.splitlines()
    assert len(err) == 1 and err[0].startswith("xenrs: error: ") and message in err[0]


def test_allow_inconsistent():
    r = run("--time", "running=5", "--entry-time", "6", "--allow-inconsistent", "--gpa", "0x1000",
            "--no-update-flag")
    assert r.exit_code == 0
    assert lines(r)[1]["data"] == "0600000000000000"


@pytest.mark.parametrize("model,gpa,errno", [("kvm-6.1", "0xc0001fd8", "EINVAL"),
                                             ("xen-phys", "0xc0001ff1", "ENXIO"),
                                             ("xen-phys", "0xc0001004", "ENXIO")])
@pytest.mark.parametrize("event", ["update", "register"])
def test_refusal_exit_1(model, gpa, errno, event):
    r = run("--model", model, "--gpa", gpa, "--event", event)
    assert r.exit_code == 1
    (rec,) = lines(r)
    assert rec["seq"] == 0 and rec["op"] == "reject" and rec["errno"] == errno and rec["why"]


def test_register_events():
    assert run("--model", "kvm-6.1", "--event", "register").stdout == ""
    assert run("--model", "xen-phys", "--event", "register", "--gpa", "0x1000").stdout == ""
    xen = lines(run("--model", "xen", "--event", "register", "--split"))
    assert [x["len"] for x in xen] == [15, 33] and xen[1]["data"][:2] == "00"
    kvm = lines(run("--event", "register", "--split"))
    assert kvm == lines(run("--split"))  # KVM >= 6.2 writes the update sequence at once


def test_csv():
    r = run("--format", "csv", "--model", "kvm-6.1")
    assert r.exit_code == 0
    rows = r.stdout.splitlines()
    assert rows[0] == "seq,op,kind,group,gpa,offset,len,page,data,field,why,errno"
    assert rows[1].startswith("0,write,store,0,0xc0001028,8,8,0,00b4f13501000080,"
                              "state_entry_time,")
    assert rows[2] == "1,barrier,smp_wmb,0,,,,,,,,"


def test_table_and_images():
    r = run("--split", "--images")
    assert r.exit_code == 0
    assert "smp_wmb" in r.stdout and "0xc0002000" in r.stdout and "┃" in r.stdout
    assert "before" in r.stdout
    r = run("--format", "table", "--model", "kvm-6.1", "--gpa", "0xc0001fd8")
    assert r.exit_code == 1 and "REFUSED" in r.stdout and "EINVAL" in r.stderr


def test_from_dump_transition(d1_raw):
    now = CROSS_ENTRY + 1_000
    r = run("--from-dump", d1_raw, "--gpa", hex(CROSS_GPA), "--transition", "runnable",
            "--now", now, "--steal", 100)
    assert r.exit_code == 0, r.stderr
    recs = lines(r)
    body = [x for x in recs if x["op"] == "write" and x["kind"] == "copy"]
    # kvm_xen_update_runstate(): 900 ns more running, 100 ns of steal to runnable
    expect = struct.pack("<i4sQ4Q", 1, bytes(4), now | 1 << 63, CROSS_TIMES[0] + 900,
                         CROSS_TIMES[1] + 100, CROSS_TIMES[2], CROSS_TIMES[3])
    assert bytes.fromhex(body[0]["data"] + body[1]["data"]) == expect
    assert (body[0]["gpa"], body[0]["len"]) == (hex(CROSS_GPA), 15)


@pytest.mark.parametrize("stored", ["d1.q72.elf.xz", "d1.q72.kdump-zlib.kdump.xz"])
def test_from_dump_any_format(d1_raw, tmp_path, stored):
    """The same before-image, hence the same trace, from the ELF and kdump dumps of d1."""
    other = tmp_path / stored.removesuffix(".xz")
    other.write_bytes(lzma.decompress((DATA / stored).read_bytes()))
    args = ["--gpa", hex(CROSS_GPA), "--transition", "blocked", "--now", CROSS_ENTRY + 7,
            "--images", "--format", "table"]
    raw = run("--from-dump", d1_raw, *args)
    got = run("--from-dump", other, *args)
    assert raw.exit_code == got.exit_code == 0, got.stderr
    assert got.stdout == raw.stdout and "ec 16 4b 4a be 08" in raw.stdout  # the dump's entry time


def test_from_dump_outside(d1_raw):
    r = run("--from-dump", d1_raw, "--gpa", "0x4000000")
    assert r.exit_code == 3
    assert r.stderr.startswith("xenrs: error: GPA 0x4000000-0x400002f is absent")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(shutil.which("xxd") is None, reason="xxd is not installed (CI installs it)")
@pytest.mark.parametrize("layout,gpa", [("64", CROSS_GPA), ("compat", 0x67aff5),
                                        ("64", 0x6036a8)])
def test_xxd_patch_round_trip(d1_raw, tmp_path, layout, gpa):
    copy = tmp_path / "copy.raw"
    shutil.copyfile(d1_raw, copy)
    original = sha(d1_raw)
    now = 0x0000_0900_0000_0000
    r = run("--from-dump", d1_raw, "--gpa", hex(gpa), "--layout", layout,
            "--transition", "blocked", "--now", now, "--format", "xxd")
    assert r.exit_code == 0, r.stderr
    patch = tmp_path / "patch.xxd"
    patch.write_text(r.stdout)
    subprocess.run(["xxd", "-r", str(patch), str(copy)], check=True)
    assert sha(d1_raw) == original and copy.stat().st_size == d1_raw.stat().st_size
    dec = CliRunner().invoke(xenrs, ["decode", str(copy), "--gpa", hex(gpa), "--layout", layout,
                                     "--format", "json"])
    rec = json.loads(dec.stdout)
    before = json.loads(CliRunner().invoke(xenrs, ["decode", str(d1_raw), "--gpa", hex(gpa),
                                                   "--layout", layout, "--format", "json"]).stdout)
    assert rec["state"] == "blocked" and rec["state_entry_time"] == now
    assert not rec["update_in_progress"] and rec["consistent"]
    left = before["state"]
    assert rec["time"][left] == before["time"][left] + now - before["state_entry_time"]
    assert rec["padding"] == before["padding"]
    # nothing outside the area changed
    a, b = d1_raw.read_bytes(), copy.read_bytes()
    size = 48 if layout == "64" else 44
    assert a[:gpa] == b[:gpa] and a[gpa + size:] == b[gpa + size:]
