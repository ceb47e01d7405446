"""The real QEMU/makedumpfile dumps (ELF, kdump plain and flattened; zlib, LZO, snappy): every
planted record decodes to the manifest's values and every absent probe is exit 3."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from fixtures import absent_probes, accounting_of, cases, fixture_path, manifest
from xenrs_cli.address_space import Status
from xenrs_cli.cli import xenrs
from xenrs_cli.decode import decode_at, to_json_dict
from xenrs_cli.dumps import open_dump
from xenrs_cli.errors import UnmappedAddressError

EXTRA = {"lzo": "lzallright", "snappy": "cramjam"}
DUMPS = [d for d in manifest()["dumps"] if d["container"] != "raw"]
CONTAINER = {"elf": ("elf", None), "kdump": ("kdump", "plain"),
             "kdump-flattened": ("kdump", "flattened")}


def needs_codec(entry):
    lib = EXTRA.get(entry["compression"] or "")
    if lib and importlib.util.find_spec(lib) is None:
        pytest.skip(f"{entry['compression']} pages need {lib}: pip install 'xenrs[kdump]'")


def params(entries):
    return pytest.mark.parametrize("entry", entries, ids=[d["file"] for d in entries])


def check(obj, case):
    assert obj["layout"] == case["layout"] and obj["size"] == case["size"]
    assert obj["state_code"] == case["state"]
    assert obj["state"] == (case["state_name"] if 0 <= case["state"] <= 3 else "unknown")
    assert obj["state_entry_time"] == case["state_entry_time"]
    assert obj["update_in_progress"] == case["update_in_progress"]
    assert list(obj["time"].values()) == case["time"]
    assert obj["time_sum"] == case["time_sum"]
    assert obj["accounting"] == accounting_of(case)
    assert obj["consistent"] == (accounting_of(case) != "broken")  # --hypervisor any
    assert obj["split_at"] == case["page_split_at"]
    assert obj["raw"] == case["raw_hex"]
    if case["layout"] == "64":
        assert obj["padding"] == case["raw_hex"][8:16]
    assert all(p["status"] == "present" for p in obj["pieces"])


@params(DUMPS)
def test_every_planted_record_and_absent_probe(entry):
    needs_codec(entry)
    path = fixture_path(entry["file"])
    data = path.read_bytes()
    fmt, container = CONTAINER[entry["container"]]
    with open_dump(str(path)) as d:
        assert d.format == fmt
        if container:
            assert d.variant == f"{container}, {entry['compression']}"
        for case in cases(entry):
            obj = to_json_dict(decode_at(d.space, int(case["gpa"], 16), case["layout"]),
                               entry["file"])
            check(obj, case)
            # every plain file offset really holds the record's bytes
            raw = bytes.fromhex(case["raw_hex"])
            for p in obj["pieces"]:
                if p["file_offset"] is not None:
                    at = p["file_offset"]
                    assert data[at:at + p["len"]] == raw[p["offset"]:p["offset"] + p["len"]]
            if fmt == "elf":  # ELF stores everything plainly
                assert all(p["file_offset"] is not None for p in obj["pieces"])
            if case["context"] == "random" and entry["compression"] != "snappy":
                # incompressible: stored as-is (flags 0) in kdump too. Not always under snappy:
                # see test_snappy_stores_a_random_page_compressed_by_one_byte.
                assert all(p["file_offset"] is not None for p in obj["pieces"]), case["name"]
        for probe in absent_probes(entry):
            gpa = int(probe["gpa"], 16)
            layout = "64" if probe["length"] == 48 else "compat"
            with pytest.raises(UnmappedAddressError) as e:
                decode_at(d.space, gpa, layout)
            assert e.value.status == "absent"
            assert gpa <= e.value.gpa < gpa + probe["length"]


@params(DUMPS)
def test_present_ranges_match_the_manifest(entry):
    needs_codec(entry)
    with open_dump(str(fixture_path(entry["file"]))) as d:
        merged: list[list[int]] = []
        for e in d.space.extents():
            assert e.status is Status.PRESENT  # QEMU dumps: dump level 1, nothing excluded
            if merged and merged[-1][1] == e.gpa:
                merged[-1][1] = e.gpa + e.size
            else:
                merged.append([e.gpa, e.gpa + e.size])
        expect = manifest()["guests"][entry["guest"]]["present_ranges"]
        assert merged == [[int(a, 16), int(b, 16)] for a, b in expect]
        assert d.details["vcpus"] == (1 if entry["guest"] == "d1" else 4)


def test_flattened_reads_like_its_rearranged_file():
    for entry in (d for d in DUMPS if d.get("rearranged_from")):
        needs_codec(entry)
        flat = next(d for d in DUMPS if d["file"] == entry["rearranged_from"])
        with open_dump(str(fixture_path(entry["file"]))) as a, \
                open_dump(str(fixture_path(flat["file"]))) as b:
            assert a.details["page_counts"] == b.details["page_counts"]
            for gpa in (0x735000, 0x746000, 0xa16000, 0x10068c000, 0xfffc0000):
                if a.space.segment_at(gpa) is not None:
                    assert a.space.read(gpa, 8192)[0] == b.space.read(gpa, 8192)[0]


def test_page_counts_of_d1_zlib():
    with open_dump(str(fixture_path("d1.q72.kdump-zlib.kdump"))) as d:
        # fixtures README: 8256 present pages, 8145 descriptors share the zero page; the three
        # random pages are the ones stored as-is
        assert d.details["page_counts"] == {"present": 8256, "excluded": 0,
                                            "absent": 0x100000 - 8256,
                                            "zero_page_shared": 8145, "stored_raw": 3}
        assert (d.details["header_version"], d.details["bitmap_blocks"],
                d.details["max_mapnr"]) == (6, 64, 0x100000)


@pytest.mark.parametrize("name", ["d2.q72.kdump-zlib.flat", "d2.q10.kdump-raw-zlib.kdump",
                                  "d2.q72.elf"])
def test_cli_decode_and_info(name):
    path = str(fixture_path(name))
    case = next(c for c in manifest()["guests"]["d2"]["cases"]
                if c["name"] == "high_random_cross64")
    r = CliRunner().invoke(xenrs, ["decode", path, "--gpa", case["gpa"], "--format", "json"])
    assert r.exit_code == 0, r.stderr
    obj = json.loads(r.stdout)
    check(obj, case)
    assert obj["layout_inferred"] is True
    r = CliRunner().invoke(xenrs, ["decode", path, "--gpa", "0xc0000000"])
    assert r.exit_code == 3 and r.stdout == ""
    assert r.stderr == ("xenrs: error: GPA 0xc0000000-0xc000002f is absent in the dump; use "
                        "--allow-missing to decode what is there\n")
    r = CliRunner().invoke(xenrs, ["info", path, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["vcpus"] == 4 and info["gpa_end"] == "0x101000000"
    assert info["details"]["cpus"][0]["mode"] == "long (64-bit)"
    assert info["details"]["notes"][0] == {"name": "CORE", "type": 1, "descsz": 336}


def test_snappy_stores_a_random_page_compressed_by_one_byte():
    """The fixtures README says the random pages are stored uncompressed; under snappy, PFN
    0x747 (second page of random_pages_compat_cross) compresses to 4095 bytes, so QEMU keeps it
    compressed (``size_out < page_size``) and its bytes have no plain file offset."""
    entry = next(d for d in DUMPS if d["file"] == "d1.q72ls.kdump-snappy.kdump")
    needs_codec(entry)
    with open_dump(str(fixture_path(entry["file"]))) as d:
        pages = d.space.segment_at(0x747000).pages
        assert (pages.desc(0x747).size, pages.desc(0x747).flags) == (4095, 4)
        assert (pages.desc(0x746).size, pages.desc(0x746).flags) == (4096, 0)
        pieces = d.space.pieces(0x746fe9, 44)
        assert [p.file_offset is None for p in pieces] == [False, True]
