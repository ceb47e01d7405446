"""The real raw dumps written by QEMU ``pmemsave``: every planted record, every absent probe."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fixtures import absent_probes, accounting_of, cases, fixture_path, manifest
from xenrs_cli.cli import xenrs
from xenrs_cli.decode import decode_at, to_json_dict
from xenrs_cli.dumps import open_dump

RAW_DUMPS = [d for d in manifest()["dumps"] if d["container"] == "raw"]


def check_against_manifest(obj, case):
    assert obj["layout"] == case["layout"]
    assert obj["size"] == case["size"]
    assert obj["state_code"] == case["state"]
    assert obj["state"] == (case["state_name"] if 0 <= case["state"] <= 3 else "unknown")
    assert obj["state_entry_time"] == case["state_entry_time"]
    assert obj["update_in_progress"] == case["update_in_progress"]
    assert list(obj["time"].values()) == case["time"]
    assert obj["time_sum"] == case["time_sum"]
    assert obj["accounting"] == accounting_of(case)
    assert obj["consistent"] == (accounting_of(case) != "broken")  # --hypervisor any
    assert obj["crosses_page"] == case["crosses_page"]
    assert obj["split_at"] == case["page_split_at"]
    assert int(obj["flag_byte_gpa"], 16) == int(case["gpa"], 16) + case["flag_byte_offset"]
    assert obj["raw"] == case["raw_hex"]
    assert all(p["status"] == "present" for p in obj["pieces"])


@pytest.mark.parametrize("entry", RAW_DUMPS, ids=[d["file"] for d in RAW_DUMPS])
def test_every_planted_record(entry):
    path = fixture_path(entry["file"])
    with open_dump(str(path)) as d:
        assert d.format == "raw"
        for case in cases(entry):
            gpa = int(case["gpa"], 16)
            obj = to_json_dict(decode_at(d.space, gpa, case["layout"]), entry["file"])
            check_against_manifest(obj, case)
            # file offset = GPA for a pmemsave image based at 0
            assert obj["pieces"][0]["file_offset"] == gpa
            # auto finds the layout wherever the record obeys the rules it infers from
            auto = decode_at(d.space, gpa, "auto")
            if accounting_of(case) != "broken" and 0 <= case["state"] <= 3:
                assert auto.layout.name == case["layout"], case["name"]


@pytest.mark.parametrize("entry", RAW_DUMPS, ids=[d["file"] for d in RAW_DUMPS])
def test_padding_bytes(entry):
    with open_dump(str(fixture_path(entry["file"]))) as d:
        for case in cases(entry):
            if case["layout"] != "64":
                continue
            rec = decode_at(d.space, int(case["gpa"], 16), "64")
            # the manifest gives the padding as the little-endian u32 of bytes 4..7
            assert int.from_bytes(rec.info.padding, "little") == case["padding"]


@pytest.mark.parametrize("entry", RAW_DUMPS, ids=[d["file"] for d in RAW_DUMPS])
def test_absent_probes_exit_3(entry):
    path = fixture_path(entry["file"])
    runner = CliRunner()
    for probe in absent_probes(entry):
        layout = "64" if probe["length"] == 48 else "compat"
        r = runner.invoke(xenrs, ["decode", str(path), "--gpa", probe["gpa"], "--layout", layout,
                                  "--format", "json"])
        assert r.exit_code == 3, (probe, r.stdout)
        assert r.stdout == ""
        assert r.stderr.startswith("xenrs: error: GPA ") and "absent" in r.stderr
        assert len(r.stderr.splitlines()) == 1


def test_cli_decodes_a_page_crossing_record_from_the_real_dump():
    entry = next(d for d in RAW_DUMPS if d["guest"] == "d1")
    case = next(c for c in cases(entry) if c["name"] == "cross64_flag_first_in_next")
    r = CliRunner().invoke(xenrs, ["decode", str(fixture_path(entry["file"])), "--gpa",
                                   case["gpa"], "--format", "json"])
    assert r.exit_code == 0
    obj = json.loads(r.stdout)
    assert obj["layout_inferred"] and obj["layout"] == "64"
    assert [(p["gpa"], p["len"]) for p in obj["pieces"]] == [("0x625ff1", 15), ("0x626000", 33)]
    assert obj["flag_byte_gpa"] == "0x626000"
