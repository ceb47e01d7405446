"""Several raw images as one dump (crash's ``FILE@ADDR`` pairs joined by commas)."""

from __future__ import annotations

import json

import pytest

from clitools import cli, one_line_error
from dumpwriter import runstate64
from xenrs_cli.address_space import Status
from xenrs_cli.dumps import open_dump
from xenrs_cli.errors import UsageError

PAGE = 4096
AREA = runstate64(0, 7_000, (7_000, 0, 0, 0))


@pytest.fixture
def images(tmp_path):
    low = bytearray(3 * PAGE)
    low[0x1040:0x1070] = AREA
    high = bytearray(2 * PAGE)
    high[0xFF0:0x1020] = AREA  # crosses a page inside the high image
    (tmp_path / "low.raw").write_bytes(bytes(low))
    (tmp_path / "high.raw").write_bytes(bytes(high))
    return tmp_path / "low.raw", tmp_path / "high.raw"


def test_two_images_one_address_space(images):
    low, high = images
    spec = f"{high}@0x1_0000_0000,{low}@0"
    with open_dump(spec) as d:
        assert (d.format, d.variant) == ("raw", "2 images")
        assert [(s.gpa, s.size) for s in d.space.segments] == [(0, 3 * PAGE),
                                                               (1 << 32, 2 * PAGE)]
        assert d.space.read_present(0x1040, 48) == AREA
        assert d.space.read_present((1 << 32) + 0xFF0, 48) == AREA
        _, pieces = d.space.read(3 * PAGE - 8, 16)
        assert [p.status for p in pieces] == [Status.PRESENT, Status.ABSENT]
        members = d.file.members
        assert d.file.size == 5 * PAGE
    assert all(m.buf.closed for m in members)  # closing the dump closed every file


def test_every_command_takes_the_list(images):
    low, high = images
    spec = f"{low}@0,{high}@0x100000000"
    r = cli("decode", spec, "--gpa", 0x1040, "--gpa", 0x100000FF0, "--format", "json")
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code == 0 and [x["state_entry_time"] for x in recs] == [7000, 7000]
    assert recs[1]["pieces"][0]["file_offset"] == 0xFF0
    info = json.loads(cli("info", spec, "--format", "json").stdout)
    assert [e["detail"] for e in info["extents"]] == [f"raw image {low}", f"raw image {high}"]
    assert info["details"]["images"][1] == {"path": str(high), "base": "0x100000000",
                                            "size": 2 * PAGE}
    # --loose: the planted areas have toy values (7 us, one accounted state)
    r = cli("scan", spec, "--format", "json", "--min-entry-time", 1000, "--loose")
    hits = [json.loads(x) for x in r.stdout.splitlines()]
    assert {h["gpa"] for h in hits if h["layout"] == "64"} == {"0x1040", "0x100000ff0"}
    assert cli("diff", spec, spec, "--gpa", 0x1040, "--format", "json").exit_code == 0


def test_usage_errors(images, tmp_path):
    low, high = images
    msg = one_line_error(cli("info", f"{low}@0,{high}@0x2000"), 2)
    assert f"images overlap: {low} (GPA 0x0-0x2fff) and {high} (GPA 0x2000-0x3fff)" in msg
    assert "FILE@ADDR" in one_line_error(cli("info", f"{low}@0,{high}"), 2)
    assert "empty image" in one_line_error(cli("info", f"{low}@0,"), 2)
    assert "does not apply" in one_line_error(cli("info", f"{low}@0,{high}@0x100000000",
                                                  "--dump-format", "elf"), 2)
    assert "not 4 KiB aligned" in one_line_error(cli("info", f"{low}@0,{high}@0x100000800"), 2)
    assert "no such file" in one_line_error(cli("info", f"{low}@0,{tmp_path}/nope@0x100000"))
    with pytest.raises(UsageError):
        open_dump(f"-@0,{low}@0x100000")


def test_a_path_with_a_comma_is_taken_literally(tmp_path):
    p = tmp_path / "vm,1.raw"
    data = bytearray(PAGE)
    data[0x40:0x70] = AREA
    p.write_bytes(bytes(data))
    with open_dump(str(p)) as d:
        assert d.variant is None and d.space.read_present(0x40, 48) == AREA
