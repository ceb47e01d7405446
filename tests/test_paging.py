"""The page-table walker against tables built by an independent writer (tests/pagetables.py):
every paging mode, every page size, areas split over non-adjacent pages, every broken table."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from clitools import cli, one_line_error
from dumpwriter import Kdump, Load, Note, elf_core, kdump_file, qemu_cpu_state, runstate64
from pagetables import G1, K4, M2, M4, Memory, Tables
from xenrs_cli.address_space import Status
from xenrs_cli.dumps import open_dump
from xenrs_cli.errors import BadVirtualAddressError, PageNotPresentError, PageWalkError
from xenrs_cli.guest_va import Paging, decode_va
from xenrs_cli.paging import PageWalker, mode_of
from xenrs_cli.cpu_state import CpuState

KVA = {"5": 0xFF11_2233_4455_6000, "4": 0xFFFF_8880_0982_F000, "pae": 0xC123_4000,
       "32": 0xC123_4000}
SIZES = {"5": (K4, M2, G1), "4": (K4, M2, G1), "pae": (K4, M2), "32": (K4, M4)}
MEM_SIZE = 0x80_0000  # 8 MiB of raw image: tables at 4 MiB, data below


def build(mode: str, first_pfn: int = 0x400, **kw) -> tuple[Memory, Tables]:
    mem = Memory()
    return mem, Tables(mem, mode, first_pfn, **kw)


def raw_dump(tmp_path, mem: Memory, size: int = MEM_SIZE, name: str = "g.raw"):
    path = tmp_path / name
    path.write_bytes(mem.image(size))
    return path


@pytest.mark.parametrize("mode,size", [(m, s) for m, sizes in SIZES.items() for s in sizes])
def test_every_mode_and_page_size_translates(tmp_path, mode, size):
    mem, t = build(mode)
    va = KVA[mode] & ~(size - 1)
    target = 0x4000_0000 if size == G1 else 0x40_0000 * 3 if size == M4 else 0x20_0000
    t.map(va, target, size)
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        w = PageWalker(d.space, t.cr3, mode)
        for off in sorted({0, 1, 0xFFF, 0x1000 % size, size // 2 + 0x123, size - 1}):
            assert w.translate(va + off) == (target + off, size)


@pytest.mark.parametrize("mode", list(SIZES))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_random_4k_mappings_round_trip(tmp_path_factory, mode, data):
    """Any set of 4 KiB pages, anywhere the mode can address, lands where the writer put it."""
    tmp = tmp_path_factory.mktemp("pt")
    bits = {"5": 57, "4": 48, "pae": 32, "32": 32}[mode]
    pages = data.draw(st.lists(st.integers(0, (1 << (bits - 12)) - 1), min_size=1, max_size=6,
                               unique=True))
    frames = data.draw(st.lists(st.integers(0, 0x3FF), min_size=len(pages),
                                max_size=len(pages)))
    mem, t = build(mode)
    vas = []
    for vpn, frame in zip(pages, frames):
        va = vpn << 12
        if bits > 32 and va >> (bits - 1):
            va |= ((1 << 64) - 1) ^ ((1 << bits) - 1)  # canonical: sign-extend
        t.map(va, frame * K4)
        vas.append((va, frame))
    with open_dump(str(raw_dump(tmp, mem))) as d:
        w = PageWalker(d.space, t.cr3, mode)
        for va, frame in vas:
            off = data.draw(st.integers(0, K4 - 1))
            assert w.translate(va + off) == (frame * K4 + off, K4)


def test_4mib_page_above_4gib_uses_pse36_bits(tmp_path):
    mem, t = build("32")
    t.map(0xC040_0000, 0x3_0040_0000, M4)  # PA[39:32] = 3 lives in PDE bits 20:13
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        assert PageWalker(d.space, t.cr3, "32").translate(0xC040_0123) == (0x3_0040_0123, M4)
        # without CR4.PSE the PS bit means nothing: the PDE points at a page table
        with pytest.raises(PageWalkError):
            PageWalker(d.space, t.cr3, "32", pse=False).translate(0xC040_0123)


# -- areas over two pages ---------------------------------------------------------------------

AREA = runstate64(1, 5_200_000_000, (4_000_000_000, 200_000_000, 1_000_000_000, 0))


@pytest.mark.parametrize("mode", list(SIZES))
def test_area_split_over_non_adjacent_pages(tmp_path, mode):
    """The flag byte first in the next virtual page, which lies *below* the first one in GPA:
    the decode reads each byte where the guest does, and warns where KVM would write."""
    mem, t = build(mode)
    va = KVA[mode] + K4 - 15
    t.map(KVA[mode], 0x20_5000)
    t.map(KVA[mode] + K4, 0x10_3000)
    mem.write(0x20_5000 + K4 - 15, AREA[:15])
    mem.write(0x10_3000, AREA[15:])
    mem.write(0x20_6000, b"\xee" * 64)  # what KVM's gpa + split_at would hit
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        d.cpus = (CpuState(0, cr3=t.cr3),)
        v = decode_va(d, va, "64", paging=Paging(mode=mode))
    rec = v.decoded
    assert rec.raw == AREA and rec.gpa == 0x20_5FF1 and rec.split_at == 15
    assert [(p.gpa, p.offset, p.len, p.status) for p in rec.pieces] == [
        (0x20_5FF1, 0, 15, Status.PRESENT), (0x10_3000, 15, 33, Status.PRESENT)]
    assert v.flag_byte_gpa == 0x10_3000
    assert any("KVM" in w and "0x205ff1" not in w and "0x206000" in w and "0x103000" in w
               for w in rec.warnings)


def test_adjacent_pages_give_one_piece_and_no_warning(tmp_path):
    mem, t = build("4")
    t.map(KVA["4"], 0x20_5000)
    t.map(KVA["4"] + K4, 0x20_6000)
    mem.write(0x20_5FF1, AREA)
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        d.cpus = (CpuState(0, cr3=t.cr3),)
        v = decode_va(d, KVA["4"] + K4 - 15, "64")
    assert v.decoded.raw == AREA and not any("KVM" in w for w in v.decoded.warnings)
    assert [p.gpa for p in v.decoded.pieces] == [0x20_5FF1, 0x20_6000]  # page boundary only


def split_area_dump(tmp_path):
    """A raw dump whose area at VA ``KVA["4"] + K4 - 15`` is split across two pages that are
    not adjacent in guest-physical memory (15 bytes at 0x205ff1, the rest at 0x103000)."""
    mem, t = build("4")
    t.map(KVA["4"], 0x20_5000)
    t.map(KVA["4"] + K4, 0x10_3000)
    mem.write(0x20_5FF1, AREA[:15])
    mem.write(0x10_3000, AREA[15:])
    return raw_dump(tmp_path, mem), t


def test_cli_split_area_record(tmp_path):
    path, t = split_area_dump(tmp_path)
    r = cli("decode", path, "--va", hex(KVA["4"] + K4 - 15), "--cr3", hex(t.cr3),
            "--layout", "64", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert rec["va"] == hex(KVA["4"] + K4 - 15) and rec["cr3"] == hex(t.cr3)
    assert rec["gpa"] == "0x205ff1" and rec["flag_byte_gpa"] == "0x103000"
    assert [p["gpa"] for p in rec["pieces"]] == ["0x205ff1", "0x103000"]
    assert rec["state"] == "runnable" and rec["time"]["running"] == 4_000_000_000
    assert "KVM" in r.stderr and "0x206000" in r.stderr


# -- broken tables ----------------------------------------------------------------------------

LEVELS = {"5": ("PML5E", "PML4E", "PDPTE", "PDE", "PTE"), "4": ("PML4E", "PDPTE", "PDE", "PTE"),
          "pae": ("PDPTE", "PDE", "PTE"), "32": ("PDE", "PTE")}


@pytest.mark.parametrize("mode,level", [(m, lv) for m, lvs in LEVELS.items() for lv in lvs])
def test_non_present_entry_at_each_level(tmp_path, mode, level):
    mem, t = build(mode)
    va = KVA[mode] + 0x28
    t.map(KVA[mode], 0x20_5000)
    t.put(va, level, t.get(va, level) & ~1)  # clear P, keep the rest
    entry_gpa = t.entry_gpa(va, level)
    path = raw_dump(tmp_path, mem)
    with open_dump(str(path)) as d:
        with pytest.raises(PageNotPresentError) as e:
            PageWalker(d.space, t.cr3, mode).translate(va)
    assert (e.value.va, e.value.level, e.value.entry_gpa) == (va, level, entry_gpa)
    line = one_line_error(cli("decode", path, "--va", hex(va), "--cr3", hex(t.cr3),
                              "--paging", mode), 3, f"VA {va:#x}", level, f"GPA {entry_gpa:#x}",
                          "not present")
    assert "Traceback" not in line


@pytest.mark.parametrize("status", ["absent", "excluded"])
def test_table_page_missing_from_the_dump(tmp_path, status):
    """The PDE's table is at PFN 0x402; the dump lacks it: the error names its provenance."""
    mem, t = build("4")
    t.map(KVA["4"], 0x20_5000)
    pd_gpa = t.entry_gpa(KVA["4"], "PDE")
    pages = {pfn: bytes(p) for pfn, p in mem.pages.items() if pfn != pd_gpa // K4}
    in_map = [(0, 0x800)] if status == "excluded" else [(p, p + 1) for p in sorted(pages)]
    path = tmp_path / "g.kdump"
    path.write_bytes(kdump_file(Kdump(0x800, in_map, pages, codec=None)))
    one_line_error(cli("decode", path, "--va", hex(KVA["4"]), "--cr3", hex(t.cr3)), 3,
                   "PDE", f"GPA {pd_gpa:#x}", status)


@pytest.mark.parametrize("mode,level,bit,size", [
    ("4", "PDE", 13, M2), ("4", "PDPTE", 20, G1), ("5", "PDE", 20, M2), ("32", "PDE", 21, M4)])
def test_large_page_with_reserved_address_bits(tmp_path, mode, level, bit, size):
    mem, t = build(mode)
    va = KVA[mode] & ~(size - 1)
    t.map(va, 0x4000_0000 if size == G1 else 0x40_0000, size)
    t.put(va, level, t.get(va, level) | 1 << bit)
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        with pytest.raises(PageWalkError, match="reserved") as e:
            PageWalker(d.space, t.cr3, mode).translate(va)
    assert (e.value.level, e.value.entry_gpa) == (level, t.entry_gpa(va, level))


def test_pae_pdpte_with_reserved_bits(tmp_path):
    mem, t = build("pae")
    t.map(KVA["pae"], 0x20_5000)
    t.put(KVA["pae"], "PDPTE", t.get(KVA["pae"], "PDPTE") | 0x2)  # R/W is reserved in a PDPTE
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        with pytest.raises(PageWalkError, match="reserved"):
            PageWalker(d.space, t.cr3, "pae").translate(KVA["pae"])


@pytest.mark.parametrize("mode,va", [("4", 0x0000_8000_0000_0000), ("4", 0xFFFF_0000_0000_0000),
                                     ("5", 0x0100_0000_0000_0000), ("pae", 1 << 32),
                                     ("32", 0x1_0000_0000)])
def test_va_the_mode_cannot_hold(tmp_path, mode, va):
    mem, t = build(mode)
    t.map(KVA[mode], 0x20_5000)
    path = raw_dump(tmp_path, mem)
    with open_dump(str(path)) as d:
        with pytest.raises(BadVirtualAddressError):
            PageWalker(d.space, t.cr3, mode).translate(va)
    one_line_error(cli("decode", path, "--va", hex(va), "--cr3", hex(t.cr3), "--paging", mode),
                   3, f"VA {va:#x}")


def test_bad_va_option_is_a_usage_error():
    one_line_error(cli("decode", "x.raw", "--va", "0x1_0000_0000_0000_0000"), 2, "--va")
    one_line_error(cli("decode", "x.raw", "--va", "kernel"), 2, "--va")


# -- machine frames (PV guests) -----------------------------------------------------------------

def test_frame_map_translates_every_frame_read(tmp_path):
    """Tables whose entries (and CR3) hold machine frames: every one goes through
    ``frame_to_gpa``, also the frame of a 4 KiB piece of a large page."""
    mfn = lambda pfn: pfn ^ 0x5_5000          # the writer's GPA frame -> "machine" frame
    gfn = {mfn(p): p for p in range(0x1000)}  # the dump's map back
    mem, t = build("4", frame_of=mfn)
    t.map(KVA["4"], 0x20_5000)
    t.map(0xFFFF_C900_0000_0000, 0x40_0000, M2)
    path = raw_dump(tmp_path, mem)
    with open_dump(str(path)) as d:
        seen = []
        def frame_to_gpa(f):
            seen.append(f)
            return gfn.get(f)
        d.frame_to_gpa = frame_to_gpa
        assert t.cr3 >> 12 != t.root >> 12
        w = PageWalker(d.space, t.cr3, "4", frame_to_gpa=d.frame_to_gpa)
        assert w.translate(KVA["4"] + 0x40) == (0x20_5040, K4)
        assert len(seen) == 5  # CR3, PML4E, PDPTE, PDE, PTE
        assert w.translate(0xFFFF_C900_0012_3456) == (0x52_3456, M2)
        d.frame_to_gpa = lambda f: None if f == mfn(0x205) else gfn.get(f)
        with pytest.raises(PageWalkError, match="frame 0x55205") as e:
            PageWalker(d.space, t.cr3, "4", frame_to_gpa=d.frame_to_gpa).translate(KVA["4"])
        assert e.value.level == "PTE" and e.value.entry_gpa == t.entry_gpa(KVA["4"], "PTE")


def test_frame_map_through_decode(tmp_path):
    mfn = lambda pfn: pfn + 0x10_0000
    mem, t = build("4", frame_of=mfn)
    t.map(KVA["4"], 0x20_5000)
    mem.write(0x20_5040, AREA)
    with open_dump(str(raw_dump(tmp_path, mem))) as d:
        d.frame_to_gpa = lambda f: f - 0x10_0000 if f >= 0x10_0000 else None
        d.cpus = (CpuState(0, cr3=t.cr3),)
        v = decode_va(d, KVA["4"] + 0x40, "64")
    assert v.decoded.gpa == 0x20_5040 and v.decoded.raw == AREA and v.root.cr3 == t.cr3


# -- CPU state: CR3 and mode from the notes -----------------------------------------------------

L_BIT = 1 << 21
CR0_PG_PE = 0x8000_0011


def elf_with_cpus(tmp_path, mem: Memory, cpus: list[tuple[int, int, int]]):
    """An ELF core of the memory with one QEMU note per (cr0, cr3, cr4) and a 64-bit CS."""
    notes = [Note(b"QEMU", 0, qemu_cpu_state(0xFFFF_FFFF_8100_0000, cr0, cr3, cr4, L_BIT))
             for cr0, cr3, cr4 in cpus]
    path = tmp_path / "g.elf"
    path.write_bytes(elf_core([Load(0, mem.image(MEM_SIZE))], notes))
    return path


def test_mode_from_control_registers():
    assert mode_of(CpuState(0, cr0=CR0_PG_PE, cr4=0x20, efer=0x500)) == "4"
    assert mode_of(CpuState(0, cr0=CR0_PG_PE, cr4=0x1020, efer=0x500)) == "5"
    assert mode_of(CpuState(0, cr0=CR0_PG_PE, cr4=0x20, efer=0)) == "pae"
    assert mode_of(CpuState(0, cr0=CR0_PG_PE, cr4=0x10)) == "32"
    assert mode_of(CpuState(0, cr0=0x11, cr4=0x20)) == "off"
    assert mode_of(CpuState(0, cr0=CR0_PG_PE, cr4=0x20)) is None  # PAE or long: no EFER
    assert mode_of(CpuState(0)) is None


def test_default_cr3_is_the_first_vcpu_that_maps_the_va(tmp_path):
    """vCPU 0 has paging off; vCPU 1 runs on a user page table without the kernel half (as at
    realxen p1): the default goes on to vCPU 2, whose tables map the VA."""
    mem = Memory()
    user = Tables(mem, "4", 0x400)
    user.map(0x7F00_0000_0000, 0x30_0000)
    kern = Tables(mem, "4", 0x500)
    kern.map(KVA["4"], 0x20_5000)
    mem.write(0x20_5040, AREA)
    path = elf_with_cpus(tmp_path, mem, [(0x11, 0, 0), (CR0_PG_PE, user.cr3, 0x20),
                                         (CR0_PG_PE, kern.cr3, 0x20)])
    va = hex(KVA["4"] + 0x40)
    r = cli("decode", path, "--va", va, "--format", "json", "--layout", "64")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert (rec["cpu"], rec["cr3"], rec["paging"], rec["gpa"]) == (2, hex(kern.cr3), "4",
                                                                   "0x205040")
    line = one_line_error(cli("decode", path, "--va", va, "--cpu", "1"), 3, "PML4E",
                          f"GPA {user.entry_gpa(KVA['4'], 'PML4E'):#x}", "not present")
    assert "tried" not in line  # one CR3 tried: its own error
    one_line_error(cli("decode", path, "--va", va, "--cpu", "0"), 2, "paging off")
    one_line_error(cli("decode", path, "--va", "0xffff888000000000"), 3,
                   "not present", f"with vCPU 1's CR3 {user.cr3:#x}", "nor do the page tables of vCPU 2's (CR3")
    info = json.loads(cli("info", path, "--format", "json").stdout)
    assert info["cpus"] == [
        {"vcpu": 0, "cr3": "0x0", "paging": "off", "source": "QEMU note"},
        {"vcpu": 1, "cr3": hex(user.cr3), "paging": "4", "source": "QEMU note"},
        {"vcpu": 2, "cr3": hex(kern.cr3), "paging": "4", "source": "QEMU note"}]


def test_no_cr3_anywhere_is_a_usage_error(tmp_path):
    mem, t = build("4")
    one_line_error(cli("decode", raw_dump(tmp_path, mem), "--va", hex(KVA["4"])), 2, "--cr3")
    path = tmp_path / "g.elf"
    path.write_bytes(elf_core([Load(0, mem.image(MEM_SIZE))],
                              [Note(b"CORE", 1, bytes(336))]))
    one_line_error(cli("decode", path, "--va", hex(KVA["4"])), 2, "NT_PRSTATUS", "--cr3")
    one_line_error(cli("decode", path, "--va", hex(KVA["4"]), "--cpu", "3"), 2, "--cpu 3")
    one_line_error(cli("decode", path), 2, "--gpa", "--va", "--vcpus")


def test_kdump_notes_give_cpu_state(tmp_path):
    mem, t = build("4")
    t.map(KVA["4"], 0x20_5000)
    mem.write(0x20_5040, AREA)
    pages = {pfn: bytes(p) for pfn, p in mem.pages.items()}
    note = Note(b"QEMU", 0, qemu_cpu_state(0, CR0_PG_PE, t.cr3, 0x20, L_BIT))
    path = tmp_path / "g.kdump"
    path.write_bytes(kdump_file(Kdump(0x800, [(0, 0x800)], pages, notes=[note])))
    with open_dump(str(path)) as d:
        assert d.cpus == (CpuState(0, CR0_PG_PE, t.cr3, 0x20, 0x500, "QEMU note"),)
    r = cli("decode", path, "--va", hex(KVA["4"] + 0x40), "--format", "json", "--layout", "64")
    assert json.loads(r.stdout)["raw"] == AREA.hex()


@pytest.mark.parametrize("l5", [0, 1])
def test_vmcoreinfo_kernel_tables_when_notes_carry_no_cr3(tmp_path, l5):
    """A Linux vmcore's NT_PRSTATUS notes have no CR3; VMCOREINFO names the kernel's own tables
    (init_top_pgt at VA - __START_KERNEL_map + phys_base), which map every kernel address."""
    mode = "5" if l5 else "4"
    mem = Memory()
    t = Tables(mem, mode, 0x500)             # root at GPA 0x500000
    t.map(KVA[mode], 0x20_5000)
    mem.write(0x20_5040, AREA)
    info = (f"OSRELEASE=6.1.0\nSYMBOL(init_top_pgt)=ffffffff80400000\nNUMBER(phys_base)=1048576\n"
            f"NUMBER(pgtable_l5_enabled)={l5}\nKERNELOFFSET=0\n").encode()
    path = tmp_path / "vmcore"
    path.write_bytes(elf_core([Load(0, mem.image(MEM_SIZE))],
                              [Note(b"CORE", 1, bytes(336)), Note(b"VMCOREINFO", 0, info)]))
    r = cli("decode", path, "--va", hex(KVA[mode] + 0x40), "--layout", "64", "--format", "json")
    assert r.exit_code == 0, r.stderr
    rec = json.loads(r.stdout)
    assert (rec["cr3"], rec["paging"], rec["cpu"], rec["cr3_from"], rec["gpa"]) == (
        "0x500000", mode, None, "VMCOREINFO init_top_pgt", "0x205040")
    assert rec["raw"] == AREA.hex()


def test_simulate_and_race_from_dump_at_a_split_va(tmp_path):
    """--from-dump --va: the before-image is what the guest reads through its tables; the GPA
    is the VA's translation, so the kvm trace writes the tail at gpa + split_at, with the §8
    warning saying so."""
    path, t = split_area_dump(tmp_path)
    va = hex(KVA["4"] + K4 - 15)
    r = cli("simulate", "--from-dump", path, "--va", va, "--cr3", hex(t.cr3), "--format", "json",
            "--transition", "blocked", "--now", 5_300_000_000)
    assert r.exit_code == 0, r.stderr
    writes = [json.loads(line) for line in r.stdout.splitlines()]
    assert {w["gpa"] for w in writes if w["op"] == "write"} == {"0x205ff1", "0x206000"}
    assert "KVM" in r.stderr and "0x103000" in r.stderr
    r = cli("race", "--from-dump", path, "--va", va, "--cr3", hex(t.cr3), "--model", "kvm-6.1",
            "--format", "json", "-q")
    rec = json.loads(r.stdout)
    assert rec["gpa"] == "0x205ff1" and rec["refused"] is True and r.exit_code == 1
    one_line_error(cli("simulate", "--va", va), 2, "--from-dump")
    one_line_error(cli("simulate", "--from-dump", path, "--va", va, "--gpa", "0x1000"), 2,
                   "exclusive")
