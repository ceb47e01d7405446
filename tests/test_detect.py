"""Format detection from content, ``--dump-format`` overrides, and the inputs that are refused
with the name of what they are and the command that would have produced a readable dump."""

from __future__ import annotations

import gzip
import json
import lzma

import pytest

from dumpwriter import Kdump, Load, XenVcpu, elf_core, flatten, kdump_file, xen_core_file
from clitools import cli
from xenrs_cli.dumps import FORMATS, SNIFF_ORDER, detect, open_dump

PAGE = 4096



def error_line(result) -> str:
    assert result.exit_code == 3, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


def small_kdump() -> bytes:
    return kdump_file(Kdump(max_mapnr=16, in_map=[(0, 4)], pages={0: b"\x11" * PAGE}))


SAMPLES = {
    "elf": elf_core([Load(0, b"\x22" * PAGE)]),
    "kdump": small_kdump(),
    "raw": b"\x33" * PAGE,
}


def test_registered_formats():
    assert {"raw", "elf", "kdump", "xen-core", "qemu-migration"} <= set(FORMATS)
    assert "raw" not in SNIFF_ORDER and "qemu-migration" in SNIFF_ORDER
    # an xl dump-core is an ELF core: it must be recognised before the ELF reader takes it
    assert SNIFF_ORDER.index("xen-core") < SNIFF_ORDER.index("elf")


@pytest.mark.parametrize("fmt", list(SAMPLES))
def test_detected_from_content(tmp_path, fmt):
    p = tmp_path / "dump"
    p.write_bytes(SAMPLES[fmt])
    with open_dump(str(p)) as d:
        assert d.format == fmt
        assert detect(d.file.buf) == fmt


def test_flattened_is_kdump(tmp_path):
    p = tmp_path / "vm.flat"
    p.write_bytes(flatten(small_kdump()))
    with open_dump(str(p)) as d:
        assert (d.format, d.variant) == ("kdump", "flattened, zlib")
        assert d.space.read_present(0, 4) == b"\x11" * 4


def test_dump_format_overrides_detection(tmp_path):
    p = tmp_path / "vm.elf"
    p.write_bytes(SAMPLES["elf"])
    r = cli("info", p, "--dump-format", "raw", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["format"] == "raw"
    msg = error_line(cli("info", p, "--dump-format", "kdump"))
    assert msg == ("xenrs: error: not a kdump file: no KDUMP signature (it starts with "
                   "7f454c4602010100) at file offset 0x0")
    raw = tmp_path / "vm.raw"
    raw.write_bytes(SAMPLES["raw"])
    assert "not an ELF file" in error_line(cli("info", raw, "--dump-format", "elf"))
    r = cli("info", p, "--dump-format", "vmss")
    assert r.exit_code == 2


def test_base_is_only_for_raw(tmp_path):
    p = tmp_path / "vm.elf"
    p.write_bytes(SAMPLES["elf"])
    r = cli("info", f"{p}@0x100000")
    assert r.exit_code == 2 and "sets the base of a raw image, but this is a elf dump" in r.stderr


FOREIGN = [
    (b"PAGEDU64" + bytes(100), "a Windows crash dump (QEMU win-dmp)", "dump-guest-memory"),
    (b"DISKDUMP" + bytes(100), "an old-style diskdump file", "open it with crash"),
    (bytes.fromhex("d2bed2be") + bytes(100), "a VMware checkpoint state file (.vmss/.vmsn)",
     "vmss2core -N6"),
    (bytes.fromhex("d1bad1ba") + bytes(100), "a VMware checkpoint state file", "vmss2core"),
    (b"\x28\xb5\x2f\xfd" + bytes(100), "zstd-compressed", "zstd -d FILE"),
    (gzip.compress(b"x" * 100), "gzip-compressed", "gzip -dk FILE"),
    (lzma.compress(b"x" * 100), "xz-compressed", "xz -dk FILE"),
]


@pytest.mark.parametrize("data,what,todo", FOREIGN, ids=[f[1][:20] for f in FOREIGN])
def test_foreign_inputs_are_named(tmp_path, data, what, todo):
    p = tmp_path / "input"
    p.write_bytes(data)
    msg = error_line(cli("decode", p, "--gpa", "0"))
    assert msg.startswith(f"xenrs: error: this is {what}")
    assert todo in msg


def test_xen_dump_core_is_named(tmp_path):
    p = tmp_path / "xl.core"
    p.write_bytes(xen_core_file([(0, 0x1000, bytes(PAGE))], [XenVcpu()]))
    assert json.loads(cli("info", p, "--format", "json").stdout)["format"] == "xen-core"
    msg = error_line(cli("info", p, "--dump-format", "elf"))
    assert msg.startswith("xenrs: error: this is a Xen xl dump-core file")
    assert "--dump-format xen-core" in msg
    # section names alone route an ELF to the xen-core reader, which names what is wrong
    p.write_bytes(elf_core([Load(0, bytes(PAGE))],
                           sections=[b".shstrtab", b".note.Xen", b".xen_prstatus", b".xen_pages",
                                     b".xen_p2m"], qemu_layout=False))
    assert ".note.Xen" in error_line(cli("info", p))
    # HVM dump-core uses .xen_pfn instead of .xen_p2m
    p.write_bytes(elf_core([Load(0, bytes(PAGE))], sections=[b".shstrtab", b".xen_pfn"]))
    assert "xl dump-core" in error_line(cli("info", p))
    # forcing the raw format still reads the bytes (the escape hatch)
    assert cli("info", p, "--dump-format", "raw").exit_code == 0


def test_an_elf_core_with_ordinary_sections_is_not_xen(tmp_path):
    p = tmp_path / "vm.elf"
    p.write_bytes(elf_core([Load(0, bytes(PAGE))], sections=[b".shstrtab", b".note"]))
    assert cli("info", p, "--format", "json").exit_code == 0
