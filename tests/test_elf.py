"""ELF cores from the independent writer: PT_LOAD mapping, zero-filled tails, stitching, ELF32,
notes, QEMU's quirks, and every malformed header as exit 3 with one line."""

from __future__ import annotations

import json

import pytest

from dumpwriter import Load, Note, elf_core, qemu_cpu_state, runstate64, runstate_compat
from clitools import cli, one_line_error
from xenrs_cli.address_space import Status
from xenrs_cli.decode import decode_at, to_json_dict
from xenrs_cli.dumps import open_dump
from xenrs_cli.errors import BadDumpError, UnmappedAddressError, UnsupportedDumpError

REC = runstate64(1, 5_200_000_000, (4_000_000_000, 200_000_000, 1_000_000_000, 0))
RECC = runstate_compat(2, 6_000, (1_000, 2_000, 3_000, 0))


def write(tmp_path, data: bytes, name: str = "vm.elf"):
    p = tmp_path / name
    p.write_bytes(data)
    return p




def two_loads_with_split_record() -> tuple[bytes, int]:
    """Two GPA-adjacent PT_LOADs (like d1's [0,0xc0000) + [0xc0000,0xe0000)); a record that
    starts 10 bytes before the seam, which is also a page boundary."""
    a = bytearray(0x3000)
    b = bytearray(0x2000)
    a[-10:] = REC[:10]
    b[:38] = REC[10:]
    return elf_core([Load(0x10000, bytes(a)), Load(0x13000, bytes(b))]), 0x13000 - 10


def test_qemu_layout_golden_header_values(tmp_path):
    data, _ = two_loads_with_split_record()
    # the writer's QEMU quirks: e_ehsize 8 at 52, section headers at 64, phdrs after them
    assert data[52:54] == b"\x08\x00" and int.from_bytes(data[40:48], "little") == 64
    with open_dump(str(write(tmp_path, data))) as d:
        assert d.format == "elf" and d.variant == "ELFCLASS64"
        assert d.details["e_ehsize"] == 8 and d.details["e_phoff"] == 64 + 2 * 64
        assert [(s.gpa, s.size) for s in d.space.segments] == [(0x10000, 0x3000),
                                                              (0x13000, 0x2000)]


def test_record_across_two_pt_loads_is_stitched(tmp_path):
    data, gpa = two_loads_with_split_record()
    with open_dump(str(write(tmp_path, data))) as d:
        dec = decode_at(d.space, gpa, "64")
        obj = to_json_dict(dec, "vm.elf")
        assert dec.raw == REC
        assert obj["state"] == "runnable" and obj["consistent"] is True
        a_off = d.space.segments[0].file_offset
        b_off = d.space.segments[1].file_offset
        assert [(p["len"], p["file_offset"], p["status"]) for p in obj["pieces"]] == [
            (10, a_off + 0x3000 - 10, "present"), (38, b_off, "present")]
        # the file offsets are where the bytes really are
        for p in obj["pieces"]:
            assert data[p["file_offset"]:p["file_offset"] + p["len"]] == \
                REC[p["offset"]:p["offset"] + p["len"]]


def test_filesz_below_memsz_is_zero_filled(tmp_path):
    stored = bytearray(0x1000)
    stored[-20:] = REC[:20]
    data = elf_core([Load(0x200000, bytes(stored), memsz=0x3000)])
    with open_dump(str(write(tmp_path, data))) as d:
        gpa = 0x201000 - 20
        pieces = d.space.pieces(gpa, 48)
        assert [(p.len, p.status) for p in pieces] == [(20, Status.PRESENT),
                                                       (28, Status.ZERO_FILLED)]
        assert pieces[1].file_offset is None
        with pytest.raises(UnmappedAddressError) as e:
            decode_at(d.space, gpa, "64")
        assert (e.value.gpa, e.value.size, e.value.status) == (0x201000, 28, "zero-filled")
        dec = decode_at(d.space, gpa, "64", allow_missing=True)
        obj = to_json_dict(dec, "x")
        # bytes 0..19 are stored: state and state_entry_time decode, time[0] (16..23) does not
        assert obj["state"] == "runnable" and obj["state_entry_time"] == 5_200_000_000
        assert obj["time"]["running"] is None and obj["consistent"] is None
        extents = [(e.gpa, e.size, e.status) for e in d.space.extents()]
        assert extents == [(0x200000, 0x1000, Status.PRESENT),
                           (0x201000, 0x2000, Status.ZERO_FILLED)]


def test_cli_names_the_zero_filled_range(tmp_path):
    data = elf_core([Load(0x200000, bytes(0x1000), memsz=0x2000)])
    r = cli("decode", write(tmp_path, data), "--gpa", "0x201000", "--layout", "64")
    assert one_line_error(r) == ("xenrs: error: GPA 0x201000-0x20102f is zero-filled in the dump; "
                                 "use --allow-missing to decode what is there")


@pytest.mark.parametrize("big", [False, True])
def test_elf32_core(tmp_path, big):
    page = bytearray(0x2000)
    page[0x1ff5:0x1ff5 + 44] = RECC
    data = elf_core([Load(0x8000, bytes(page))], [Note(b"CORE", 1, bytes(144))], elf64=False,
                    big=big, machine=3)
    with open_dump(str(write(tmp_path, data))) as d:
        assert d.variant == "ELFCLASS32" and d.details["machine"] == "EM_386"
        assert d.details["byte_order"] == ("big" if big else "little")
        assert d.details["vcpus"] == 1
        dec = decode_at(d.space, 0x8000 + 0x1ff5, "compat")
        assert dec.raw == RECC and dec.info.state == 2


def test_classic_layout_and_pn_xnum(tmp_path):
    loads = [Load(0x1000 * i * 2, bytes([i]) * 0x1000) for i in range(3)]
    for kwargs in ({"qemu_layout": False}, {"pn_xnum": True}):
        with open_dump(str(write(tmp_path, elf_core(loads, **kwargs)))) as d:
            assert [s.gpa for s in d.space.segments] == [0, 0x2000, 0x4000]
            assert d.space.read_present(0x4000, 4) == b"\x02" * 4
            assert d.space.pieces(0x1000, 1)[0].status is Status.ABSENT


def test_notes_vcpus_qemu_state_and_vmcoreinfo(tmp_path):
    long_cs = 1 << 21
    notes = [Note(b"CORE", 1, bytes(336)), Note(b"CORE", 1, bytes(336)),
             Note(b"QEMU", 0, qemu_cpu_state(0x100065, 0x80000011, 0x101000, 0x20, long_cs)),
             Note(b"QEMU", 0, qemu_cpu_state(0xfd09a, 0x11, 0, 0, 0)),
             Note(b"VMCOREINFO", 0, b"OSRELEASE=6.1.0\nPAGESIZE=4096\n")]
    data = elf_core([Load(0, bytes(0x1000))], notes)
    r = cli("info", write(tmp_path, data), "--format", "json")
    assert r.exit_code == 0, r.stderr
    obj = json.loads(r.stdout)
    assert obj["vcpus"] == 2 and obj["format"] == "elf"
    det = obj["details"]
    assert [n["name"] for n in det["notes"]] == ["CORE", "CORE", "QEMU", "QEMU", "VMCOREINFO"]
    assert det["notes"][2] == {"name": "QEMU", "type": 0, "descsz": 440}
    assert det["cpus"][0]["mode"] == "long (64-bit)" and det["cpus"][0]["cr3"] == "0x101000"
    assert det["cpus"][0]["rip"] == "0x100065"
    assert det["cpus"][1]["mode"] == "protected"
    assert det["vmcoreinfo"] == "OSRELEASE=6.1.0\nPAGESIZE=4096\n"


def test_vmcore_duplicate_kernel_text_load_is_skipped(tmp_path):
    # /proc/vmcore: the kernel text PT_LOAD repeats physical bytes of a RAM PT_LOAD
    ram = bytes(range(256)) * 64
    data = elf_core([Load(0, ram), Load(0x1000, ram[0x1000:0x2000], vaddr=0xffffffff81000000)],
                    qemu_layout=False)
    with open_dump(str(write(tmp_path, data))) as d:
        assert [(s.gpa, s.size) for s in d.space.segments] == [(0, len(ram))]
        assert d.details["pt_loads"][1]["duplicate"] is True


def test_partial_overlap_is_clipped(tmp_path):
    data = elf_core([Load(0, b"a" * 0x2000), Load(0x1000, b"b" * 0x2000)], qemu_layout=False)
    with open_dump(str(write(tmp_path, data))) as d:
        assert [(s.gpa, s.size) for s in d.space.segments] == [(0, 0x2000), (0x2000, 0x1000)]
        assert d.space.read_present(0x1ffe, 4) == b"aabb"


@pytest.mark.parametrize("cut", [10, 40, 64 + 64, 200])
def test_truncated_headers(tmp_path, cut):
    data, _ = two_loads_with_split_record()
    r = cli("info", write(tmp_path, data[:cut]), "--dump-format", "elf")
    assert "truncated" in one_line_error(r)


def test_truncated_memory(tmp_path):
    data, _ = two_loads_with_split_record()
    r = cli("decode", write(tmp_path, data[:-100]), "--gpa", "0x10000")
    msg = one_line_error(r)
    assert "PT_LOAD 1 (GPA 0x13000)" in msg and "truncated dump?" in msg


def test_corrupt_headers(tmp_path):
    data = bytearray(two_loads_with_split_record()[0])
    bad_class = bytes(data[:4]) + b"\x07" + bytes(data[5:])
    assert "invalid class" in one_line_error(cli("info", write(tmp_path, bad_class)))
    bad_phent = bytearray(data)
    bad_phent[54:56] = (40).to_bytes(2, "little")
    assert "e_phentsize is 40" in one_line_error(cli("info", write(tmp_path, bytes(bad_phent))))
    # a PT_LOAD with p_filesz > p_memsz: phdr 1 (after the PT_NOTE? none here: phdr 0)
    bad_sz = bytearray(data)
    ph0 = 64 + 2 * 64
    bad_sz[ph0 + 40:ph0 + 48] = (1).to_bytes(8, "little")  # p_memsz = 1
    assert "p_filesz 0x3000 > p_memsz 0x1" in one_line_error(cli("info", write(tmp_path,
                                                                                bytes(bad_sz))))
    no_loads = elf_core([], [Note(b"CORE", 1, bytes(144))])
    assert "without any PT_LOAD" in one_line_error(cli("info", write(tmp_path, no_loads)))


def test_note_overrunning_its_segment(tmp_path):
    data = bytearray(elf_core([Load(0, bytes(0x1000))], [Note(b"CORE", 1, bytes(144))]))
    note_at = 64 + 2 * 64 + 2 * 56
    data[note_at + 4:note_at + 8] = (4000).to_bytes(4, "little")  # n_descsz
    with pytest.raises(BadDumpError, match="note in PT_NOTE 0 runs past its end"):
        open_dump(str(write(tmp_path, bytes(data))))


def test_not_a_core_and_xen_dump_core(tmp_path):
    exe = elf_core([Load(0, bytes(0x1000))], e_type=2)
    msg = one_line_error(cli("info", write(tmp_path, exe)))
    assert "ELF ET_EXEC (an executable, e.g. vmlinux), not a core dump" in msg
    xl = elf_core([Load(0, bytes(0x1000))],
                  sections=[b".shstrtab", b".note.Xen", b".xen_prstatus", b".xen_shared_info",
                            b".xen_p2m", b".xen_pages"])
    # detected as xen-core (tests/test_xen_core.py reads real ones); forced as ELF, refused
    with pytest.raises(UnsupportedDumpError, match="Xen xl dump-core.*--dump-format xen-core"):
        open_dump(str(write(tmp_path, xl)), "elf")


def test_process_core_without_physical_addresses(tmp_path):
    # a process core: several PT_LOADs at virtual addresses, p_paddr 0 in all of them
    data = elf_core([Load(0, b"a" * 0x1000, vaddr=0x400000), Load(0, b"b" * 0x1000,
                                                                   vaddr=0x7fff0000)],
                    qemu_layout=False)
    msg = one_line_error(cli("info", write(tmp_path, data)))
    assert "no physical addresses (p_paddr is 0 in every PT_LOAD)" in msg
