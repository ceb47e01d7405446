"""``xenrs scan`` on the command line: records, formats, warnings, errors, pipelines."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

from fixtures import fixture_path
from xenrs_cli.cli import xenrs

SCAN_FIELDS = {"dump", "gpa", "layout", "layout_inferred", "size", "state", "state_code",
               "state_entry_time", "update_in_progress", "time", "time_sum", "unaccounted", "accounting", "consistent",
               "steal", "padding", "crosses_page", "split_at", "flag_byte_gpa", "pieces", "raw",
               "warnings", "array_gpa", "array_index", "array_len", "ambiguous_with"}


@pytest.fixture(scope="module")
def d2():
    return str(fixture_path("d2.q72.elf"))


def run(*args, input=None):
    return CliRunner().invoke(xenrs, [str(a) for a in args], input=input)


def lines(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_json_records(d2):
    r = run("scan", d2, "--format", "json")
    assert r.exit_code == 0, r.stderr
    recs = lines(r)
    assert all(set(rec) == SCAN_FIELDS for rec in recs)
    by_gpa = {rec["gpa"]: rec for rec in recs}
    # the per-vCPU array: entry 1 crosses a page
    array = [by_gpa[hex(0xb40fb8 + 48 * i)] for i in range(4)]
    assert [(a["array_gpa"], a["array_index"], a["array_len"]) for a in array] == [
        ("0xb40fb8", i, 4) for i in range(4)]
    assert [a["state"] for a in array] == ["runnable", "running", "blocked", "running"]
    assert array[1]["crosses_page"] and array[1]["split_at"] == 24
    # above 4 GiB: compat at the end of RAM; the offline record with padding 0xffffffff is
    # one no hypervisor writes (Xen and KVM leave the padding zero): --loose shows it
    assert by_gpa["0x100ffffd4"]["layout"] == "compat"
    assert "0x10079d0c0" not in by_gpa
    loose = {rec["gpa"]: rec for rec in lines(run("scan", d2, "--format", "json", "--loose"))}
    assert loose["0x10079d0c0"]["state"] == "offline"
    assert loose["0x10079d0c0"]["padding"] == "ffffffff"
    assert all(rec["layout_inferred"] is False for rec in recs)
    assert [rec["gpa"] for rec in recs] == sorted((rec["gpa"] for rec in recs),
                                                  key=lambda g: int(g, 16))


def test_stderr_summary_and_quiet(d2):
    r = run("scan", d2, "--format", "json")
    assert r.stderr.startswith("xenrs: scan: GPA 0x0-0x101000000 ")
    assert "hit(s)" in r.stderr
    # misaligned records whose shifted readings were dropped are summarised in one line: a
    # count, a few examples and the way to see them
    (hidden,) = [l for l in r.stderr.splitlines() if l.startswith("xenrs: warning: ")]
    assert "record(s) at a start --align excludes were not reported" in hidden
    assert "0xa16ff1 (64)" in hidden and "use --align 1" in hidden
    # what the hypervisor rules left out: one line, counted per rule
    (rejected,) = [l for l in r.stderr.splitlines() if "look-alike(s)" in l]
    assert "padding 1" in rejected and "--loose shows them" in rejected
    q = run("scan", d2, "--format", "json", "-q")
    assert q.stderr == "" and q.stdout == r.stdout


def test_align_one_and_layout(d2):
    r = run("scan", d2, "--align", "1", "--layout", "compat", "--format", "json", "-q")
    gpas = {rec["gpa"] for rec in lines(r)}
    assert {"0xa27ff5", "0x10057b6a2", "0x100ffffd4"} <= gpas
    assert all(rec["layout"] == "compat" for rec in lines(r))


def test_range_and_min_entry_time(d2):
    r = run("scan", d2, "--range", "0x100000000-0x101000000", "--format", "json", "-q")
    assert all(int(rec["gpa"], 16) >= 0x100000000 for rec in lines(r)) and lines(r)
    r = run("scan", d2, "--min-entry-time", "0x4000_0000_0000_0000", "--format", "json", "-q")
    assert r.exit_code == 0 and r.stdout == ""


def test_csv_and_table(d2):
    r = run("scan", d2, "--format", "csv", "-q")
    rows = r.stdout.splitlines()
    assert rows[0].split(",")[:3] == ["dump", "gpa", "layout"]
    assert "array_index" in rows[0] and "ambiguous_with" in rows[0]
    assert len(rows) == 1 + len(lines(run("scan", d2, "--format", "json", "-q")))
    t = run("scan", d2, "--format", "table", "-q")
    assert t.exit_code == 0 and "0xb40fb8" in t.stdout and "runstate area" in t.stdout


def test_scan_into_decode(d2):
    scan = run("scan", d2, "--format", "json", "-q")
    dec = run("decode", d2, "--gpa", "-", "--format", "json", "-q", input=scan.stdout)
    assert dec.exit_code == 0, dec.stderr
    assert [r["gpa"] for r in lines(dec)] == [r["gpa"] for r in lines(scan)]


@pytest.mark.parametrize("args", [["--align", "2"], ["--range", "0x2000-0x1000"],
                                  ["--range", "nonsense"], ["--min-entry-time", "-1"],
                                  ["--layout", "32"]])
def test_usage_errors(d2, args):
    r = run("scan", d2, *args)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("xenrs: error: ") and r.stderr.count("\n") == 1


def test_input_errors(tmp_path):
    r = run("scan", tmp_path / "nope.raw")
    assert r.exit_code == 3 and r.stderr.startswith("xenrs: error: ") and r.stdout == ""


def test_numpy_missing_is_one_line_with_the_install_hint(tmp_path):
    img = tmp_path / "z.raw"
    img.write_bytes(bytes(8192))
    code = ("import sys\nsys.modules['numpy'] = None\nfrom xenrs_cli.cli import xenrs\n"
            f"sys.argv = ['xenrs', 'scan', {str(img)!r}]\nxenrs.main()")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 3 and p.stdout == ""
    assert p.stderr == ("xenrs: error: xenrs scan needs numpy, which is not installed: run pip "
                        "install 'xenrs[scan]' (or pip install numpy)\n")


def test_no_progress_bar_off_a_terminal(tmp_path):
    img = tmp_path / "z.raw"
    img.write_bytes(bytes(1 << 20))
    p = subprocess.run([sys.executable, "-m", "xenrs_cli", "scan", str(img)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout == ""
    assert p.stderr.startswith("xenrs: scan: ") and p.stderr.count("\n") == 1  # no bar, no ANSI
    assert "\x1b" not in p.stderr


def test_selftest_area_with_round_counters_is_found_unshifted():
    # examples/guest.raw: the 64-bit area at 0xc0001ff1 has counters that are all multiples
    # of 256, so its one-byte-later reading passes the rules too (as value / 256, 20 ms of
    # entry time); the one that meets --min-entry-time is the record.
    img = f"{pathlib.Path(__file__).parent.parent / 'examples' / 'guest.raw'}@0xc0000000"
    r = run("scan", img, "--align", "1", "--format", "json", "-q")
    assert [(x["gpa"], x["layout"]) for x in lines(r)] == [
        ("0xc0001ff1", "64"), ("0xc0001ff5", "compat"), ("0xc0002404", "compat")]
    r = run("scan", img, "--format", "json")
    assert "0xc0001ff1 (64)" in r.stderr and "0xc0001ff2" not in r.stderr
