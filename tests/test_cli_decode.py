"""``xenrs decode`` and ``xenrs info`` from the command line: output, errors, exit codes."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from clitools import cli, one_line_error
from xenrs_cli.cli import xenrs

REC64 = struct.pack("<i4sQ4Q", 1, b"\0" * 4, 5_200_000_000, 4_000_000_000, 200_000_000,
                    1_000_000_000, 0)
RECCOMPAT = struct.pack("<iQ4Q", 2, 7_000, 1_000, 2_000, 3_000, 1_000)


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def img(tmp_path):
    """A 4-page raw image: a 64-bit record crossing pages 1/2 at 0x1ff1, compat at 0x3000."""
    data = bytearray(4 * 4096)
    data[0x1ff1:0x1ff1 + 48] = REC64
    data[0x3000:0x3000 + 44] = RECCOMPAT
    p = tmp_path / "vm.raw"
    p.write_bytes(bytes(data))
    return p


def run(runner, *args, input=None):
    return runner.invoke(xenrs, [str(a) for a in args], input=input)


def test_decode_json_record(runner, img):
    r = run(runner, "decode", img, "--gpa", "0x1ff1", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    (line,) = r.stdout.splitlines()
    obj = json.loads(line)
    assert obj == {
        "dump": str(img), "gpa": "0x1ff1", "layout": "64", "layout_inferred": True, "size": 48,
        "state": "runnable", "state_code": 1, "state_entry_time": 5200000000,
        "update_in_progress": False,
        "time": {"running": 4000000000, "runnable": 200000000, "blocked": 1000000000,
                 "offline": 0},
        "time_sum": 5200000000, "unaccounted": 0, "accounting": "exact", "consistent": True,
        "steal": 200000000, "padding": "00000000",
        "crosses_page": True, "split_at": 15, "flag_byte_gpa": "0x2000",
        "pieces": [{"gpa": "0x1ff1", "offset": 0, "len": 15, "file_offset": 0x1ff1,
                    "status": "present"},
                   {"gpa": "0x2000", "offset": 15, "len": 33, "file_offset": 0x2000,
                    "status": "present"}],
        "raw": REC64.hex(), "warnings": []}


def test_several_gpas_and_stdin_gpas(runner, img):
    r = run(runner, "decode", img, "--gpa", "0x1ff1", "--gpa", "-", "--format", "json",
            input="# from a scan\n0x3000\n\n{\"gpa\": \"0x1ff1\"}\n")
    assert r.exit_code == 0, r.stderr
    gpas = [json.loads(l)["gpa"] for l in r.stdout.splitlines()]
    assert gpas == ["0x1ff1", "0x3000", "0x1ff1"]
    assert json.loads(r.stdout.splitlines()[1])["layout"] == "compat"


def test_base_syntax_and_underscores(runner, img):
    r = run(runner, "decode", f"{img}@0x8000_0000", "--gpa", "0x8000_1ff1", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["pieces"][1]["gpa"] == "0x80002000"


def test_csv(runner, img):
    r = run(runner, "decode", img, "--gpa", "0x1ff1", "--gpa", "0x3000", "--format", "csv")
    assert r.exit_code == 0
    header, row1, row2 = r.stdout.splitlines()
    assert header.startswith("dump,gpa,layout,layout_inferred,size,state,state_code,")
    assert "time_running" in header.split(",")
    assert ",0x1ff1,64,true,48,runnable,1,5200000000," in row1
    assert "0x1ff1+15:present 0x2000+33:present" in row1
    assert ",0x3000,compat," in row2


def test_table_and_hex(runner, img):
    r = run(runner, "decode", img, "--gpa", "0x1ff1", "--hex")
    assert r.exit_code == 0
    assert "crosses a page at +15" in r.stdout
    assert "│01" not in r.stdout  # the boundary sits before byte 15 (00), not a 01
    assert "│00" in r.stdout
    assert "5,200,000,000 ns" in r.stdout


def test_strict_flags_findings(runner, tmp_path):
    data = bytearray(4096)
    data[0:48] = struct.pack("<i4sQ4Q", 0, b"\0" * 4, (1 << 63) | 10, 4, 3, 2, 1)
    p = tmp_path / "mid.raw"
    p.write_bytes(bytes(data))
    r = run(runner, "decode", p, "--gpa", "0", "--layout", "64", "--format", "json")
    assert r.exit_code == 0
    assert "mid-update" in json.loads(r.stdout)["warnings"][0]
    r = run(runner, "decode", p, "--gpa", "0", "--layout", "64", "--format", "json", "--strict")
    assert r.exit_code == 1


def test_allow_missing_nulls_fields(runner, img):
    r = run(runner, "decode", img, "--gpa", "0x3fe0", "--layout", "64", "--format", "json",
            "--allow-missing")
    assert r.exit_code == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["state"] == "running" and obj["state_entry_time"] == 0
    # bytes 0..31 are in the image (up to time[1]); time[2] and time[3] are not.
    assert obj["time"] == {"running": 0, "runnable": 0, "blocked": None, "offline": None}
    assert obj["time_sum"] is None and obj["consistent"] is None and obj["steal"] is None
    assert [p["status"] for p in obj["pieces"]] == ["present", "absent"]


@pytest.mark.parametrize("args,code,needle", [
    (["decode", "{missing}", "--gpa", "0"], 3, "no such file"),
    (["decode", "{dir}", "--gpa", "0"], 3, "is a directory"),
    (["decode", "{empty}", "--gpa", "0"], 3, "is empty"),
    (["decode", "{img}", "--gpa", "0x4000"], 3, "GPA 0x4000-0x402f is absent"),
    (["decode", "{img}@0x10000", "--gpa", "0x1000"], 3, "absent"),
    (["decode", "{img}", "--gpa", "0xzz"], 2, "'0xzz' is not a guest-physical address"),
    (["decode", "{img}", "--gpa=-5"], 2, "'-5' is not a guest-physical address"),
    (["decode", "{img}", "--gpa", str(1 << 52)], 2, "below 2^52"),
    (["decode", "{img}", "--gpa", "1", "--layout", "128"], 2, "--layout"),
    (["decode", "{img}"], 2, "--gpa"),
    (["decode", "{img}", "--gpa", "-"], 2, "no GPA on stdin"),
    (["decode", "-", "--gpa", "0"], 3, "<stdin>: is empty"),
    (["decode", "-", "--gpa", "-"], 2, "cannot both be '-'"),
    (["decode", "{img}@0x123", "--gpa", "0"], 2, "not 4 KiB aligned"),
    (["decode", "{img}", "--gpa", "0", "--hex", "--format", "json"], 2, "--hex"),
    (["nosuchcommand"], 2, "No such command"),
])
def test_bad_input_one_line_and_exit_code(runner, img, tmp_path, args, code, needle):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "d").mkdir()
    subst = {"missing": tmp_path / "nope", "dir": tmp_path / "d", "empty": tmp_path / "empty",
             "img": img}
    r = run(runner, *[a.format(**subst) for a in args], input="")
    one_line_error(r, code, needle)


def test_one_bad_gpa_does_not_stop_the_others(runner, img):
    r = run(runner, "decode", img, "--gpa", "0x9000", "--gpa", "0x1ff1", "--format", "json")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["gpa"] == "0x1ff1"
    assert r.stderr.count("xenrs: error:") == 1


def test_internal_error_is_exit_70_with_hint(runner, img, monkeypatch):
    import xenrs_cli.decode

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(xenrs_cli.decode, "decode_at", boom)
    r = run(runner, "decode", img, "--gpa", "0")
    one_line_error(r, 70, "internal error: RuntimeError: kaboom", "--traceback")
    r = run(runner, "decode", img, "--gpa", "0", "--traceback")
    assert isinstance(r.exception, RuntimeError)


def test_info_json(runner, img):
    r = run(runner, "info", f"{img}@0x100000", "--format", "json")
    assert r.exit_code == 0
    obj = json.loads(r.stdout)
    assert obj["format"] == "raw" and obj["page_size"] == 4096
    assert obj["extents"] == [{"gpa": "0x100000", "end": "0x104000", "size": 16384,
                               "status": "present", "file_offset": 0, "detail": "raw image"}]


def test_info_table(runner, img):
    r = run(runner, "info", img, "--format", "table")
    assert r.exit_code == 0 and "raw" in r.stdout and "0x4000" in r.stdout


def test_version_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "xenrs_cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("xenrs ")


def test_closed_pipe_ends_quietly(img, tmp_path):
    gpas = tmp_path / "gpas"
    gpas.write_text("0x1ff1\n" * 20000)
    cmd = (f"{sys.executable} -m xenrs_cli decode {img} --gpa - --format json < {gpas} "
           "| head -n 1")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True)
    assert out.stdout.count("\n") == 1
    assert out.stderr == ""


def test_stdin_dump_spooled(img):
    with open(img, "rb") as f:
        data = f.read()
    out = subprocess.run([sys.executable, "-m", "xenrs_cli", "decode", "-", "--gpa", "0x3000",
                          "--format", "json"], input=data, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["dump"] == "-"


def test_output_file_is_replaced_only_on_success(runner, img, tmp_path):
    out = tmp_path / "records.jsonl"
    out.write_text("previous results\n")
    r = run(runner, "decode", img, "--gpa", "0x1ff1", "-o", out)
    assert r.exit_code == 0 and r.stdout == ""
    assert json.loads(out.read_text())["gpa"] == "0x1ff1"  # json: a file is not a terminal

    before = out.read_text()
    r = run(runner, "decode", img, "--gpa", "0x3000", "--gpa", "0x9000", "-o", out)
    assert r.exit_code == 3  # one GPA failed: the run failed, the file is untouched
    assert out.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.jsonl", "vm.raw"]


def test_output_file_kept_on_a_finding_and_bad_directory_is_a_usage_error(runner, tmp_path):
    data = bytearray(4096)
    data[0:48] = struct.pack("<i4sQ4Q", 0, b"\0" * 4, (1 << 63) | 10, 4, 3, 2, 1)
    p = tmp_path / "mid.raw"
    p.write_bytes(bytes(data))
    out = tmp_path / "mid.jsonl"
    r = run(runner, "decode", p, "--gpa", "0", "--layout", "64", "--strict", "-o", out)
    assert r.exit_code == 1 and json.loads(out.read_text())["update_in_progress"] is True
    r = run(runner, "decode", p, "--gpa", "0", "-o", tmp_path / "no" / "such" / "dir.json")
    one_line_error(r, 2, "--output")


@pytest.mark.parametrize("entry,hypervisor,accounting,consistent,needle", [
    # Xen: the sum trails the entry time by the vCPU's creation time (vcpu_create()).
    (10 + 5_000, "any", "offset", True, "5000 ns (0.000 s) ahead of sum(time[]): the vCPU's "
                                        "creation time in Xen system time"),
    (10 + 5_000, "xen", "offset", True, "as Xen writes it"),
    (10 + 5_000, "kvm", "offset", False, "which KVM never writes (--hypervisor kvm)"),
    (10 - 3, "any", "broken", False, "sum(time[]) is 3 ns (0.000 s) ahead of state_entry_time"),
])
def test_accounting_warning_says_which_way(runner, tmp_path, entry, hypervisor, accounting,
                                           consistent, needle):
    data = bytearray(4096)
    data[0:48] = struct.pack("<i4sQ4Q", 1, b"\0" * 4, entry, 4, 3, 2, 1)  # times sum to 10
    p = tmp_path / "xen.raw"
    p.write_bytes(bytes(data))
    r = run(runner, "decode", p, "--gpa", "0", "--layout", "64", "--format", "json",
            "--hypervisor", hypervisor, "--strict")
    obj = json.loads(r.stdout)
    assert obj["accounting"] == accounting and obj["unaccounted"] == entry - 10
    assert obj["consistent"] is consistent and obj["time_sum"] == 10
    assert any(needle in w for w in obj["warnings"]), obj["warnings"]
    # --strict: exit 1 only for what the chosen hypervisor cannot leave
    assert r.exit_code == (0 if consistent else 1)


def test_out_of_memory_is_an_input_error_not_a_bug(monkeypatch, tmp_path):
    import xenrs_cli.dumps as dumps

    def huge(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(dumps, "open_dump", huge)
    p = tmp_path / "x.raw"
    p.write_bytes(bytes(4096))
    r = cli("decode", p, "--gpa", "0")
    one_line_error(r, 3, "out of memory reading the dump")
