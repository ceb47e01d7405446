"""``decode --vcpus``: kernel symbols, KASLR and the per-CPU arithmetic on a synthetic guest
whose page tables and per-CPU areas come from the independent writers in tests/."""

from __future__ import annotations

import json
import struct

import pytest

from clitools import cli, one_line_error
from dumpwriter import Load, Note, elf_core, qemu_cpu_state, runstate64
from pagetables import K4, M2, Memory, Tables
from xenrs_cli.errors import UsageError
from xenrs_cli.symbols import kaslr_offset, parse_symbols

LINK = 0xFFFF_FFFF_8100_0000        # _text at link time
KASLR = 0x1E0_0000                  # a 30 MiB KASLR slide (2 MiB aligned, as on x86-64)
PER_CPU_OFFSET = LINK + 0x141_CB60  # __per_cpu_offset at link time
NR_CPU_IDS = LINK + 0x141_D000
XEN_RUNSTATE = 0x2F040              # per-CPU offset: never moved by KASLR
PERCPU_BASE = 0xFFFF_8880_0980_0000  # __per_cpu_offset[0]; CPU n at + n * 0x80000
SYSTEM_MAP = (f"{LINK:016x} T _text\n{LINK + 0x1000:016x} T _stext\n"
              f"{XEN_RUNSTATE:016x} D xen_runstate\n{PER_CPU_OFFSET:016x} D __per_cpu_offset\n"
              f"{NR_CPU_IDS:016x} D nr_cpu_ids\n")


def area(cpu: int) -> bytes:
    return runstate64(cpu % 4, 1000 * (cpu + 1), (1000 * (cpu + 1), 0, 0, 0))


def guest(tmp_path, vmcoreinfo: bytes, nr_cpus: int = 3, cpus_in_notes: int = 2):
    """Kernel image mapped at the KASLR-moved address with a 2 MiB page, per-CPU areas with
    4 KiB pages, one CPU's two per-CPU pages far apart in GPA."""
    mem = Memory()
    t = Tables(mem, "4", 0x700)
    image = LINK + KASLR
    t.map(image + 0x140_0000, 0x20_0000, M2)  # holds __per_cpu_offset and nr_cpu_ids
    offsets = [PERCPU_BASE + n * 0x8_0000 for n in range(nr_cpus)]
    table_gpa = 0x20_0000 + (PER_CPU_OFFSET + KASLR - image - 0x140_0000)
    mem.write(table_gpa, b"".join(struct.pack("<Q", o) for o in offsets))
    mem.write(0x20_0000 + (NR_CPU_IDS + KASLR - image - 0x140_0000), struct.pack("<I", nr_cpus))
    for n, off in enumerate(offsets):
        va = off + XEN_RUNSTATE
        gpa = 0x50_0000 + n * 0x1_0000
        t.map(va & ~(K4 - 1), gpa)
        mem.write(gpa + va % K4, area(n))
    notes = [Note(b"QEMU", 0, qemu_cpu_state(0, 0x8000_0011, t.cr3, 0x20, 1 << 21))
             for _ in range(cpus_in_notes)]
    if vmcoreinfo:
        notes.append(Note(b"VMCOREINFO", 0, vmcoreinfo))
    path = tmp_path / "g.elf"
    path.write_bytes(elf_core([Load(0, mem.image(0x80_0000))], notes))
    return path


def test_system_map_with_kerneloffset_from_vmcoreinfo(tmp_path):
    path = guest(tmp_path, f"OSRELEASE=6.1.0\nKERNELOFFSET={KASLR:x}\n".encode())
    smap = tmp_path / "System.map"
    smap.write_text(SYSTEM_MAP)
    r = cli("decode", path, "--vcpus", "--symbols", smap, "--format", "json", "--layout", "64")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [r["vcpu"] for r in recs] == [0, 1, 2]  # nr_cpu_ids (3), not the notes' 2 CPUs
    for n, rec in enumerate(recs):
        assert rec["va"] == hex(PERCPU_BASE + n * 0x8_0000 + XEN_RUNSTATE)
        assert rec["gpa"] == hex(0x50_0000 + n * 0x1_0000 + XEN_RUNSTATE % K4)
        assert rec["raw"] == area(n).hex()


def test_kallsyms_is_already_relocated_stext_tells(tmp_path):
    """A /proc/kallsyms text holds run-time addresses: SYMBOL(_stext) equals its _stext, so no
    offset is added although KERNELOFFSET is set."""
    moved = SYSTEM_MAP.replace(f"{LINK:016x}", f"{LINK + KASLR:016x}")
    for name in (PER_CPU_OFFSET, NR_CPU_IDS, LINK + 0x1000):
        moved = moved.replace(f"{name:016x}", f"{name + KASLR:016x}")
    info = f"SYMBOL(_stext)={LINK + 0x1000 + KASLR:x}\nKERNELOFFSET={KASLR:x}\n"
    path = guest(tmp_path, info.encode())
    ks = tmp_path / "kallsyms"
    ks.write_text(moved)
    assert kaslr_offset(parse_symbols(moved, "k"), info) == (0, "VMCOREINFO SYMBOL(_stext)")
    assert kaslr_offset(parse_symbols(SYSTEM_MAP, "m"), info)[0] == KASLR
    r = cli("decode", path, "--vcpus", "--symbols", ks, "--format", "json", "--layout", "64")
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 3


def test_kaslr_offset_option_and_cpu_count_fallbacks(tmp_path):
    path = guest(tmp_path, b"")  # no VMCOREINFO: offset 0 unless given
    smap = tmp_path / "System.map"
    smap.write_text(SYSTEM_MAP.replace("nr_cpu_ids", "not_nr_cpu_ids"))
    one_line_error(cli("decode", path, "--vcpus", "--symbols", smap), 3, "not present")
    base = ["decode", path, "--vcpus", "--symbols", smap, "--kaslr-offset", hex(KASLR),
            "--format", "json", "--layout", "64"]
    assert len(cli(*base).stdout.splitlines()) == 2            # the dump's vCPU count
    assert len(cli(*base, "--cpus", "3").stdout.splitlines()) == 3
    assert parse_symbols(SYSTEM_MAP, "m").address("xen_runstate", KASLR) == XEN_RUNSTATE
    assert parse_symbols(SYSTEM_MAP, "m").address("nr_cpu_ids", KASLR) == NR_CPU_IDS + KASLR


def test_implausible_nr_cpu_ids_is_an_input_error(tmp_path):
    path = guest(tmp_path, f"KERNELOFFSET={KASLR:x}\n".encode(), nr_cpus=0)
    smap = tmp_path / "System.map"
    smap.write_text(SYSTEM_MAP)
    one_line_error(cli("decode", path, "--vcpus", "--symbols", smap), 3, "nr_cpu_ids")


@pytest.mark.parametrize("text,needle", [
    ("ffffffff81000000 T _text\nnot a symbol line\n", "line 2"),
    ("", "no kernel symbols"),
    ("0000000000000000 T _text\n0000000000000000 D xen_runstate\n", "kptr_restrict"),
])
def test_bad_symbol_files(text, needle):
    with pytest.raises(UsageError, match=needle):
        parse_symbols(text, "f")


def test_module_symbols_are_skipped_and_missing_symbols_named(tmp_path):
    t = parse_symbols("ffffffffc0000000 t xen_runstate\t[xen_mod]\n"
                      "ffffffff81000000 T _text\n", "k")
    assert "xen_runstate" not in t
    with pytest.raises(UsageError, match="does not name xen_runstate"):
        t.address("xen_runstate")
    path = guest(tmp_path, b"")
    smap = tmp_path / "System.map"
    smap.write_text("ffffffff81000000 T _text\n")
    one_line_error(cli("decode", path, "--vcpus", "--symbols", smap), 2, "xen_runstate")
    one_line_error(cli("decode", path, "--vcpus", "--symbols", tmp_path / "nope"), 2, "nope")


def test_vcpus_from_what_the_dump_records(tmp_path):
    """A reader that records the registered areas (a migration stream) needs no symbols."""
    from xenrs_cli.cli.vaddr import decode_jobs
    from xenrs_cli.dumps import open_dump
    from xenrs_cli.guest_va import Paging

    mem = Memory()
    mem.write(0x1FF1, area(1))
    raw = tmp_path / "g.raw"
    raw.write_bytes(mem.image(0x4000))
    with open_dump(str(raw)) as d:
        d.registered_runstate = {1: 0x1FF1}
        (job,) = decode_jobs(d, "g.raw", "64", False, "any", (), True, None, None, None,
                             Paging())
        rec, obj = job()
    assert obj["vcpu"] == 1 and obj["gpa"] == "0x1ff1" and rec.raw == area(1)
    assert list(obj)[0] == "vcpu"


def test_options_that_need_va_or_vcpus(tmp_path):
    raw = tmp_path / "g.raw"
    raw.write_bytes(bytes(0x3000))
    one_line_error(cli("decode", raw, "--gpa", "0x100", "--symbols", "System.map"), 2,
                   "--symbols", "--vcpus")
    one_line_error(cli("decode", raw, "--gpa", "0x100", "--cpu", "1"), 2, "--va")
    one_line_error(cli("decode", raw, "--vcpus", "--symbols", raw, "--cpus", "0"), 2, "--cpus")
