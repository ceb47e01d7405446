"""Xen ``xl dump-core`` files: synthetic ones from the independent writer (PV and HVM, PFN order
shuffled, padding entries, 32-bit PV, truncated and corrupt), and the real dump-core of a PV
domU written by Xen 4.17 (tests/data/realxen-domu)."""

from __future__ import annotations

import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import realxen
from clitools import cli, one_line_error
from dumpwriter import (XC_INVALID, Load, XenVcpu, corrupted, elf_core, runstate64,
                        xen_core_file)
from xenrs_cli.dumps import detect, open_dump
from xenrs_cli.errors import (BadDumpError, UnmappedAddressError, UnsupportedDumpError,
                              XenrsError)

PAGE = 4096
AREA = runstate64(1, 5_000, (1_000, 2_000, 1_500, 500))


def page_of(pfn: int) -> bytes:
    """A page whose bytes say which PFN it is, with a runstate area at +0x40."""
    head = struct.pack("<Q", pfn) + bytes(0x38)
    return (head + AREA).ljust(PAGE, bytes([pfn & 0xFF]))


def pv_entries(pfns, mfn_base=0x2F400):
    return [(p, mfn_base + p, page_of(p)) for p in pfns]


def write(tmp_path, data: bytes, name="du.core") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


PFNS = list(range(0, 12)) + list(range(0x20, 0x28)) + [0x100]


@pytest.mark.parametrize("seed", [None, 1, 7])
@pytest.mark.parametrize("hvm", [False, True])
def test_every_pfn_reads_its_page_whatever_the_order(tmp_path, hvm, seed):
    path = write(tmp_path, xen_core_file(pv_entries(PFNS), [XenVcpu()], hvm=hvm, seed=seed))
    with open_dump(path) as d:
        assert (d.format, d.variant) == ("xen-core", "HVM" if hvm else "PV")
        assert d.details["pfn_order"] == ("ascending" if seed is None else "unordered")
        for pfn in PFNS:
            assert d.space.read_present(pfn * PAGE, 8) == struct.pack("<Q", pfn)
            assert d.space.read_present(pfn * PAGE + 0x40, 48) == AREA
        present = sum(e.size for e in d.space.extents())
        assert present == len(PFNS) * PAGE
        with pytest.raises(UnmappedAddressError) as e:
            d.space.read_present(12 * PAGE, 8)  # the hole between 0xb and 0x20
        assert e.value.status == "absent"
        assert (d.frame_to_gpa is None) == hvm


def test_sorted_file_gives_one_segment_per_pfn_run(tmp_path):
    path = write(tmp_path, xen_core_file(pv_entries(PFNS), [XenVcpu()]))
    with open_dump(path) as d:
        runs = [(s.gpa // PAGE, s.size // PAGE) for s in d.space.segments]
    assert runs == [(0, 12), (0x20, 8), (0x100, 1)]


def test_decode_and_info_from_the_command_line(tmp_path):
    path = write(tmp_path, xen_core_file(pv_entries(PFNS), [XenVcpu(), XenVcpu()], seed=3))
    r = cli("decode", path, "--gpa", 0x21040, "--format", "json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert (rec["state_code"], rec["state_entry_time"], list(rec["time"].values())) == (
        1, 5000, [1000, 2000, 1500, 500])
    info = json.loads(cli("info", path, "--format", "json").stdout)
    assert info["format"] == "xen-core" and info["vcpus"] == 2
    assert info["details"]["nr_pages"] == len(PFNS)
    assert info["details"]["xen_version"] == "4.17.7-xen"
    assert info["details"]["format_version"] == "0.1"
    assert cli("info", path).exit_code == 0  # the table view


def test_pv_vcpu_contexts_and_machine_frames(tmp_path):
    # vCPU 0's kernel page table is PFN 5 = MFN 0x2f405; its user table PFN 6
    v0 = XenVcpu(ctrlreg=(0x80050033, 0x2F406000, 0, 0x2F405000, 0x50660, 0, 0, 0),
                 rip=0xFFFFFFFF81000000, flags=0x25)
    v1 = XenVcpu(ctrlreg=(0x80050033, 0, 0, 0x99999000, 0x50660, 0, 0, 0), rip=0x400000,
                 flags=0x21, cs=0x33)
    path = write(tmp_path, xen_core_file(pv_entries(PFNS), [v0, v1], seed=5))
    with open_dump(path) as d:
        assert [(c.index, c.cr0, c.cr3, c.cr4) for c in d.cpus] == [
            (0, 0x80050033, 0x2F405000, 0x50660), (1, 0x80050033, 0x99999000, 0x50660)]
        assert d.frame_to_gpa(0x2F405) == 5 and d.frame_to_gpa(0x2F400 + 0x100) == 0x100
        assert d.frame_to_gpa(0x2F40C) is None  # PFN 0xc is not in the dump
        assert d.frame_to_gpa(0x99999) is None
        ctx = d.details["vcpu_contexts"]
    assert ctx[0]["flags"] == ["i387_valid", "in_kernel", "online"]
    assert (ctx[0]["cr3_mfn"], ctx[0]["cr3_pfn"], ctx[0]["user_cr3"]) == ("0x2f405", "0x5",
                                                                           "0x2f406000")
    assert (ctx[0]["rip"], ctx[1]["rip"], ctx[1]["cs"]) == ("0xffffffff81000000", "0x400000",
                                                            "0x33")
    assert ctx[1]["cr3_pfn"] is None


def test_hvm_cr3_is_guest_physical(tmp_path):
    v = XenVcpu(ctrlreg=(0x80000011, 0, 0, 0x5000, 0x20, 0, 0, 0))
    with open_dump(write(tmp_path, xen_core_file(pv_entries(PFNS), [v], hvm=True))) as d:
        assert d.cpus[0].cr3 == 0x5000 and d.frame_to_gpa is None
        assert "cr3_mfn" not in d.details["vcpu_contexts"][0]


def test_32bit_pv_guest_cr3_is_rotated(tmp_path):
    # xen_pfn_to_cr3() for a 32-bit guest: cr3 = mfn << 12 | mfn >> 20; MFN 0x100005 (above
    # 4 GiB) becomes 0x00005001 << 12 ... = 0x5001 with the top bits wrapped into the low ones.
    mfn = 0x100005
    cr3 = ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF
    entries = [(p, 0x100000 + p, page_of(p)) for p in range(8)]
    v = XenVcpu(ctrlreg=(0x80050033, 0, 0, cr3, 0x6F0, 0, 0, 0), rip=0xC1000000)
    with open_dump(write(tmp_path, xen_core_file(entries, [v], guest32=True))) as d:
        assert d.details["guest_width"] == "32-bit"
        assert d.cpus[0].cr3 == mfn << 12 and d.frame_to_gpa(mfn) == 5
        assert d.details["vcpu_contexts"][0]["rip"] == "0xc1000000"


def test_padding_entries_are_not_memory(tmp_path):
    # a live dump of a shrinking domain: xg_core.c pads with zero pages of PFN ~0
    entries = pv_entries(range(4)) + [(XC_INVALID, XC_INVALID, bytes(PAGE))] * 2
    for seed in (None, 2):
        with open_dump(write(tmp_path, xen_core_file(entries, [XenVcpu()], seed=seed))) as d:
            assert d.details["padding_pages"] == 2
            assert d.space.end == 4 * PAGE
            assert d.frame_to_gpa(XC_INVALID) is None


def test_detection_and_forced_formats(tmp_path):
    path = write(tmp_path, xen_core_file(pv_entries(range(2)), [XenVcpu()]))
    with open_dump(path) as d:
        assert detect(d.file.buf) == "xen-core"
    with pytest.raises(UnsupportedDumpError, match="--dump-format xen-core"):
        open_dump(path, "elf")
    assert cli("info", path, "--dump-format", "xen-core").exit_code == 0
    # an ordinary ELF core is not one
    elf = write(tmp_path, elf_core([Load(0, bytes(PAGE))]), "vm.elf")
    assert "not an xl dump-core" in one_line_error(cli("info", elf, "--dump-format", "xen-core"))


@pytest.mark.parametrize("cut", [0x400, 0x3000, -100])
def test_truncated_files_are_one_line_errors(tmp_path, cut):
    data = xen_core_file(pv_entries(range(4)), [XenVcpu()])
    path = write(tmp_path, data[:cut])
    msg = one_line_error(cli("decode", path, "--gpa", 0x40))
    assert "truncated" in msg or "past the end of the file" in msg, msg


def test_corrupt_headers_and_tables(tmp_path):
    with pytest.raises(BadDumpError, match="magic 0x12345678"):
        open_dump(write(tmp_path, xen_core_file(pv_entries(range(2)), [XenVcpu()],
                                                magic=0x12345678)))
    data = xen_core_file(pv_entries(range(2)), [XenVcpu()])
    header = struct.pack("<QQQQ", 0xF00FEBED, 1, 2, 4096)
    assert data.count(header) == 1
    with pytest.raises(BadDumpError, match="page size 3000"):
        open_dump(write(tmp_path, data.replace(header, header[:24] + struct.pack("<Q", 3000))))
    with pytest.raises(BadDumpError, match="holds 2 pages, the header says 3"):
        open_dump(write(tmp_path, data.replace(header, header[:16] + struct.pack("<QQ", 3, 4096))))
    dup = pv_entries([0, 1, 2]) + [(1, 0x9999, page_of(1))]
    with pytest.raises(BadDumpError, match="PFN 0x1 appears twice"):
        open_dump(write(tmp_path, xen_core_file(dup, [XenVcpu()])))
    huge = pv_entries([0]) + [(1 << 41, 5, page_of(0))]
    with pytest.raises(BadDumpError, match="beyond 2\\^52"):
        open_dump(write(tmp_path, xen_core_file(huge, [XenVcpu()])))


# ---------------------------------------------------------------------------------------------
# The real dump-core of a PV domU (Xen 4.17, Linux 6.1, 2 vCPUs, 96 MiB)


@pytest.fixture(scope="module")
def du1():
    with open_dump(str(realxen.path("du1.core"))) as d:
        yield d


def test_real_dump_core_layout(du1):
    core = realxen.domu_manifest()["dump_core"]
    assert (du1.format, du1.variant, du1.page_size) == ("xen-core", "PV", 4096)
    assert du1.details["nr_pages"] == 24576 and du1.details["vcpus"] == 2
    assert du1.details["pfn_order"] == "ascending" and du1.details["padding_pages"] == 0
    for name, sec in core["sections"].items():
        assert du1.details["sections"][name] == {"offset": sec["offset"], "size": sec["size"]}
    [ext] = list(du1.space.extents())
    assert (ext.gpa, ext.size, ext.file_offset) == (0, 96 << 20, 0x4000)
    assert du1.details["xen_version"].startswith("4.17")


def test_real_dump_core_every_area_decodes_to_the_manifest(du1):
    areas = realxen.domu_manifest()["domU_areas"]
    assert len(areas) == 2
    for a in areas:
        gpa = int(a["pfn"], 16) << 12 | int(a["maddr"], 16) & 0xFFF
        data, pieces = du1.space.read(gpa, 48)
        assert data.hex() == a["hex"]
        assert [p.file_offset for p in pieces] == [int(a["offset_in_dump_core"], 16)]
        assert du1.frame_to_gpa(int(a["mfn"], 16)) == int(a["pfn"], 16)
        r = cli("decode", realxen.path("du1.core"), "--gpa", gpa, "--format", "json")
        rec = json.loads(r.stdout)
        assert (rec["state_code"], rec["state_entry_time"], list(rec["time"].values())) == (
            a["state"], a["state_entry_time"], a["time"])
        assert rec["raw"] == a["hex"] and rec["pieces"][0]["status"] == "present"


def test_real_dump_core_vcpu_contexts_walk_to_the_areas(du1):
    """A 4-level walk from each vCPU's ctrlreg[3], every table frame (an MFN) turned into a PFN
    by frame_to_gpa, reaches the area's PFN: what the manifest's third route did."""
    areas = realxen.domu_manifest()["domU_areas"]
    assert [c.cr3 for c in du1.cpus][0] == int(areas[0]["prstatus_ctrlreg3_kernel_cr3"], 16)
    ctx = du1.details["vcpu_contexts"]
    assert ctx[0]["user_cr3"] == areas[0]["prstatus_ctrlreg1_user_cr3"]
    assert "in_kernel" not in ctx[0]["flags"] and "in_kernel" in ctx[1]["flags"]
    for cpu, a in zip(du1.cpus, areas):
        va, frame = int(a["guest_va"], 16), cpu.cr3 >> 12
        for level in (39, 30, 21, 12):
            pfn = du1.frame_to_gpa(frame)
            index = va >> level & 0x1FF
            entry = int.from_bytes(du1.space.read_present(pfn * 4096 + index * 8, 8), "little")
            assert entry & 1, (level, hex(entry))
            if entry & 0x80 and level in (30, 21):  # a large page
                frame = (entry & 0xFFFFFFFFFF000 & ~((1 << level) - 1)) >> 12 | \
                    (va >> 12 & ((1 << (level - 12)) - 1))
                break
            frame = (entry & 0xFFFFFFFFFF000) >> 12
        assert frame == int(a["mfn"], 16)
        assert du1.frame_to_gpa(frame) == int(a["pfn"], 16)


def test_scattered_pages_have_their_own_file_offsets(tmp_path):
    entries = pv_entries(PFNS)
    data = xen_core_file(entries, [XenVcpu()], seed=11)
    path = write(tmp_path, data)
    with open_dump(path) as d:
        seen = set()
        for e in d.space.extents():
            for k in range(e.size // PAGE):
                pfn = e.gpa // PAGE + k
                at = e.file_offset + k * PAGE
                assert data[at:at + 8] == struct.pack("<Q", pfn)  # the page of that PFN
                seen.add(pfn)
            assert e.detail.startswith(f"PFN 0x{e.gpa // PAGE:x}")
        assert seen == set(PFNS)
        # a read across two scattered pages: each piece has the offset of its own page
        data_read, pieces = d.space.read(0x21000 - 8, 16)
        assert [data[p.file_offset:p.file_offset + p.len] for p in pieces] == [
            data_read[:8], data_read[8:]]
        assert d.space.segments[0].read_span(0, 3 * PAGE) == b"".join(
            page_of(p) for p in range(3))


def test_out_of_order_runs_stored_contiguously_are_linear(tmp_path):
    # PFNs 8..11 first, then 0..3: each PFN run is contiguous in .xen_pages
    path = write(tmp_path, xen_core_file(pv_entries([8, 9, 10, 11, 0, 1, 2, 3]), [XenVcpu()]))
    with open_dump(path) as d:
        assert d.details["pfn_order"] == "unordered"
        assert [(e.gpa, e.size, e.detail) for e in d.space.extents()] == [
            (0, 4 * PAGE, "PFN 0x0-0x3 (.xen_pages[4])"),
            (8 * PAGE, 4 * PAGE, "PFN 0x8-0xb (.xen_pages[0])")]
        assert d.space.read_present(0x2040, 48) == AREA


@settings(max_examples=40, deadline=None)
@given(pfns=st.sets(st.integers(0, 600), min_size=1, max_size=40), seed=st.integers(0, 1 << 16),
       padding=st.integers(0, 3), hvm=st.booleans())
def test_any_table_order_reads_every_page_and_maps_every_frame(tmp_path_factory, pfns, seed,
                                                               padding, hvm):
    """Property: whatever the PFN set, the table order and the padding, each PFN's GPA reads the
    page written for it, the rest is absent, and (PV) each MFN maps back to its PFN."""
    rng = random.Random(seed)
    mfns = rng.sample(range(0x1000, 0x9000), len(pfns))
    entries = [(p, m, page_of(p)) for p, m in zip(sorted(pfns), mfns)]
    entries += [(XC_INVALID, XC_INVALID, bytes(PAGE))] * padding
    path = write(tmp_path_factory.mktemp("core"),
                 xen_core_file(entries, [XenVcpu()], hvm=hvm, seed=seed))
    with open_dump(path) as d:
        for p, m, _ in entries[:len(pfns)]:
            assert d.space.read_present(p * PAGE, 8) == struct.pack("<Q", p)
            if not hvm:
                assert d.frame_to_gpa(m) == p
        assert sum(e.size for e in d.space.extents()) == len(pfns) * PAGE
        absent = next(p for p in range(602) if p not in pfns)
        assert d.space.pieces(absent * PAGE, 8)[0].status.value == "absent"
        assert d.details["padding_pages"] == padding


def test_corrupted_files_never_crash(tmp_path):
    """Bytes flipped in the headers, notes, contexts and table, or the file cut anywhere: the
    reader opens it or fails with a XenrsError (one line, exit 3), never anything else."""
    data = xen_core_file(pv_entries([0, 1, 2, 5, 6, 9]), [XenVcpu(), XenVcpu()], seed=2)
    table_at = len(data) - 6 * 16 - len(b"\0.shstrtab\0.note.Xen\0.xen_prstatus\0"
                                        b".xen_shared_info\0.xen_pages\0.xen_p2m\0")
    rng = random.Random(5)
    path = tmp_path / "c.core"
    for _ in range(300):
        path.write_bytes(corrupted(data, rng, lambda r, n: r.randrange(2000) if r.random() < 0.6
                                   else r.randrange(table_at, n)))
        try:
            with open_dump(str(path)) as d:
                for s in d.space.segments:
                    d.space.read(s.gpa, s.size)
                list(d.space.extents())
                if d.frame_to_gpa:
                    d.frame_to_gpa(0x2F400)
        except XenrsError:
            pass


def test_contexts_of_other_architectures_are_not_misread(tmp_path):
    data = bytearray(xen_core_file(pv_entries(range(2)), [XenVcpu()], hvm=True))
    data[18:20] = (183).to_bytes(2, "little")  # e_machine EM_AARCH64 (xg_core.c ELF_ARCH_MACHINE)
    with open_dump(write(tmp_path, bytes(data))) as d:
        assert d.details["machine"] == "EM_AARCH64" and d.cpus == ()
        assert "vcpu_contexts" not in d.details and d.details["vcpus"] == 1
        assert d.space.read_present(0x1040, 48) == AREA
