"""Hostile files (issue 11): whatever a file claims about itself, xenrs ends with one line and
exit 3 (or its normal answer) in bounded memory and time.

Each reproducer is rebuilt from the issue's description with the independent writer
(``tests/dumpwriter.py``) and run as a real ``xenrs`` process, whose peak resident set (its
``VmHWM``) must stay under ``RSS_LIMIT``. The address space is
capped too (``RLIMIT_AS``), so an allocation that believes a claim fails instead of taking the
machine down; ``HANG`` is a hang detector far above the figures the fixes give (the O(N²) and
claim-sized paths they replace took 30 s to minutes), not a speed test.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass

import pytest

from dumpwriter import (PAGE, Kdump, Load, elf_core, flatten, kdump_file, patch_kdump64,
                        runstate64, write_flattened, zstd_rle_frame)
from xenrs_cli.dumps import open_dump
from xenrs_cli.errors import DumpChangedError
from xenrs_cli.scan import ScanOptions, Scanner

RSS_LIMIT = 500 << 20
HANG = 60  # seconds


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str
    rss: int  # peak resident set, bytes
    seconds: float


# The child reports its own peak (VmHWM): wait4's ru_maxrss would count the pages of this
# (forking) test process until exec, which grows with the reproducers it builds.
CHILD = """
import os, sys
try:
    from xenrs_cli.cli import main
    sys.argv[0] = "xenrs"
    main()
finally:
    with open(os.environ["XENRS_TEST_HWM"], "w") as f:
        f.write(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def run_bounded(tmp_path, *args, file_size: int = 0) -> Ran:
    """``xenrs ARGS`` as a child process with its address space capped; its peak RSS."""
    limit = (1536 << 20) + file_size  # the dump is mapped whole (files.py), never touched

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out, err = open(tmp_path / "stdout", "w+"), open(tmp_path / "stderr", "w+")
    hwm = tmp_path / "hwm"
    hwm.unlink(missing_ok=True)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], stdout=out,
                         stderr=err, preexec_fn=limits,
                         env={**os.environ, "XENRS_TEST_HWM": str(hwm)})
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > HANG:
            p.kill()
            os.wait4(p.pid, 0)
            pytest.fail(f"xenrs {' '.join(map(str, args))} still running after {HANG} s")
        time.sleep(0.02)
    p.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    peak = int(hwm.read_text().split()[1]) * 1024 if hwm.exists() else usage.ru_maxrss * 1024
    return Ran(p.returncode, out.read(), err.read(), peak, time.monotonic() - t0)


def assert_one_line(ran: Ran, *needles: str) -> str:
    assert ran.code == 3, (ran.code, ran.stderr[-2000:])
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenrs: error: "), ran.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert ran.rss < RSS_LIMIT, ran.rss
    return lines[0]


def small_kdump(codec="zlib", block_size=PAGE, **kw) -> bytes:
    bs = block_size
    page = bytearray(bs)
    page[64:112] = runstate64(1, 10**12, (10**12 - 3, 1, 1, 1))
    return kdump_file(Kdump(0x40, [(0x10, 0x18)], {0x10: bytes(page), 0x11: bytes(bs)},
                            codec=codec, block_size=bs, **kw))


def write(tmp_path, data: bytes, name: str = "d") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Flattened streams that claim a huge plain file


def _flat_claim(tmp_path, block_size: int, bitmap_blocks: int, end_at: int,
                dumped_bit: bool) -> str:
    """The header blocks of a small kdump claiming ``bitmap_blocks``, as a flattened stream
    with one 1-byte record at plain offset ``end_at - 1`` (the plain size) and, if
    ``dumped_bit``, the last bit of the 2nd bitmap set (a page the 1st bitmap lacks)."""
    plain = patch_kdump64(small_kdump(None, block_size), bitmap_blocks=bitmap_blocks)
    head = plain[:2 * block_size]  # disk_dump_header and sub-header
    bitmap_at = 2 * block_size
    bitmap_len = bitmap_blocks // 2 * block_size
    records = [(0, head), (end_at - 1, b"\x01")]
    if dumped_bit:
        records.append((bitmap_at + 2 * bitmap_len - 1, b"\x80"))
    with open(tmp_path / "f.flat", "wb") as f:
        write_flattened(f, records)
    return str(tmp_path / "f.flat")


def test_flattened_gigabyte_bitmaps_are_never_built(tmp_path):
    # 2^20 bitmap blocks of 4 KiB (two 2 GiB bitmaps) and a record at 2^40 - 1
    path = _flat_claim(tmp_path, PAGE, 1 << 20, 1 << 40, dumped_bit=True)
    ran = run_bounded(tmp_path, "info", path, "--format", "json")
    assert_one_line(ran, "2nd bitmap marks pages dumped")
    # the same claims with nothing dumped describe an empty dump: a normal answer
    path = _flat_claim(tmp_path, PAGE, 1 << 20, 1 << 40, dumped_bit=False)
    ran = run_bounded(tmp_path, "info", path, "--format", "json")
    assert ran.code == 0 and '"present": 0' in ran.stdout and ran.rss < RSS_LIMIT


def test_flattened_petabyte_bitmaps_are_never_built(tmp_path):
    # block size 256 KiB, 2^31 bitmap blocks (two 256 TiB bitmaps), a record at 2^62
    path = _flat_claim(tmp_path, 256 << 10, 1 << 31, 1 << 62, dumped_bit=True)
    assert_one_line(run_bounded(tmp_path, "info", path), "2nd bitmap marks pages dumped")
    path = _flat_claim(tmp_path, 256 << 10, 1 << 31, 1 << 62, dumped_bit=False)
    ran = run_bounded(tmp_path, "scan", path, "--format", "json")
    assert ran.code == 0 and ran.rss < RSS_LIMIT, ran.stderr


def test_zero_length_record_does_not_set_the_plain_size(tmp_path):
    plain = patch_kdump64(small_kdump(vmcoreinfo=b"OSRELEASE=6.1\n"),
                          size_vmcoreinfo=0xFB0000000000)
    path = tmp_path / "v.flat"
    path.write_bytes(flatten(plain, extra=[(1 << 56, b"")]))
    assert_one_line(run_bounded(tmp_path, "info", path), f"VMCOREINFO of {0xFB0000000000} bytes")


def test_vmcoreinfo_claim_within_a_claimed_size_is_bounded(tmp_path):
    plain = patch_kdump64(small_kdump(vmcoreinfo=b"OSRELEASE=6.1\n"), size_vmcoreinfo=1 << 33)
    path = tmp_path / "v.flat"
    path.write_bytes(flatten(plain, extra=[((1 << 40) - 1, b"\0")]))
    assert_one_line(run_bounded(tmp_path, "info", path), "VMCOREINFO of 8589934592 bytes")


@pytest.mark.parametrize("interleaved", [False, True])
def test_flattened_five_million_records_index_is_compact(tmp_path, interleaved):
    # 1-byte records of a 5 MB plain file (1,250 stored pages), in order (makedumpfile) or
    # as two interleaved increasing sequences (QEMU's descriptors and data)
    page = bytearray(b"\x5a" * PAGE)
    page[64:112] = runstate64(1, 10**12, (10**12 - 3, 1, 1, 1))
    pages = {pfn: bytes(page) for pfn in range(0x10, 0x10 + 1250)}
    plain = kdump_file(Kdump(0x600, [(0x10, 0x10 + 1250)], pages, codec=None))
    assert len(plain) > 5_000_000
    path = tmp_path / "many.flat"
    half = len(plain) // 2

    def records():
        if not interleaved:
            yield from ((off, plain[off:off + 1]) for off in range(len(plain)))
            return
        for off in range(half):
            yield off, plain[off:off + 1]
            yield half + off, plain[half + off:half + off + 1]
        yield from ((off, plain[off:off + 1]) for off in range(2 * half, len(plain)))

    with open(path, "wb") as f:
        assert write_flattened(f, records()) == len(plain)
    ran = run_bounded(tmp_path, "decode", path, "--gpa", f"0x{0x10 * PAGE + 64:x}",
                      "--layout", "64", "--format", "json")
    assert ran.code == 0 and '"state_entry_time": 1000000000000' in ran.stdout, ran.stderr
    assert ran.rss < RSS_LIMIT, ran.rss


# ---------------------------------------------------------------------------------------------
# Codec bombs: one page that inflates far beyond its block


def _bomb_page(tmp_path, block_size: int, blob: bytes, flag: int) -> str:
    """A plain kdump whose PFN 0x10 is ``blob`` with codec ``flag`` (written stored, then its
    descriptor pointed at the blob)."""
    plain = bytearray(small_kdump(None, block_size))
    desc_at = 4 * block_size  # header, sub-header, two one-block bitmaps
    offset = struct.unpack_from("<q", plain, desc_at)[0]
    plain[offset:offset + len(blob)] = blob
    struct.pack_into("<qII", plain, desc_at, offset, len(blob), flag)
    return write(tmp_path, bytes(plain), "bomb.kdump")


@pytest.mark.parametrize("command", [("decode", "--gpa", "0x{gpa:x}", "--layout", "64"),
                                     ("scan",)])
@pytest.mark.parametrize("case", ["zstd-8k", "zstd-128k-in-64k", "zstd-128k-in-256k",
                                  "zlib-128m"])
def test_codec_bomb(tmp_path, case, command):
    if case == "zstd-8k":  # 2,046 RLE blocks: 256 MiB out
        bs, blob, flag = 16 << 10, zstd_rle_frame(2046), 0x20
    elif case == "zstd-128k-in-64k":  # 4 GiB out, and bigger than the block
        bs, blob, flag = 64 << 10, zstd_rle_frame(32767, 128 << 10)[:128 << 10], 0x20
    elif case == "zstd-128k-in-256k":
        bs, blob, flag = 256 << 10, zstd_rle_frame(32767, 128 << 10), 0x20
    else:  # 128 KiB of zlib stream that inflates to ~128 MiB
        bs, blob, flag = 256 << 10, zlib.compress(bytes(128 << 20), 9), 0x1
        assert len(blob) < bs
    path = _bomb_page(tmp_path, bs, blob, flag)
    args = [a.format(gpa=0x10 * bs) for a in command]
    line = assert_one_line(run_bounded(tmp_path, args[0], path, *args[1:]))
    assert "PFN 0x10" in line


# ---------------------------------------------------------------------------------------------
# ELF program headers by the hundred thousand


def test_elf_many_tiny_adjacent_pt_loads_scan_linearly(tmp_path):
    rec = runstate64(2, 5 * 10**12, (5 * 10**12 - 6, 2, 2, 2))
    data = bytes(16 * 9000)
    data = data[:16 * 4000 + 8] + rec + data[16 * 4000 + 8 + 48:]
    loads = [Load(0x100000 + 16 * i, data[16 * i:16 * i + 16]) for i in range(9000)]
    path = write(tmp_path, elf_core(loads), "tiny.elf")
    ran = run_bounded(tmp_path, "scan", path, "--format", "csv", "--loose")
    assert ran.code == 0 and f"0x{0x100000 + 16 * 4000 + 8:x}" in ran.stdout, ran.stderr
    assert ran.rss < RSS_LIMIT


def test_elf_65535_one_page_pt_loads_scan(tmp_path):
    n = 65535
    page = bytearray(PAGE)
    page[PAGE - 24:] = runstate64(1, 10**12, (10**12 - 3, 1, 1, 1))[:24]
    loads = [Load(PAGE * i, bytes(page) if i == 100 else bytes(PAGE)) for i in range(n)]
    loads[101] = Load(PAGE * 101, runstate64(1, 10**12, (10**12 - 3, 1, 1, 1))[24:]
                      + bytes(PAGE - 24))
    path = write(tmp_path, elf_core(loads, pn_xnum=True), "pages.elf")
    ran = run_bounded(tmp_path, "scan", path, "--format", "csv", "--loose",
                      file_size=os.path.getsize(path))
    assert ran.code == 0 and f"0x{PAGE * 101 - 24:x}" in ran.stdout, ran.stderr
    assert ran.rss < RSS_LIMIT


def test_elf_pn_xnum_million_pt_loads_metadata_is_compact(tmp_path):
    n = 1_000_000
    loads = [Load(0x1000000 + 16 * i, bytes(16)) for i in range(n)]
    loads[-1] = Load(loads[-1].paddr, bytes(16), memsz=8)  # p_filesz > p_memsz: corrupt
    path = write(tmp_path, elf_core(loads, pn_xnum=True), "xnum.elf")
    del loads
    assert_one_line(run_bounded(tmp_path, "info", path), f"PT_LOAD {n - 1}: p_filesz 0x10 > p_memsz")


# ---------------------------------------------------------------------------------------------
# kdump bitmaps of 2^32 and 2^36 PFNs (sparse files: the bitmaps are holes)


def _sparse_kdump(tmp_path, pfns: int, high_pfn: int) -> str:
    """A plain kdump of ``pfns`` PFNs whose bitmaps are holes but for PFNs 0x10 and
    ``high_pfn``, both in memory and dumped, stored raw."""
    bs = PAGE
    bitmap_len = -(-pfns // 8 // bs) * bs
    head = patch_kdump64(small_kdump(None), bitmap_blocks=2 * bitmap_len // bs,
                         max_mapnr=min(pfns, 0xFFFFFFFF), max_mapnr_64=pfns)[:2 * bs]
    bitmap_at = 2 * bs
    desc_at = bitmap_at + 2 * bitmap_len
    data_at = desc_at + 2 * 24
    page = bytearray(bs)
    page[bs - 48:] = runstate64(3, 7 * 10**12, (7 * 10**12 - 3, 1, 1, 1))
    path = tmp_path / "sparse.kdump"
    with open(path, "wb") as f:
        f.write(head)
        for pfn in (0x10, high_pfn):
            for bm in (bitmap_at, bitmap_at + bitmap_len):
                f.seek(bm + pfn // 8)
                f.write(bytes([1 << (pfn % 8)]))
        f.seek(desc_at)
        f.write(struct.pack("<qIIQ", data_at, bs, 0, 0) * 2)
        f.write(bytes(page))
    return str(path)


@pytest.mark.parametrize("bits", [32, 36])
def test_kdump_huge_bitmaps_are_read_lazily(tmp_path, bits):
    pfns = 1 << bits
    path = _sparse_kdump(tmp_path, pfns, pfns - 1)
    size = os.path.getsize(path)
    ran = run_bounded(tmp_path, "info", path, "--format", "json", file_size=size)
    assert ran.code == 0, ran.stderr
    assert '"present": 2' in ran.stdout and f'"absent": {pfns - 2}' in ran.stdout
    assert ran.rss < RSS_LIMIT
    ran = run_bounded(tmp_path, "scan", path, "--format", "csv", "--loose", file_size=size)
    assert ran.code == 0 and f"0x{pfns * PAGE - 48:x}" in ran.stdout, ran.stderr
    assert ran.rss < RSS_LIMIT
    # and without their descriptors: one line
    os.truncate(path, size - PAGE - 30)
    assert_one_line(run_bounded(tmp_path, "info", path, file_size=size),
                    "2 page descriptors do not fit")


# ---------------------------------------------------------------------------------------------
# A dump truncated while it is read


def _truncated_while_open(path: str, keep: int) -> None:
    with open_dump(path) as d:
        os.truncate(path, keep)
        with pytest.raises(DumpChangedError, match="the dump changed while being read"):
            for _ in Scanner(d.space, ScanOptions(chunk_size=4096)).hits():
                pass


def test_truncated_raw_elf_kdump_while_open(tmp_path):
    # In this process: with the mapping of the old size still in place, a touch past the new
    # end would be SIGBUS and kill pytest; the readers pread, and see the short read.
    raw = write(tmp_path, os.urandom(64 * PAGE), "t.raw")
    _truncated_while_open(raw, 10 * PAGE)
    elf = write(tmp_path, elf_core([Load(0, os.urandom(64 * PAGE))]), "t.elf")
    _truncated_while_open(elf, 10 * PAGE)
    pages = {pfn: os.urandom(PAGE // 2) * 2 for pfn in range(0x10, 0x50)}
    for codec in ("zlib", None):
        plain = kdump_file(Kdump(0x100, [(0x10, 0x50)], pages, codec=codec))
        _truncated_while_open(write(tmp_path, plain, "t.kdump"), len(plain) // 2)
        _truncated_while_open(write(tmp_path, flatten(plain), "t.flat"), len(plain) // 2)


@pytest.mark.parametrize("fmt", ["raw", "elf"])
def test_truncated_by_another_process_during_scan(tmp_path, fmt):
    size = 16 << 30  # sparse: the scan takes seconds, the truncation comes first
    path = tmp_path / f"big.{fmt}"
    if fmt == "raw":
        with open(path, "wb") as f:
            f.truncate(size)
    else:
        head = elf_core([Load(0, bytes(PAGE))], qemu_layout=False)
        phdr = 64  # classic layout: the PT_LOAD right after the ELF header
        head = bytearray(head)
        struct.pack_into("<QQ", head, phdr + 32, size, size)  # p_filesz, p_memsz
        with open(path, "wb") as f:
            f.write(head)
            f.truncate(len(head) + size)
    p = subprocess.Popen([sys.executable, "-m", "xenrs_cli", "scan", str(path), "--format",
                          "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    os.truncate(path, 1 << 20)
    out, err = p.communicate(timeout=HANG)
    assert p.returncode == 3, (p.returncode, err)
    assert err.splitlines() == [err.strip()] and "the dump changed while being read" in err


# ---------------------------------------------------------------------------------------------
# Issue 11 item 12


def test_info_of_a_kdump_missing_its_last_bytes_is_incomplete(tmp_path):
    plain = small_kdump()
    ran = run_bounded(tmp_path, "info", write(tmp_path, plain[:-100]), "--format", "json")
    assert ran.code == 0 and '"incomplete": true' in ran.stdout, ran.stderr
    ran = run_bounded(tmp_path, "info", write(tmp_path, plain), "--format", "json")
    assert ran.code == 0 and '"incomplete": false' in ran.stdout, ran.stderr
