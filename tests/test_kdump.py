"""kdump files from the independent writer: both bitmaps, page descriptors, every codec, both
header variants, the flattened stream read in place, and corrupt input as exit 3."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dumpwriter import Kdump, Note, flatten, kdump_file, runstate64
from clitools import cli, one_line_error
from xenrs_cli.address_space import Status
from xenrs_cli.decode import decode_at
from xenrs_cli.dumps import codecs, open_dump
from xenrs_cli.dumps.kdump import Rank, bit_runs
from xenrs_cli.errors import MissingCodecError, UnmappedAddressError

PAGE = 4096
REC = runstate64(0, 7_000_000_000, (5_000_000_000, 1_500_000_000, 500_000_000, 0))
HAVE_EXTRA = (importlib.util.find_spec("cramjam") is not None
              and importlib.util.find_spec("lzallright") is not None)
needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason="LZO/snappy/zstd need the kdump extra: "
                                 "pip install 'xenrs[kdump]'")


def text_page(seed: int) -> bytes:
    """A compressible, non-zero page."""
    return (f"page {seed} ".encode() * 1000)[:PAGE]


def sample(codec: str | None = "zlib", **kw) -> Kdump:
    """RAM PFNs 0x10..0x20 and 0x40..0x48; 0x13 and 0x44 excluded; a record across PFNs
    0x11/0x12 (page boundary at struct offset 15), a random (stored raw) page at 0x15."""
    pages = {pfn: bytes(PAGE) for pfn in list(range(0x10, 0x20)) + list(range(0x40, 0x48))}
    del pages[0x13], pages[0x44]
    p11, p12 = bytearray(text_page(0x11)), bytearray(text_page(0x12))
    p11[-15:] = REC[:15]
    p12[:33] = REC[15:]
    pages[0x11], pages[0x12] = bytes(p11), bytes(p12)
    pages[0x15] = bytes(os.urandom(PAGE))
    pages[0x16] = text_page(0x16)
    return Kdump(max_mapnr=0x50, in_map=[(0x10, 0x20), (0x40, 0x48)], pages=pages, codec=codec,
                 **kw)


def write(tmp_path, data: bytes, name: str = "vm.kdump"):
    p = tmp_path / name
    p.write_bytes(data)
    return p




def check_sample(d, k: Kdump) -> None:
    space = d.space
    assert [(s.gpa, s.size) for s in space.segments] == [(0x10000, 0x10000), (0x40000, 0x8000)]
    for pfn in range(0x50):
        status = space.pieces(pfn * PAGE, PAGE)[0].status
        if pfn in k.pages:
            assert status is Status.PRESENT, hex(pfn)
            assert space.read(pfn * PAGE, PAGE)[0] == k.pages[pfn], hex(pfn)
        elif any(s <= pfn < e for s, e in k.in_map):
            assert status is Status.EXCLUDED, hex(pfn)
        else:
            assert status is Status.ABSENT, hex(pfn)
    dec = decode_at(space, 0x12000 - 15, "auto")
    assert dec.raw == REC and dec.layout.name == "64" and dec.info.exact


@pytest.mark.parametrize("codec", [None, "zlib",
                                   pytest.param("lzo", marks=needs_extra),
                                   pytest.param("snappy", marks=needs_extra),
                                   pytest.param("zstd", marks=needs_extra)])
def test_every_codec_plain_and_flattened(tmp_path, codec):
    k = sample(codec)
    plain = kdump_file(k)
    for name, data in (("p.kdump", plain), ("f.flat", flatten(plain, seed=3))):
        with open_dump(str(write(tmp_path, data, name))) as d:
            assert d.format == "kdump"
            container = "flattened" if name == "f.flat" else "plain"
            assert d.variant == f"{container}, {codec or 'none'}"
            check_sample(d, k)


def test_provenance_of_compressed_raw_and_zero_pages(tmp_path):
    k = sample("zlib")
    data = kdump_file(k)
    with open_dump(str(write(tmp_path, data))) as d:
        # compressed: present, no plain file offset
        p = d.space.pieces(0x16000, 8)[0]
        assert (p.status, p.file_offset) == (Status.PRESENT, None)
        # stored raw (random page): the file offset holds the bytes
        p = d.space.pieces(0x15010, 8)[0]
        assert p.status is Status.PRESENT and data[p.file_offset:p.file_offset + 8] == \
            k.pages[0x15][0x10:0x18]
        # zero page: present, pointing into the shared zero page
        p = d.space.pieces(0x17000, 8)[0]
        assert p.status is Status.PRESENT and data[p.file_offset:p.file_offset + 8] == bytes(8)
        counts = d.details["page_counts"]
        assert counts == {"present": 22, "excluded": 2, "absent": 0x50 - 24,
                          "zero_page_shared": 18, "stored_raw": 1}


def test_flattened_file_offsets_point_into_the_stream(tmp_path):
    k = sample("zlib")
    stream = flatten(kdump_file(k), chunk=3000, seed=9)
    with open_dump(str(write(tmp_path, stream, "f.flat"))) as d:
        seen = 0
        for rel in range(0, PAGE, 512):
            p = d.space.pieces(0x15000 + rel, 16)[0]
            if p.file_offset is not None:  # None where the 16 bytes straddle two records
                assert stream[p.file_offset:p.file_offset + 16] == k.pages[0x15][rel:rel + 16]
                seen += 1
        assert seen >= 4
        # all-zero chunks are not written (read as zeros), so fewer records than chunks
        assert 5 <= d.details["flattened_records"] < len(kdump_file(k)) // 3000


def test_excluded_bytes_fail_with_range_and_status(tmp_path):
    k = sample("zlib")
    path = write(tmp_path, kdump_file(k))
    with open_dump(str(path)) as d:
        with pytest.raises(UnmappedAddressError) as e:
            decode_at(d.space, 0x14000 - 10, "64")
        assert (e.value.gpa, e.value.size, e.value.status) == (0x14000 - 10, 10, "excluded")
    r = cli("decode", path, "--gpa", "0x13ff0", "--layout", "64")
    assert one_line_error(r) == ("xenrs: error: GPA 0x13ff0-0x13fff is excluded in the dump; "
                                 "use --allow-missing to decode what is there")
    r = cli("decode", path, "--gpa", "0x1fff0", "--layout", "64")
    assert "GPA 0x20000-0x2001f is absent" in one_line_error(r)
    r = cli("decode", path, "--gpa", "0x13ff0", "--layout", "64", "--allow-missing",
            "--format", "json")
    assert r.exit_code == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["state"] is None and obj["state_entry_time"] is None
    assert [p["status"] for p in obj["pieces"]] == ["excluded", "present"]


def test_header_32bit_variant_and_old_header_version(tmp_path):
    for kw in ({"header64": False}, {"header_version": 5}):
        k = sample("zlib", **kw)
        with open_dump(str(write(tmp_path, kdump_file(k)))) as d:
            check_sample(d, k)
            assert d.details["header_variant"] == ("32-bit" if "header64" in kw else "64-bit")


def test_block_size_64k(tmp_path):
    bs = 1 << 16
    page = bytearray(bs)
    page[100:148] = REC
    k = Kdump(max_mapnr=8, in_map=[(2, 6)], pages={2: bytes(page), 3: bytes(bs), 5: bytes(page)},
              block_size=bs)
    with open_dump(str(write(tmp_path, kdump_file(k)))) as d:
        assert d.page_size == bs
        assert decode_at(d.space, 2 * bs + 100, "64").raw == REC
        assert decode_at(d.space, 5 * bs + 100, "64").raw == REC
        assert d.space.pieces(4 * bs, 8)[0].status is Status.EXCLUDED


def test_info_details(tmp_path):
    k = sample("zlib", nr_cpus=2, notes=[Note(b"CORE", 1, bytes(336))] * 2,
               vmcoreinfo=b"OSRELEASE=6.6.0\n")
    r = cli("info", write(tmp_path, kdump_file(k)), "--format", "json")
    assert r.exit_code == 0, r.stderr
    obj = json.loads(r.stdout)
    det = obj["details"]
    assert obj["vcpus"] == 2 and obj["variant"] == "plain, zlib"
    assert (det["header_version"], det["block_size"], det["max_mapnr"], det["bitmap_blocks"],
            det["compression"], det["dump_level"]) == (6, 4096, 0x50, 2, "zlib", 1)
    assert det["notes"] == [{"name": "CORE", "type": 1, "descsz": 336}] * 2
    assert det["vmcoreinfo"] == "OSRELEASE=6.6.0\n"
    statuses = [(e["gpa"], e["status"]) for e in obj["extents"]]
    assert statuses == [("0x10000", "present"), ("0x13000", "excluded"), ("0x14000", "present"),
                        ("0x40000", "present"), ("0x44000", "excluded"), ("0x45000", "present")]


def test_read_span_equals_page_reads(tmp_path):
    k = sample("zlib")
    with open_dump(str(write(tmp_path, kdump_file(k)))) as d:
        seg = d.space.segments[0]
        span = seg.read_span(0x800, 0x7000)
        expect = b"".join(k.pages.get(pfn, bytes(PAGE)) for pfn in range(0x10, 0x18))
        assert span == expect[0x800:0x7800]


def test_flattened_overlapping_records_later_wins(tmp_path):
    k = sample("zlib")
    plain = kdump_file(k)
    with open_dump(str(write(tmp_path, kdump_file(k), "p.kdump"))) as d:
        page_off = d.space.pieces(0x15000, 1)[0].file_offset
    patch = b"\xee" * 100
    stream = flatten(plain, seed=1, extra=[(page_off + 8, patch)])
    with open_dump(str(write(tmp_path, stream, "f.flat"))) as d:
        got = d.space.read(0x15000, 120)[0]
        assert got[:8] == k.pages[0x15][:8] and got[8:108] == patch
        assert got[108:] == k.pages[0x15][108:120]


# ---------------------------------------------------------------------------------------------
# Corrupt and unsupported input


def corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_corrupt_and_truncated(tmp_path):
    plain = kdump_file(sample("zlib"))
    cases = {
        "truncated header": (plain[:300], "truncated kdump disk_dump_header"),
        # block_size wrong in the 64-bit place (428) and the 32-bit one (416)
        "bad block size": (corrupt(corrupt(plain, 428, struct.pack("<i", 1000)), 416,
                                   struct.pack("<i", 3)), "no plausible block_size"),
        "odd bitmap blocks": (corrupt(plain, 436, struct.pack("<I", 3)),
                              "must be positive and even"),
        "max_mapnr too big": (corrupt(plain, 4096 + 96, struct.pack("<Q", 1 << 30)),
                              "needs more bitmap"),
        "truncated bitmaps": (plain[:3 * 4096], "truncated dump?"),
        "truncated descriptors": (plain[:4 * 4096 + 24], "page descriptors do not fit"),
    }
    for name, (data, expect) in cases.items():
        msg = one_line_error(cli("info", write(tmp_path, data)))
        assert expect in msg, (name, msg)


def test_corrupt_page_and_descriptor(tmp_path):
    k = sample("zlib")
    plain = kdump_file(k)
    desc_at = 4 * 4096
    # PFN 0x16 is the 6th dumped page (0x10 0x11 0x12 0x14 0x15 0x16): garble its zlib stream
    off, size, flags, _ = struct.unpack_from("<qIIQ", plain, desc_at + 5 * 24)
    assert flags == 1
    bad = corrupt(plain, off, b"\xff" * 8)
    msg = one_line_error(cli("decode", write(tmp_path, bad), "--gpa", "0x16000", "--layout", "64"))
    assert "page of PFN 0x16: zlib decompression failed" in msg and f"0x{off:x}" in msg
    bad = corrupt(plain, desc_at + 5 * 24, struct.pack("<q", len(plain) + 10))
    msg = one_line_error(cli("decode", write(tmp_path, bad), "--gpa", "0x16000", "--layout", "64"))
    assert "corrupt page descriptor of PFN 0x16" in msg
    # a negative offset (page_desc.offset is an off_t) reads as one, not as "0x-…"
    bad = corrupt(plain, desc_at + 5 * 24, struct.pack("<q", -0x2a0000))
    msg = one_line_error(cli("decode", write(tmp_path, bad), "--gpa", "0x16000", "--layout", "64"))
    assert "(offset -0x2a0000, size" in msg


def test_flattened_corrupt(tmp_path):
    stream = flatten(kdump_file(sample("zlib")), seed=2)
    msg = one_line_error(cli("info", write(tmp_path, stream[:-16], "f")))
    assert "without its end marker" in msg
    msg = one_line_error(cli("info", write(tmp_path, stream[:5000], "f")))
    assert "runs past the end of the file" in msg
    bad_type = corrupt(stream, 16, struct.pack(">q", 2))
    msg = one_line_error(cli("info", write(tmp_path, bad_type, "f")))
    assert "flattened header with type 2" in msg
    bad_size = corrupt(stream, 4096 + 8, struct.pack(">q", -5))
    msg = one_line_error(cli("info", write(tmp_path, bad_size, "f")))
    assert "flattened record with offset" in msg


def test_split_dump_refused(tmp_path):
    msg = one_line_error(cli("info", write(tmp_path, kdump_file(sample("zlib", split=1)))))
    assert "makedumpfile --reassemble" in msg


def test_incomplete_dump_lost_pages_are_absent(tmp_path):
    k = sample(None, status_extra=0x8)
    plain = bytearray(kdump_file(k))
    desc_at = 4 * 4096
    plain[desc_at + 5 * 24:desc_at + 6 * 24] = bytes(24)  # PFN 0x16 never written (ENOSPC)
    with open_dump(str(write(tmp_path, bytes(plain)))) as d:
        assert d.details["incomplete"] is True
        p = d.space.pieces(0x16000, 16)[0]
        assert p.status is Status.ABSENT
        assert d.space.read(0x15000, 8)[0] == k.pages[0x15][:8]


def test_missing_codec_names_the_install_command(tmp_path, monkeypatch):
    path = write(tmp_path, kdump_file(sample("zlib")))
    data = kdump_file(Kdump(max_mapnr=8, in_map=[(0, 2)], pages={0: text_page(1)}, codec="zlib"))
    # pretend the page is snappy-compressed and cramjam is not installed
    bad = corrupt(data, 4096 * 4 + 12, struct.pack("<I", 4))
    monkeypatch.setitem(sys.modules, "cramjam", None)
    codecs.decompressor.cache_clear()
    try:
        msg = one_line_error(cli("decode", write(tmp_path, bad), "--gpa", "0", "--layout", "64"))
        assert msg == ("xenrs: error: pages are snappy-compressed and the snappy codec is not "
                       "installed: run pip install 'xenrs[kdump]'")
        with pytest.raises(MissingCodecError):
            codecs.decompressor(codecs.ZSTD)
    finally:
        codecs.decompressor.cache_clear()
    assert path.exists()


# ---------------------------------------------------------------------------------------------
# The rank index and bit runs against naive definitions


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4 * 4096 + 100), st.sampled_from(["random", "full", "sparse", "empty"]),
       st.integers(0, 2**32), st.data())
def test_rank_equals_naive_popcount(nbytes, fill, seed, data):
    rng = random.Random(seed)
    bitmap = {"random": lambda: rng.randbytes(nbytes), "full": lambda: b"\xff" * nbytes,
              "empty": lambda: bytes(nbytes),
              "sparse": lambda: bytes(1 << rng.randrange(8) if rng.random() < 0.01 else 0
                                      for _ in range(nbytes))}[fill]()
    rank = Rank(bitmap)
    nbits = nbytes * 8
    value = int.from_bytes(bitmap, "little")
    edges = [b for k in range(1, 5) for b in (k * 32768 - 1, k * 32768, k * 32768 + 1)]
    bits = [b for b in edges + [0, nbits - 1] if b < nbits]
    bits += data.draw(st.lists(st.integers(0, nbits - 1), max_size=10))
    for bit in sorted(bits, key=lambda _: rng.random()):  # any order: the index is lazy
        assert rank(bit) == (value & ((1 << bit) - 1)).bit_count()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([0, 0xFF, 0x0F, 0xF0, 0x81, 0x7E, 0x01]), min_size=1,
                max_size=64), st.data())
def test_bit_runs_equal_naive(bytes_list, data):
    bitmap = bytes(bytes_list)
    nbits = len(bitmap) * 8
    lo = data.draw(st.integers(0, nbits))
    hi = data.draw(st.integers(lo, nbits))
    bits = [b for b in range(lo, hi) if bitmap[b >> 3] >> (b & 7) & 1]
    runs = []
    for b in bits:
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    assert [list(r) for r in bit_runs(bitmap, lo, hi)] == runs
