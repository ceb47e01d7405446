"""Guest virtual addresses on the real Xen 4.17 dumps (tests/data/realxen): dom0 is a PV guest
whose page tables hold machine frames, which are these dumps' GPAs. Every true area's VA, with
CR3 from the QEMU notes, and every vCPU's area from dom0's kernel symbols, must land on the GPA
and bytes the manifest gives (found by gdb, QEMU's gva2gpa and an offline walk)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import realxen
from clitools import cli, one_line_error

KALLSYMS = Path(__file__).parent / "data" / "dom0.kallsyms"  # manifest()["dom0_kallsyms"]
DUMPS = [("p1", "p1.elf"), ("p2", "p2.elf"), ("p3", "p3.elf"), ("p2", realxen.PLAIN),
         ("p1", realxen.FLAT["p1"])]


def routes(area: dict) -> list[str | None]:
    """The GPA the offline walk of each QEMU CPU's CR3 found (``None``: not mapped)."""
    return [area["routes"][f"raw_dump_walk_of_qemu_cpu{i}_cr3"] for i in range(3)]


def records(*args) -> list[dict]:
    r = cli("decode", *args, "--format", "json")
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_kallsyms_file_is_the_manifest_s():
    text = KALLSYMS.read_text()
    got = {name: f"0x{int(addr, 16):x}" for addr, _, name in map(str.split, text.splitlines())}
    assert got == realxen.manifest()["dom0_kallsyms"]


@pytest.mark.parametrize("point,name", DUMPS)
def test_va_with_cr3_from_the_notes_lands_on_every_true_area(point, name):
    areas = realxen.truth(point)["true_areas"]
    args = [a for area in areas for a in ("--va", area["guest_va"])]
    recs = records(realxen.dump_arg(name), *args, "--layout", "64")
    assert len(recs) == len(areas) == 3
    for rec, area in zip(recs, areas):
        assert (rec["va"], rec["gpa"], rec["raw"]) == (area["guest_va"], area["gpa"], area["hex"])
        assert rec["state_entry_time"] == area["state_entry_time"]
        # the default CR3 is the first QEMU CPU's whose tables map the VA (p1: not CPU 0's,
        # a user page table without the kernel half)
        first = next(i for i, r in enumerate(routes(area)) if r is not None)
        assert rec["cpu"] == first and rec["paging"] == "4"
        assert [p["gpa"] for p in rec["pieces"]] == [area["gpa"]] and not rec["crosses_page"]
    if point == "p1":
        assert {rec["cpu"] for rec in recs} == {1}


@pytest.mark.parametrize("point,name", [("p1", "p1.elf"), ("p1", realxen.FLAT["p1"])])
def test_each_cpu_s_cr3_agrees_with_the_offline_walk(point, name):
    area = realxen.truth(point)["true_areas"][0]
    for cpu, route in enumerate(routes(area)):
        r = cli("decode", realxen.dump_arg(name), "--va", area["guest_va"], "--cpu", cpu,
                "--format", "json", "--layout", "64")
        if route is None:
            one_line_error(r, 3, f"VA {area['guest_va']}", "PML4E", "not present")
        else:
            assert json.loads(r.stdout)["gpa"] == route


@pytest.mark.parametrize("point,name", DUMPS)
def test_vcpus_from_kernel_symbols(point, name):
    areas = realxen.truth(point)["true_areas"]
    recs = records(realxen.dump_arg(name), "--vcpus", "--symbols", KALLSYMS, "--layout", "64")
    assert [(r["vcpu"], r["va"], r["gpa"], r["raw"]) for r in recs] == [
        (a["vcpu"], a["guest_va"], a["gpa"], a["hex"]) for a in areas]
    assert [r["state"] for r in recs] == [a["state_name"] for a in areas]


def test_vcpus_honours_cpus_and_kaslr_offset():
    name = realxen.dump_arg("p2.elf")
    recs = records(name, "--vcpus", "--symbols", KALLSYMS, "--cpus", "2", "--layout", "64")
    assert [r["vcpu"] for r in recs] == [0, 1]
    # a wrong KASLR offset moves __per_cpu_offset off the mapped kernel image
    r = cli("decode", name, "--vcpus", "--symbols", KALLSYMS, "--kaslr-offset", "0x40000000")
    one_line_error(r, 3, "VA 0xffffffffc241cb60")


def test_vcpus_without_symbols_names_the_option():
    one_line_error(cli("decode", realxen.dump_arg("p2.elf"), "--vcpus"), 2, "--symbols")


def test_simulate_from_dump_at_va():
    """xen re-translates the VA at every update: the trace writes the area's real GPA."""
    area = realxen.truth("p2")["true_areas"][1]
    r = cli("simulate", "--from-dump", realxen.dump_arg("p2.elf"), "--va", area["guest_va"],
            "--model", "xen", "--state", "blocked", "--time", "running=1", "--format", "json")
    assert r.exit_code == 0, r.stderr
    writes = [json.loads(line) for line in r.stdout.splitlines()]
    assert {w["gpa"] for w in writes if w["op"] == "write"} >= {area["gpa"]}


def test_cli_subprocess_on_the_plain_kdump():
    area = realxen.truth("p2")["true_areas"][2]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent))
    out = subprocess.run([sys.executable, "-m", "xenrs_cli", "decode",
                          realxen.dump_arg(realxen.PLAIN), "--va", area["guest_va"],
                          "--format", "json", "--layout", "64"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    rec = json.loads(out.stdout)
    assert (rec["gpa"], rec["state"], rec["cr3"]) == (area["gpa"], "offline", "0xaa10000")


@pytest.mark.parametrize("point,name", [("p1", "p1.elf"), ("p3", realxen.FLAT["p3"])])
def test_xen_s_own_copies_through_its_direct_map(point, name):
    """Xen maps its direct map (VA = directmap_virt_start + machine address) into every PV
    page table, the user one of p1's CPU 0 included: each Xen-internal copy lands on its
    machine address with every CPU's CR3."""
    start = int(realxen.manifest()["directmap_virt_start"], 16)
    copies = realxen.truth(point)["xen_internal_copies"]
    for cpu in range(3):
        args = [a for c in copies for a in ("--va", hex(start + int(c["maddr"], 16)))]
        recs = records(realxen.dump_arg(name), *args, "--cpu", cpu, "--layout", "64")
        assert [(r["gpa"], r["raw"], r["cr3_from"]) for r in recs] == [
            (c["maddr"], c["hex"], f"vCPU {cpu}") for c in copies]


def test_tables_outside_a_partial_dump_are_named_absent():
    """p1.areas.raw holds GPA 0x17000000-0x18000000 only: vCPU 1's top table (0xdac8000) is not
    in it, and the error says so instead of walking zeros."""
    area = realxen.truth("p1")["true_areas"][0]
    cr3 = realxen.truth("p1")["qemu_cpus"][1]["cr3"]
    one_line_error(cli("decode", realxen.dump_arg("p1.areas.raw"), "--va", area["guest_va"],
                       "--cr3", cr3), 3, "PML4E", f"GPA {int(cr3, 16) + 0x888:#x}", "absent")


# -- the xl dump-core of a PV domU: page tables of machine frames, through .xen_p2m ------------

DOMU_KALLSYMS = Path(__file__).parent / "data" / "domu1.kallsyms"  # domu_manifest's symbols


def test_domu_kallsyms_file_is_the_manifest_s():
    got = {name: f"0x{int(addr, 16):x}"
           for addr, _, name in map(str.split, DOMU_KALLSYMS.read_text().splitlines())}
    assert got == realxen.domu_manifest()["domU_kallsyms"]


def test_dump_core_va_through_the_p2m():
    """CR3 from .xen_prstatus (ctrlreg[3], a machine address), every table frame an MFN mapped
    back to a PFN: each area lands on its PFN, at the file offset the manifest gives."""
    areas = realxen.domu_manifest()["domU_areas"]
    core = realxen.dump_arg("du1.core")
    recs = records(core, *[a for x in areas for a in ("--va", x["guest_va"])], "--layout", "64")
    for rec, area in zip(recs, areas, strict=True):
        gpa = int(area["pfn"], 16) << 12 | int(area["guest_va"], 16) & 0xFFF
        # the default is the first vCPU whose tables map the VA: vCPU 0's kernel table
        assert (rec["gpa"], rec["raw"], rec["cr3"], rec["cpu"]) == (
            hex(gpa), area["hex"], areas[0]["prstatus_ctrlreg3_kernel_cr3"], 0)
        assert [p["file_offset"] for p in rec["pieces"]] == [int(area["offset_in_dump_core"], 16)]
        (own,) = records(core, "--va", area["guest_va"], "--cpu", area["vcpu"], "--layout", "64")
        assert (own["gpa"], own["cr3"]) == (hex(gpa), area["prstatus_ctrlreg3_kernel_cr3"])
    # the user page table (ctrlreg[1]) has no kernel half; a frame outside the p2m is named
    one_line_error(cli("decode", core, "--va", areas[0]["guest_va"], "--cr3",
                       areas[0]["prstatus_ctrlreg1_user_cr3"]), 3, "PML4E", "not present")
    one_line_error(cli("decode", core, "--va", areas[0]["guest_va"], "--cr3", "0x1000"), 3,
                   "CR3", "frame 0x1,", "p2m")


def test_dump_core_vcpus_from_kernel_symbols():
    areas = realxen.domu_manifest()["domU_areas"]
    recs = records(realxen.dump_arg("du1.core"), "--vcpus", "--symbols", DOMU_KALLSYMS,
                   "--layout", "64")
    assert [(r["vcpu"], r["va"], r["raw"], r["state"]) for r in recs] == [
        (a["vcpu"], a["guest_va"], a["hex"], a["state_name"]) for a in areas]
