"""LiME and AVML images from the independent writer (tests/limewriter.py): every byte read
back at its GPA, holes absent, AVML's skipped zero blocks absent, truncated and corrupt images
as one-line errors, and the missing snappy codec named with its install command."""

from __future__ import annotations

import json
import os
import random
import sys

import pytest

import limewriter
from clitools import cli, one_line_error
from dumpwriter import corrupted, runstate64
from xenrs_cli.address_space import Status
from xenrs_cli.dumps import detect, open_dump
from xenrs_cli.errors import BadDumpError, UnmappedAddressError, XenrsError

PAGE = 4096
AREA = runstate64(2, 9_000, (3_000, 1_000, 4_000, 1_000))


def memory(size: int, seed: int, area_at: int | None = None) -> bytes:
    """Compressible but not trivial bytes: random words in a sea of zeros and a runstate area."""
    rng = random.Random(seed)
    b = bytearray(size)
    for _ in range(size // 64):
        at = rng.randrange(0, size - 8)
        b[at:at + 8] = rng.randbytes(8)
    if area_at is not None:
        b[area_at:area_at + 48] = AREA
    return bytes(b)


LOW = memory(0x9F000, 1, area_at=0x1040)
HIGH = memory(0x60000, 2, area_at=0x4FFE8)  # across a page and a 64 KiB snappy chunk boundary
RANGES = [(0x1000, LOW), (0x100000, HIGH)]


def write(tmp_path, data: bytes, name="mem.lime") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("kind", ["lime", "avml", "avml-uncompressed"])
def test_every_byte_at_its_gpa(tmp_path, kind):
    data = {"lime": lambda: limewriter.lime(RANGES),
            "avml": lambda: limewriter.avml(RANGES),
            "avml-uncompressed": lambda: limewriter.avml(RANGES, uncompressed=True)}[kind]()
    with open_dump(write(tmp_path, data)) as d:
        assert d.format == "lime" and detect(d.file.buf) == "lime"
        assert d.variant == ("LiME" if kind == "lime" else "AVML snappy")
        for start, blob in RANGES:
            assert d.space.read_present(start, len(blob)) == blob
            # reads of a few bytes at odd places, across chunk (64 KiB) boundaries
            for at in (0, 1, 0xFFFD, 0x10000 - 3, len(blob) - 5):
                assert d.space.read_present(start + at, 5) == blob[at:at + 5]
        _, pieces = d.space.read(0x1000 + len(LOW) - 8, 16)  # into the hole after LOW
        assert [p.status for p in pieces] == [Status.PRESENT, Status.ABSENT]
        if kind == "lime":
            assert pieces[0].file_offset == 32 + len(LOW) - 8
        if kind == "avml-uncompressed":  # stored plainly: the offset is where the bytes are
            off = pieces[0].file_offset
            assert off is not None and data[off:off + 8] == LOW[-8:]
        if kind == "avml":
            assert pieces[0].file_offset is None
        with pytest.raises(UnmappedAddressError):
            d.space.read_present(0, 8)


def test_decode_scan_and_info_from_the_command_line(tmp_path):
    path = write(tmp_path, limewriter.avml(RANGES))
    rec = json.loads(cli("decode", path, "--gpa", 0x2040, "--format", "json").stdout)
    assert (rec["state_code"], rec["state_entry_time"]) == (2, 9000)
    assert rec["pieces"][0]["file_offset"] is None  # compressed: no plain file offset
    info = json.loads(cli("info", path, "--format", "json").stdout)
    assert info["format"] == "lime" and info["details"]["ranges"] == 2
    assert [(e["gpa"], e["size"]) for e in info["extents"]] == [("0x1000", len(LOW)),
                                                                ("0x100000", len(HIGH))]
    assert cli("info", path).exit_code == 0
    # --loose: the planted area has toy values (9 us of entry time, two equal times)
    r = cli("scan", path, "--format", "json", "--min-entry-time", 1000, "--loose")
    gpas = [json.loads(line)["gpa"] for line in r.stdout.splitlines()]
    assert "0x2040" in gpas and "0x14ffe8" in gpas


def test_lime_and_avml_of_the_same_memory_decode_alike(tmp_path):
    a = write(tmp_path, limewriter.lime(RANGES), "a.lime")
    b = write(tmp_path, limewriter.avml(RANGES), "b.avml")
    ra = cli("decode", a, "--gpa", 0x2040, "--gpa", 0x14FFE8, "--format", "json")
    rb = cli("decode", b, "--gpa", 0x2040, "--gpa", 0x14FFE8, "--format", "json")
    strip = [{k: v for k, v in json.loads(x).items() if k not in ("dump", "pieces")}
             for x in ra.stdout.splitlines() + rb.stdout.splitlines()]
    assert strip[:2] == strip[2:] and len(strip) == 4


def test_avml_big_range_is_cut_and_zero_blocks_are_absent(tmp_path):
    big = bytearray(0x1000000 + 0x1000000 + 0x3000)  # 16 MiB zero, 16 MiB data, 12 KiB
    big[0x1000000 + 5:0x1000000 + 53] = AREA
    big[-0x1000:] = os.urandom(0x1000)
    with open_dump(write(tmp_path, limewriter.avml([(0, bytes(big))]))) as d:
        assert [(s.gpa, s.size) for s in d.space.segments] == [(0x1000000, 0x1000000),
                                                               (0x2000000, 0x3000)]
        assert d.space.read_present(0x1000005, 48) == AREA
        assert d.space.read_present(0x2002000, 0x1000) == bytes(big[-0x1000:])
        assert d.space.pieces(0, 8)[0].status is Status.ABSENT
        assert d.details["ranges"] == 2


@pytest.mark.parametrize("kind", ["lime", "avml"])
@pytest.mark.parametrize("cut", [20, 32 + 100, -30, -4])
def test_truncated_images_are_one_line_errors(tmp_path, kind, cut):
    data = (limewriter.lime if kind == "lime" else limewriter.avml)(RANGES)
    path = write(tmp_path, data[:cut])
    msg = one_line_error(cli("decode", path, "--gpa", 0x2040, "--dump-format", "lime"))
    assert "truncated" in msg, msg


def test_corrupt_images(tmp_path):
    good = limewriter.lime(RANGES)
    bad_version = good[:4] + (7).to_bytes(4, "little") + good[8:]
    with pytest.raises(BadDumpError, match="expected EMiL version 1"):
        open_dump(write(tmp_path, bad_version), "lime")
    backwards = limewriter.header(b"EMiL", 1, 0x2000, 0x1000) + bytes(16)
    with pytest.raises(BadDumpError, match="is empty"):
        open_dump(write(tmp_path, backwards))
    overlap = limewriter.lime([(0x1000, bytes(0x2000)), (0x2000, bytes(0x1000))])
    assert "overlap" in one_line_error(cli("info", write(tmp_path, overlap)))
    avml = bytearray(limewriter.avml(RANGES))
    avml[32 + 10 + 4 + 4 + 1] ^= 0xFF  # inside the first compressed chunk's data
    msg = one_line_error(cli("decode", write(tmp_path, bytes(avml)), "--gpa", 0x1000))
    assert "snappy" in msg
    trailer = bytearray(limewriter.avml([(0, LOW[:0x2000])]))
    trailer[-8] ^= 1
    with pytest.raises(BadDumpError, match="its trailer says"):
        open_dump(write(tmp_path, bytes(trailer)))


def test_missing_snappy_codec_names_the_install_command(tmp_path, monkeypatch):
    from xenrs_cli.dumps import codecs

    path = write(tmp_path, limewriter.avml(RANGES))
    codecs.decompressor.cache_clear()
    monkeypatch.setitem(sys.modules, "cramjam", None)
    try:
        r = cli("decode", path, "--gpa", 0x2040)
        msg = one_line_error(r)
        assert "snappy" in msg and "pip install 'xenrs[kdump]'" in msg
    finally:
        codecs.decompressor.cache_clear()
    # a plain LiME image needs no codec
    assert cli("decode", write(tmp_path, limewriter.lime(RANGES), "b.lime"), "--gpa",
               0x2040, "--format", "json").exit_code == 0


@pytest.mark.parametrize("kind", ["lime", "avml"])
def test_corrupted_images_never_crash(tmp_path, kind):
    """Bytes flipped anywhere or the file cut anywhere: the image opens and reads, or fails
    with a XenrsError (one line, exit 3), never anything else."""
    data = (limewriter.lime if kind == "lime" else limewriter.avml)(
        [(0x1000, LOW[:0x3000]), (0x100000, HIGH[:0x12000])])
    rng = random.Random(7)
    path = tmp_path / "c.img"
    for _ in range(200):
        path.write_bytes(corrupted(data, rng))
        try:
            with open_dump(str(path), "lime") as d:
                for s in d.space.segments:
                    d.space.read(s.gpa, s.size)
        except XenrsError:
            pass
