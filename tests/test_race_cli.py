"""``xenrs race`` and ``xenrs sweep`` from the command line: JSON contract, exit codes, errors."""

from __future__ import annotations

import json
import pathlib

import pytest
from click.testing import CliRunner

from xenrs_cli.cli import xenrs

RACE_KEYS = ["model", "layout", "gpa", "reader", "update_flag", "event", "refused", "torn",
             "cause", "witness"]
SWEEP_KEYS = ["model", "layout", "reader", "update_flag", "offsets", "refused", "torn",
              "torn_writer", "torn_reader", "torn_offsets"]


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args):
    return runner.invoke(xenrs, [str(a) for a in args])


def one_json(result) -> dict:
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_race_default_is_not_torn(runner):
    r = run(runner, "race", "--format", "json")
    assert r.exit_code == 0, r.stderr
    obj = one_json(r)
    assert list(obj) == RACE_KEYS
    assert obj == {"model": "kvm", "layout": "64", "gpa": "0xc0001020", "reader": "linux64",
                   "update_flag": True, "event": "update", "refused": False, "torn": False,
                   "cause": None, "witness": None}
    assert r.stderr == ""


def test_race_seed_commit_bug_json(runner):
    r = run(runner, "race", "--model", "kvm-6.1", "--gpa", "0xc000_1034", "--format", "json")
    assert r.exit_code == 1
    obj = one_json(r)
    assert obj["torn"] is True and obj["cause"] == "writer"
    w = obj["witness"]
    assert set(w) == {"timeline", "r1", "r2", "copy", "before", "after", "fields",
                      "torn_fields"}
    assert w["r1"] == w["r2"] == 5_200_000_000 and isinstance(w["r1"], int)
    writers = [row for row in w["timeline"] if row["actor"] == "writer"]
    assert writers == [{"step": 1, "actor": "writer", "seq": 0, "group": 0, "kind": "store",
                        "part": "line 0", "offset": 8, "len": 4, "data": "00b4f135",
                        "field": "state_entry_time"}]
    assert w["copy"]["state"] == "runnable" and w["copy"]["time"]["runnable"] == 199_000_000
    assert w["torn_fields"] == ["state", "time[1]"]
    assert w["copy"]["raw"] == w["copy"]["raw"].lower() and len(w["copy"]["raw"]) == 96


def test_race_table_shows_verdict_witness_and_fields(runner):
    r = run(runner, "race", "--model", "kvm-6.1", "--gpa", "0xc0001034", "--format", "table")
    assert r.exit_code == 1
    out = r.stdout
    assert "TORN (cause: writer)" in out and "R1[8..11]" in out and "C[8..47]" in out
    assert "R1 = R2 = 0x0000000135f1b400" in out and "TORN" in out.split("accepted")[-1]


def test_race_no_flag_reader_override_and_before(runner):
    r = run(runner, "race", "--no-update-flag", "--layout", "compat", "--reader", "linux64",
            "--before", "state=runnable,entry=5199000000,running=4000000000,"
                        "runnable=199000000,blocked=1000000000", "--format", "json")
    assert r.exit_code == 1
    obj = one_json(r)
    assert obj["reader"] == "linux64" and obj["layout"] == "compat" and obj["torn"]
    assert obj["witness"]["before"].startswith("01000000")  # state runnable, as given


def test_race_refused_exit_1_json(runner):
    r = run(runner, "race", "--model", "xen-phys", "--gpa", "0xc0001004", "--format", "json")
    assert r.exit_code == 1
    obj = one_json(r)
    assert obj["refused"] is True and obj["torn"] is False and obj["witness"] is None


def test_race_refused_table(runner):
    r = run(runner, "race", "--model", "kvm-6.1", "--gpa", "0xc0001fd8", "--format", "table")
    assert r.exit_code == 1 and "REFUSED EINVAL" in r.stdout


def test_race_csv_one_row(runner):
    r = run(runner, "race", "--model", "kvm-6.1", "--gpa", "0xc0001034", "--format", "csv")
    assert r.exit_code == 1
    header, row = r.stdout.splitlines()
    assert header.startswith("model,layout,gpa,reader,update_flag,event,refused,torn,cause")
    assert ",true,writer," in row


@pytest.mark.parametrize("args,needle", [
    (["--before", "state=9"], "--before"),
    (["--before", "entry=0x8000000000000000"], "bit 63"),
    (["--reader", "linux16"], "linux16"),
    (["--gpa", "0x10000000000000"], "below 2^52"),
    (["--split", "--gpa", "0x1000"], "exclusive"),
])
def test_race_usage_errors(runner, args, needle):
    r = run(runner, "race", *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("xenrs: error: ") and needle in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_sweep_json_kvm_6_1(runner):
    r = run(runner, "sweep", "--model", "kvm-6.1", "--format", "json")
    assert r.exit_code == 1
    obj = one_json(r)
    assert list(obj) == SWEEP_KEYS
    assert (obj["offsets"], obj["refused"], obj["torn"], obj["torn_writer"]) == \
        (4096, 47, 441, 441)
    assert obj["torn_offsets"][0] == [49, 55]


def test_sweep_xen_phys_64_not_torn_exit_0(runner):
    r = run(runner, "sweep", "--model", "xen-phys", "--format", "json")
    assert r.exit_code == 0
    obj = one_json(r)
    # Only 8-aligned offsets whose 48 bytes fit are accepted: 0x000..0xfd0 step 8 = 507.
    assert obj["refused"] == 4096 - 507 and obj["torn"] == 0 and obj["torn_offsets"] == []


def test_sweep_table_draws_the_page_map(runner):
    r = run(runner, "sweep", "--model", "kvm-6.1", "--page", "0x5000", "--format", "table")
    assert r.exit_code == 1
    rows = [line for line in r.stdout.splitlines() if line.startswith("0x") and "  " in line]
    grid = [line.split("  ", 1)[1] for line in rows]
    assert len(grid) == 64 and all(len(g) == 64 for g in grid)
    assert grid[0] == "." * 49 + "W" * 7 + "." * 8
    assert grid[63] == "." * 17 + "x" * 47
    assert "page 0x5000" in r.stdout


def test_sweep_csv(runner):
    r = run(runner, "sweep", "--model", "kvm-6.1", "--format", "csv")
    header, row = r.stdout.splitlines()
    assert header == ",".join(SWEEP_KEYS)
    assert row.startswith("kvm-6.1,64,linux64,true,4096,47,441,441,0,49-55 113-119")


@pytest.mark.parametrize("args,needle", [
    (["--gpa", "0x1000"], "--gpa does not apply"),
    (["--split"], "--split does not apply"),
    (["--all", "--layout", "compat"], "drop --layout"),
    (["--all", "--no-update-flag"], "drop --update-flag"),
])
def test_sweep_usage_errors(runner, args, needle):
    r = run(runner, "sweep", *args)
    assert r.exit_code == 2 and needle in r.stderr and r.stdout == ""
    assert len(r.stderr.splitlines()) == 1


def test_race_transition_accounts_from_before(runner):
    # runnable since 5000 ns with 100 ns run before; at 9000 ns the vCPU runs again:
    # time[runnable] += 9000 - 5100, entry = 9000 (kvm_xen_update_runstate()).
    r = run(runner, "race", "--before", "state=runnable,runnable=5000,running=100,entry=5100",
            "--transition", "running", "--now", "9000", "--no-update-flag", "--format", "json")
    assert r.exit_code == 1, r.stderr
    w = one_json(r)["witness"]
    after = bytes.fromhex(w["after"])
    assert int.from_bytes(after[8:16], "little") == 9000
    assert int.from_bytes(after[24:32], "little") == 9000 - 100
    assert int.from_bytes(bytes.fromhex(w["before"])[8:16], "little") == 5100


def test_race_transition_with_before_needs_now(runner):
    r = run(runner, "race", "--before", "state=runnable", "--transition", "running")
    assert r.exit_code == 2 and "--now" in r.stderr


# --- the README fragment shows real output ---------------------------------------------------

_ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = _ROOT / "README.md"


def test_doc_race_table_is_real_output(runner):
    text = DOC.read_text()
    block = text.split("$ xenrs race --model kvm-6.1 --gpa 0xc0001034 --format table\n", 1)[1]
    shown = block.split("```", 1)[0].split("\n$ ", 1)[0].rstrip("\n")  # up to `$ echo $?`
    r = run(runner, "race", "--model", "kvm-6.1", "--gpa", "0xc0001034", "--format", "table")
    got = "\n".join(line.rstrip() for line in r.stdout.rstrip("\n").splitlines())
    assert got == shown


def test_doc_race_record_is_real_output(runner):
    block = DOC.read_text().split("#### The race record (JSON)", 1)[1].split("```json\n", 1)[1]
    shown = json.loads(block.split("```", 1)[0])
    r = run(runner, "race", "--model", "kvm-6.1", "--gpa", shown["gpa"], "--format", "json")
    assert one_json(r) == shown


def test_doc_headline_table_is_real_output():
    """The headline rows are what `sweep --all` prints (checked in-process, not via the CLI,
    to keep the suite fast: the sweep core is what the command runs)."""
    from xenrs_cli.layouts import LAYOUTS
    from xenrs_cli.readers import default_reader
    from xenrs_cli.simulate import DEFAULT_VALUES, Scenario, default_before_image
    from xenrs_cli.sweep import matrix, sweep

    section = DOC.read_text().split("#### Headline", 1)[1]
    table = section.split("\n| model", 1)[1].split("\n\n", 1)[0]  # the first table only
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(list(matrix())) == 12
    for row, (model, layout, flag) in zip(rows, matrix()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        lay = LAYOUTS[layout]
        sc = Scenario(model, layout, 0xc0001000, flag, "update", DEFAULT_VALUES,
                      default_before_image(lay, DEFAULT_VALUES))
        d = sweep(sc, default_reader(lay), 0xc0001000).to_json_dict()
        assert cells[0].startswith(f"`{model}`") and cells[1] == layout
        assert [int(c) for c in cells[3:7]] == \
            [d["refused"], d["torn"], d["torn_writer"], d["torn_reader"]], row
