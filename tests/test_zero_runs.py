"""Zero pages a dump records without storing them each, passed by in ``scan``: a kdump's
shared zero page, found in the descriptor table, and a QEMU migration stream's zero pages.

QEMU and makedumpfile point every zero page's descriptor at one stored page of zeros
(:meth:`Pages.zero_descriptor`); ``scan`` treats long runs of them as zero-filled
(``scan_windows._zero_split``). These tests check the runs against the writer's own pages, and
that a scan finds exactly the same records, with the same statistics, whether it passes them by
or reads them.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dumpwriter import Kdump, flatten, kdump_file, runstate64
from xenrs_cli import scan_windows
from xenrs_cli.dumps import kdump, open_dump
from xenrs_cli.scan import Scanner, ScanOptions, hit_to_json_dict

PAGE = 4096


def write(tmp_path, data: bytes, name: str = "d.kdump") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def zero_runs_of(path: str) -> list[tuple[int, int]]:
    """``(gpa, end)`` of every zero run the segments report, merged across segments."""
    out: list[tuple[int, int]] = []
    with open_dump(path) as d:
        for seg in d.space.segments:
            for a, b in seg.zero_runs(0, seg.size):
                if out and out[-1][1] == seg.gpa + a:
                    out[-1] = (out[-1][0], seg.gpa + b)
                else:
                    out.append((seg.gpa + a, seg.gpa + b))
    return out


def expected_runs(pages: dict[int, bytes]) -> list[tuple[int, int]]:
    """The writer's own zero pages, as GPA runs of consecutive dumped PFNs."""
    out: list[tuple[int, int]] = []
    for pfn in sorted(pages):
        if pages[pfn] != bytes(PAGE):
            continue
        if out and out[-1][1] == pfn * PAGE:
            out[-1] = (out[-1][0], (pfn + 1) * PAGE)
        else:
            out.append((pfn * PAGE, (pfn + 1) * PAGE))
    return out


# pages: z zero, d data, x excluded (in the memory map, not dumped), a absent (a map hole)
@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("zzzzdxa"), min_size=1, max_size=80), st.integers(0, 3))
def test_zero_runs_are_the_writers_zero_pages(tmp_path_factory, layout, small):
    tmp = tmp_path_factory.mktemp("z")
    rng = random.Random(len(layout))
    pages, in_map = {}, []
    for pfn, kind in enumerate(layout):
        if kind != "a":
            if in_map and in_map[-1][1] == pfn:
                in_map[-1] = (in_map[-1][0], pfn + 1)
            else:
                in_map.append((pfn, pfn + 1))
        if kind == "z":
            pages[pfn] = bytes(PAGE)
        elif kind == "d":
            pages[pfn] = rng.randbytes(PAGE)
    if not in_map:
        return
    k = Kdump(len(layout) + 1, in_map, pages)
    old = kdump.DESC_BATCH, kdump.ZERO_RUN_PROBE
    # tiny batches and probes: runs across descriptor batches, and the binary search at the
    # end of a run, on a few pages
    kdump.DESC_BATCH, kdump.ZERO_RUN_PROBE = (old, (7, 3), (5, 1), (64, 2))[small]
    try:
        plain = kdump_file(k)
        for name, data in (("p.kdump", plain), ("f.flat", flatten(plain, seed=1))):
            assert zero_runs_of(write(tmp, data, name)) == expected_runs(pages)
    finally:
        kdump.DESC_BATCH, kdump.ZERO_RUN_PROBE = old


def test_long_run_across_batches(tmp_path):
    """70,000 zero pages (more than one 65,536-descriptor batch) between data pages."""
    n = 70_000
    pages = {pfn: bytes(PAGE) for pfn in range(1, n + 1)}
    pages[0] = pages[n + 1] = b"\x01" * PAGE
    path = write(tmp_path, kdump_file(Kdump(n + 2, [(0, n + 2)], pages)))
    assert zero_runs_of(path) == [(PAGE, (n + 1) * PAGE)]


def test_no_zero_runs_when_the_shared_page_is_not_zeros(tmp_path):
    """Only a stored page of zeros is the zero page: if the slot holds anything else, the
    descriptors pointing at it are ordinary pages and are read."""
    pages = {pfn: bytes(PAGE) for pfn in range(40)}
    data = bytearray(kdump_file(Kdump(41, [(0, 40)], pages)))
    with open_dump(write(tmp_path, bytes(data))) as d:
        at = d.space.segments[0].pages.data_at
    data[at + 100] = 0x5A
    path = write(tmp_path, bytes(data), "changed.kdump")
    assert zero_runs_of(path) == []
    with open_dump(path) as d:
        assert d.space.read(17 * PAGE + 100, 1)[0] == b"\x5a"


def scan_json(path: str) -> tuple[list[dict], dict]:
    with open_dump(path) as d:
        return scan_json_space(d.space, chunk_size=8 * PAGE)


def scan_json_space(space, **opts) -> tuple[list[dict], dict]:
    sc = Scanner(space, ScanOptions(**opts))
    hits = [hit_to_json_dict(h, "x") for h in sc.hits()]
    stats = sc.stats
    return hits, {**stats.to_json_dict(PAGE), "examples": stats.rejected_examples}


def test_scan_is_the_same_with_zero_runs_passed_by(tmp_path, monkeypatch):
    """Records at the edges of long zero runs (their last fields zero, in the first zero page;
    right after a run), between runs and in a run of data pages: the same hits and the same
    statistics as a scan that reads every zero page."""
    rng = random.Random(7)
    zero = bytes(PAGE)
    pages = {}
    for pfn in range(200):
        pages[pfn] = zero if (pfn // 20) % 2 else rng.randbytes(PAGE)

    def plant(gpa: int, rec: bytes) -> None:
        for i, b in enumerate(rec):
            pfn, off = divmod(gpa + i, PAGE)
            page = bytearray(pages[pfn])
            page[off] = b
            pages[pfn] = bytes(page)

    base = 3_000_000_000
    # data pages 0-19, 40-59, 80-99, ...; zero pages 20-39, 60-79, 100-119, ...
    # one whose time[2], time[3] lie in the first page of the zero run at PFN 20
    plant(20 * PAGE - 32, runstate64(0, base + 700_000_000, (base, 700_000_000, 0, 0)))
    # one in the first page after that run, one in the middle of data pages
    plant(40 * PAGE, runstate64(2, base + 5_000_000, (base, 2_000_000, 3_000_000, 0)))
    plant(85 * PAGE + 512, runstate64(1, base + 9_000_000, (base, 4_000_000, 5_000_000, 0)))
    # one in a lone data page in the middle of the zero run of PFNs 100-119
    plant(110 * PAGE + 1024, runstate64(0, base + 11_000_000, (base, 5_000_000, 6_000_000, 0)))
    plain = kdump_file(Kdump(201, [(0, 200)], pages))
    for name, data in (("p.kdump", plain), ("f.flat", flatten(plain, seed=2))):
        path = write(tmp_path, data, name)
        assert len(zero_runs_of(path)) >= 4
        passed_by = scan_json(path)
        with monkeypatch.context() as m:
            m.setattr(scan_windows, "ZERO_SKIP_MIN", 1 << 62)
            read_all = scan_json(path)
        assert passed_by == read_all
        # (those followed by zeros also read as compat twins 4 bytes on: reported as such)
        found = [h["gpa"] for h in passed_by[0] if h["layout"] == "64"]
        assert found == [hex(20 * PAGE - 32), hex(40 * PAGE), hex(85 * PAGE + 512),
                         hex(110 * PAGE + 1024)]


def test_real_kdump_zero_runs_match_its_elf_twin():
    """On the real Xen dom0 kdump, every page in a zero run reads as zeros in the ELF dump of
    the same machine, and the runs cover QEMU's shared zero pages (84 % of the memory)."""
    import realxen

    runs = zero_runs_of(str(realxen.path("p2.kdump-zlib.kdump")))
    # (QEMU's pd_zero descriptors, counted by hand: 86,184 of its 102,432 dumped pages)
    assert sum(b - a for a, b in runs) // PAGE == 86184
    with open_dump(str(realxen.path("p2.elf"))) as elf:
        for a, b in runs[::7]:
            data, _ = elf.space.read(a, b - a)
            assert data == bytes(b - a)


# QEMU migration streams: zero pages are index entries (precopy) or clear bitmap bits in a
# completed mapped-ram file, also passed by.
MIGRATION = ["pc.q10.booted.mig", "q35.q72.compress.mig", "q35.q10.mapped-ram.mig",
             "pc.q10.mapped-ram-at-4k.mig"]


@pytest.mark.parametrize("name", MIGRATION)
def test_migration_zero_runs_are_zero_pages_and_scan_is_the_same(name, monkeypatch):
    import qemu_streams

    from xenrs_cli.address_space import Status

    path = str(qemu_streams.dump_path(name))
    runs = zero_runs_of(path)
    with open_dump(path) as d:
        mapped = [b for b in d.details["ram_blocks"] if b["gpa"].startswith("0x")]
        assert sum(b - a for a, b in runs) // PAGE >= 0.9 * sum(b["zero"] for b in mapped)
        rng = random.Random(name)
        for a, b in rng.sample(runs, min(40, len(runs))):
            g = rng.randrange(a, b) // PAGE * PAGE
            assert all(p.status is Status.PRESENT for p in d.space.pieces(g, PAGE))
            assert d.space.read_present(g, PAGE) == bytes(PAGE)
        passed_by = scan_json_space(d.space)
        monkeypatch.setattr(scan_windows, "ZERO_SKIP_MIN", 1 << 62)
        assert scan_json_space(d.space) == passed_by
