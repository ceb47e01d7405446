"""QEMU migration streams: real streams from QEMU 7.2 and 10.0, and an independent writer.

The real streams (tests/data/qemu-migration, made by make_streams.py) hold records planted by
QEMU's generic loader below and above the 4 GiB hole; the manifest has the bytes QEMU itself
read back (HMP ``xp``) after the migration and QEMU's own flat view of guest memory
(``info mtree -f``), against which the GPA layout is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import migwriter
import qemu_streams
from clitools import cli, one_line_error
from xenrs_cli.address_space import Status
from xenrs_cli.dumps import detect, open_dump
from xenrs_cli.dumps.qemu_migration import family, ram_split
from xenrs_cli.errors import UnsupportedDumpError

NAMES = [s["file"] for s in qemu_streams.streams()]
BOOTED = [s["file"] for s in qemu_streams.streams() if s["booted"]]
# The command-line tests re-open a stream per command: one of each kind is enough there.
CLI_NAMES = ["pc.q72.compress.mig", "q35.q10.mapped-ram-multifd.mig", "pc.q10.booted.mig",
             "q35.q72.exec.mig"]
GUEST_RAM = ("pc.ram", "pc.bios", "pc.rom", "isa-bios", "system.flash0", "system.flash1")


def _open(name):
    e = qemu_streams.entry(name)
    with open_dump(str(qemu_streams.dump_path(name))) as d:
        yield e, d


@pytest.fixture(scope="module", params=NAMES)
def stream(request):
    yield from _open(request.param)


@pytest.fixture(scope="module", params=CLI_NAMES)
def cli_stream(request):
    yield from _open(request.param)


@pytest.fixture(scope="module", params=BOOTED)
def booted(request):
    yield from _open(request.param)


def test_manifest_covers_every_variant():
    seen = {(s["tool"], s["machine"], s["variant"]) for s in qemu_streams.streams()}
    assert ("q10", "q35", "ovmf") in seen
    for machine in ("pc", "q35"):
        for tool, variant in [("q72", "exec"), ("q72", "compress"), ("q72", "booted"),
                              ("q10", "exec"), ("q10", "file"), ("q10", "mapped-ram"),
                              ("q10", "mapped-ram-multifd"), ("q10", "booted"),
                              ("q10", "mapped-ram-at-4k")]:
            assert (tool, machine, variant) in seen


def test_every_planted_record_decodes(stream):
    e, d = stream
    assert d.format == "qemu-migration" and d.details["machine"] == e["machine_type"]
    assert d.details["stream"]["complete"]
    for p in e["points"]:
        assert d.space.read_present(int(p["gpa"], 16), 48).hex() == p["bytes"], p["name"]


def test_libvirt_sparse_images(stream):
    e, d = stream
    if "at-4k" in e["file"]:
        assert d.variant == "virsh save+mapped-ram" and d.details["stream"]["offset"] == 4096
        assert d.details["libvirt"]["format"] == "sparse"
        assert d.details["libvirt"]["domain"] == "sparse1"
    else:
        assert "libvirt" not in d.details


def test_planted_records_decode_on_the_command_line(cli_stream):
    e, d = cli_stream
    gpas = [a for p in e["points"] if p["bytes"] == p["planted"] for a in ("--gpa", p["gpa"])]
    r = cli("decode", d.name, *gpas, "--format", "json")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    want = [p for p in e["points"] if p["bytes"] == p["planted"]]
    assert len(recs) == len(want) >= 2
    for rec, p in zip(recs, want):
        assert rec["state_code"] == p["state"]
        assert [rec["time"][k] for k in ("running", "runnable", "blocked", "offline")] == p["time"]
        assert rec["state_entry_time"] == p["state_entry_time"]
        assert all(piece["status"] == "present" for piece in rec["pieces"])


def test_layout_is_qemus_flat_view(stream):
    """Every RAM/ROM range of QEMU's flat view is where xenrs puts that block's bytes, and
    xenrs maps nothing QEMU does not (device RAM such as VGA memory stays unmapped)."""
    e, d = stream
    view = [(int(v["gpa"], 16), int(v["end"], 16), v["block"], int(v["offset"], 16))
            for v in e["flat_view"] if v["block"] in GUEST_RAM]
    assert view
    for lo, hi, block, off in view:
        for gpa in (lo, hi - 1, (lo + hi) // 2 & ~0xFFF):
            seg = d.space.segment_at(gpa)
            assert seg is not None and seg.block == block, (hex(gpa), block)
            assert seg.offset + gpa - seg.gpa == off + gpa - lo
    merged = []  # QEMU splits read-only from writable RAM (PAM); the bytes are the same block's
    for lo, hi, block, off in view:
        if merged and merged[-1][1] == lo and merged[-1][2] == block and \
                merged[-1][3] + hi - merged[-1][0] == off + hi - lo:
            merged[-1] = (merged[-1][0], hi, block, merged[-1][3])
        else:
            merged.append((lo, hi, block, off))
    for seg in d.space.segments:
        assert any(lo <= seg.gpa and seg.end <= hi and block == seg.block
                   and seg.offset == off + seg.gpa - lo
                   for lo, hi, block, off in merged), seg.detail


def test_ram_above_the_hole_is_not_at_its_block_offset(stream):
    """volatility3#587: pc.ram offsets past the split are at 4 GiB + (offset - below)."""
    e, d = stream
    below = int(d.details["layout"]["below_4g"], 16)
    assert below == (0xC0000000 if e["machine"] == "pc" else 0x80000000)
    top = next(p for p in e["points"] if p["name"] == "above_4g")
    assert int(top["gpa"], 16) >= 1 << 32
    assert d.space.pieces(below + 0x1000, 8)[0].status is Status.ABSENT  # the PCI hole
    end = d.space.end
    assert end == (1 << 32) + qemu_streams.manifest()["ram_mib"] * 2**20 - below
    assert d.space.pieces(end, 8)[0].status is Status.ABSENT


def test_gaps_are_absent_on_the_command_line(cli_stream):
    e, d = cli_stream
    below = int(d.details["layout"]["below_4g"], 16)
    one_line_error(cli("decode", d.name, "--gpa", hex(below + 0x10000)), 3, "absent")


def _runs_agree_with_pages(d, samples: int = 300) -> None:
    """``info``/``scan``'s runs (status_runs) say what a page-by-page read says, at random
    pages and at every run boundary."""
    import random

    rng = random.Random(7)
    for seg in d.space.segments:
        runs = list(seg.status_runs(0, seg.size))
        assert sum(size for _, size, _ in runs) == seg.size
        probes = {rel for rel, _, _ in runs} | {rel + size - 4096 for rel, size, _ in runs}
        probes |= {rng.randrange(0, seg.size, 4096) for _ in range(samples)}
        for rel in probes:
            want = next(st for r, size, st in runs if r <= rel < r + size)
            assert seg.chunk(rel, 8)[0] is want, (seg.detail, hex(rel))


def test_runs_agree_with_pages(stream):
    _runs_agree_with_pages(stream[1])


def test_bulk_reads_agree_with_page_reads(stream):
    """``scan``'s bulk read (read_span) gives the bytes of the generic page-by-page read."""
    import random

    from xenrs_cli.address_space import Segment

    rng = random.Random(11)
    e, d = stream
    spans = [(int(p["gpa"], 16) - 5000, 12000) for p in e["points"]]
    for seg in d.space.segments:
        spans += [(seg.gpa, min(seg.size, 1 << 18)), (seg.end - min(seg.size, 70000), 70000)]
        spans += [(seg.gpa + rng.randrange(seg.size), rng.randrange(1, 40000)) for _ in range(5)]
    for gpa, size in spans:
        seg = d.space.segment_at(gpa)
        if seg is None:
            continue
        rel, size = gpa - seg.gpa, min(size, seg.end - gpa)
        assert bytes(seg.read_span(rel, size)) == Segment.read_span(seg, rel, size), hex(gpa)


def test_zero_pages_are_present(stream):
    e, d = stream
    data, pieces = d.space.read(0x5000, 4096)
    assert data == bytes(4096) and {p.status for p in pieces} == {Status.PRESENT}


def test_cpu_state_is_read_from_the_vmstate(stream):
    e, d = stream
    assert [c.index for c in d.cpus] == [0, 1]
    if not e["booted"]:  # reset state (Intel SDM: CR0 = 0x60000010 after RESET)
        assert {(c.cr0, c.cr3, c.cr4, c.efer) for c in d.cpus} == {(0x60000010, 0, 0, 0)}
    assert d.registered_runstate == {}


def test_booted_guest_pages_resent_and_the_last_copy_wins(booted):
    e, d = booted
    assert e["query_migrate_ram"]["dirty-sync-count"] >= 2
    # the BIOS tick count at 0x46c kept changing: the stream's last copy is the final value
    assert d.space.read_present(0x400, 256).hex() == e["bda"]["bytes"]
    pages = sum(b["size"] for b in d.details["ram_blocks"]) // 4096
    assert d.details["stream"]["page_records"] > pages
    assert d.details["layout"]["vga_window"] == "VGA (absent)"
    assert d.details["layout"]["legacy_window"] == "RAM (PAM)"  # SeaBIOS shadowed itself
    assert d.space.pieces(0xA0000, 8)[0].status is Status.ABSENT


def test_info_names_blocks_layout_and_capabilities(cli_stream):
    e, d = cli_stream
    r = cli("info", d.name, "--format", "json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "qemu-migration" and info["vcpus"] == 2
    blocks = {b["name"]: b for b in info["details"]["ram_blocks"]}
    assert blocks["pc.ram"]["size"] == qemu_streams.manifest()["ram_mib"] * 2**20
    assert "mapped-ram" in info["details"]["capabilities"] or "mapped-ram" not in e["variant"]
    if e["variant"] == "compress":
        assert any(c.startswith("compress (") for c in info["details"]["capabilities"])
    assert "not mapped" in blocks["/rom@etc/acpi/tables"]["gpa"]


def test_table_info_runs(cli_stream):
    e, d = cli_stream
    r = cli("info", d.name, "--format", "table")
    assert r.exit_code == 0 and "qemu-migration" in r.stdout and "pc.ram" in r.stdout


def test_scan_finds_the_planted_records():
    name = "q35.q10.exec.mig"
    e = qemu_streams.entry(name)
    r = cli("scan", qemu_streams.path(name), "--format", "json",
            "--range", f"0x100000000-0x{(1 << 32) + 0x2400000:x}")
    assert r.exit_code == 0, r.stderr
    found = {json.loads(line)["gpa"] for line in r.stdout.splitlines()
             if line.startswith("{") and '"gpa"' in line}
    for p in e["points"]:
        if (1 << 32) <= int(p["gpa"], 16) < (1 << 32) + 0x2400000:
            assert p["gpa"] in found


# ---------------------------------------------------------------------------------------------
# Cut short


def test_truncated_stream_says_so_and_later_pages_are_absent(tmp_path):
    name = "pc.q72.exec.mig"
    e = qemu_streams.entry(name)
    full = open_dump(str(qemu_streams.path(name)))
    foff = {p["name"]: full.space.pieces(int(p["gpa"], 16), 48)[0].file_offset
            for p in e["points"]}
    full.close()
    cut = sorted(foff.values())[2] + 100  # inside the third planted page
    part = tmp_path / "cut.mig"
    with open(qemu_streams.path(name), "rb") as src:
        part.write_bytes(src.read(cut))
    with open_dump(str(part)) as d:
        assert d.variant.endswith("incomplete") and not d.details["stream"]["complete"]
        assert "ends early" in d.details["notes"][0]
        for p in e["points"]:
            status = d.space.pieces(int(p["gpa"], 16), 48)[0].status
            assert status is (Status.PRESENT if foff[p["name"]] + 4096 <= cut
                              else Status.ABSENT), p["name"]
        assert d.space.read_present(int(e["points"][0]["gpa"], 16), 48)  # earlier: present
        _runs_agree_with_pages(d)
    r = cli("decode", part, "--gpa", e["points"][-1]["gpa"])
    one_line_error(r, 3, "absent")


def test_truncated_mapped_ram_file(tmp_path):
    name = "pc.q10.mapped-ram.mig"
    e = qemu_streams.entry(name)
    with open_dump(str(qemu_streams.path(name))) as full:
        seg = full.space.segment_at(0x100000)
        pages_offset = seg.pages.block.mapped.pages_offset
    cut = pages_offset + 0x2000000  # the first 32 MiB of pc.ram's page region
    part = tmp_path / "cut.mig"
    with open(qemu_streams.path(name), "rb") as src:
        part.write_bytes(src.read(cut))
    with open_dump(str(part)) as d:
        assert not d.details["stream"]["complete"]
        for p in e["points"]:
            gpa = int(p["gpa"], 16)
            status = d.space.pieces(gpa, 48)[0].status
            assert status is (Status.PRESENT if gpa < 0x2000000 else Status.ABSENT), p["name"]
        # a page never written (a zero page in the complete file) is unknown now
        assert d.space.pieces(0x1F00000, 8)[0].status is Status.ABSENT
        _runs_agree_with_pages(d)


# ---------------------------------------------------------------------------------------------
# virsh save: libvirt's header, then the stream


XML = b"<domain type='kvm'>\n  <name>guest1</name>\n</domain>\n"


def test_libvirt_save_image(tmp_path):
    name = "q35.q10.exec.mig"
    e = qemu_streams.entry(name)
    img = tmp_path / "guest1.save"
    with open(img, "wb") as out, open(qemu_streams.path(name), "rb") as src:
        out.write(migwriter.libvirt_header(XML))
        shutil.copyfileobj(src, out, 1 << 20)
    assert detect(open(img, "rb").read(64)) == "qemu-migration"
    with open_dump(str(img)) as d:
        assert d.variant == "virsh save+precopy"
        assert d.details["libvirt"]["domain"] == "guest1"
        assert d.details["libvirt"]["format"] == "raw" and d.details["stream"]["offset"] == 4096
        for p in e["points"]:
            assert d.space.read_present(int(p["gpa"], 16), 48).hex() == p["bytes"]
    r = cli("info", img, "--dump-format", "qemu-migration", "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["details"]["libvirt"]["was_running"]


def test_libvirt_partial_and_compressed_images(tmp_path):
    body = migwriter.stream([("pc.ram", 0x10000)], [("zero", "pc.ram", 0)])[0]
    part = tmp_path / "part.save"
    part.write_bytes(migwriter.libvirt_header(XML, magic=b"LibvirtQemudPart") + body)
    with open_dump(str(part)) as d:
        assert "partial" in " ".join(d.details["notes"])
    gz = tmp_path / "gz.save"
    gz.write_bytes(migwriter.libvirt_header(XML, fmt=1) + b"\x1f\x8b" + bytes(100))
    one_line_error(cli("info", gz), 3, "gzip-compressed", "tail -c +4097")


# ---------------------------------------------------------------------------------------------
# KVM Xen emulation state: this machine's KVM has no Xen support, so QEMU cannot write a
# cpu/xen_vcpu subsection here. A real QEMU 10.0 stream gets one per vCPU instead, inserted
# where QEMU writes it (after the cpu section's last subsection, cpu/poll_control_msr, which
# precedes it in vmstate_x86_cpu) with its vmdesc entry, by byte search only.


def _insert_xen_vcpu(raw: bytes, gpas: dict[int, int]) -> bytes:
    at = raw.rfind(b'{"configuration"')
    (n,) = struct.unpack(">I", raw[at - 4:at])
    desc = json.loads(raw[at:at + n])
    body = bytearray(raw[:at - 5])
    for dev in desc["devices"]:
        if dev["name"] != "cpu" or dev["instance_id"] not in gpas:
            continue
        fields = migwriter.xen_vcpu_fields(gpas[dev["instance_id"]])
        sub_bytes = (bytes([5, len("cpu/xen_vcpu")]) + b"cpu/xen_vcpu" + struct.pack(">I", 1)
                     + b"".join(f[2] for f in fields))
        h = next(i for i in _find_all(body, b"\x03cpu" + struct.pack(">I", dev["instance_id"]))
                 if body[i - 5] == 4)
        sid = struct.unpack(">I", body[h - 4:h])[0]
        # the footer, followed by the next section's header (FULL, section id + 1)
        foot = body.find(bytes([0x7E]) + struct.pack(">IBI", sid, 4, sid + 1), h)
        body[foot:foot] = sub_bytes
        dev.setdefault("subsections", []).append({"vmsd_name": "cpu/xen_vcpu", "version": 1,
                                   "fields": migwriter._desc_fields(fields)})
    text = json.dumps(desc).encode()
    return bytes(body) + bytes([6]) + struct.pack(">I", len(text)) + text


def _find_all(buf, needle):
    i = buf.find(needle)
    while i >= 0:
        yield i
        i = buf.find(needle, i + 1)


def test_xen_vcpu_runstate_gpas_from_a_stream(tmp_path):
    name = "pc.q10.exec.mig"
    raw = qemu_streams.path(name).read_bytes()
    patched = tmp_path / "xen.mig"
    patched.write_bytes(_insert_xen_vcpu(raw, {0: 0x1234040, 1: 0x100000080}))
    with open_dump(str(patched)) as d:
        assert d.registered_runstate == {0: 0x1234040, 1: 0x100000080}
        assert d.details["xen_vcpus"] == [
            {"vcpu": 0, "runstate_gpa": "0x1234040", "info_gpa": None, "time_info_gpa": None},
            {"vcpu": 1, "runstate_gpa": "0x100000080", "info_gpa": None,
             "time_info_gpa": None}]
        assert [c.cr0 for c in d.cpus] == [0x60000010, 0x60000010]
        e = qemu_streams.entry(name)
        for p in e["points"]:
            assert d.space.read_present(int(p["gpa"], 16), 48).hex() == p["bytes"]
    r = cli("info", patched, "--format", "table")
    assert r.exit_code == 0 and "xen_vcpus" in r.stdout and "0x100000080" in r.stdout
    # decode --vcpus without symbols reads the areas the stream says each vCPU registered:
    # here the planted records "mid" and "above_4g"
    r = cli("decode", patched, "--vcpus", "--format", "json")
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["gpa"] for rec in recs] == ["0x1234040", "0x100000080"]
    want = {p["gpa"]: p for p in e["points"]}
    for rec in recs:
        assert rec["state_code"] == want[rec["gpa"]]["state"]
        assert rec["state_entry_time"] == want[rec["gpa"]]["state_entry_time"]


def test_xen_vcpu_and_control_registers_from_the_writer(tmp_path):
    cpus = [migwriter.x86_cpu(0, 0x80050033, 0x1AB000, 0x3406F0, 0xD01, 0x5000),
            migwriter.x86_cpu(1, 0x80050033, 0x1AC000, 0x3406F0, 0xD01, None),
            migwriter.x86_cpu(2, 0x80000011, 0x9000, 0x20, 0, 2**64 - 1)]
    raw, _ = migwriter.stream([("pc.ram", 0x100000)], [], devices=cpus)
    p = tmp_path / "w.mig"
    p.write_bytes(raw)
    with open_dump(str(p)) as d:
        assert d.registered_runstate == {0: 0x5000}  # vCPU 2 registered none (INVALID_GPA)
        assert [(c.index, c.cr0, c.cr3, c.cr4, c.efer) for c in d.cpus] == [
            (0, 0x80050033, 0x1AB000, 0x3406F0, 0xD01), (1, 0x80050033, 0x1AC000, 0x3406F0, 0xD01),
            (2, 0x80000011, 0x9000, 0x20, 0)]
        assert [r["vcpu"] for r in d.details["xen_vcpus"]] == [0, 2]


# ---------------------------------------------------------------------------------------------
# The independent writer: records in any order, resent, plain or zlib, cut anywhere


PAGES = 16


def _page(seed: int) -> bytes:
    return bytes((seed * 7 + i) & 0xFF for i in range(4096)) if seed else bytes(4096)


records = st.lists(st.tuples(st.sampled_from(["zero", "page", "zlib"]),
                             st.integers(0, PAGES - 1), st.integers(1, 250)),
                   min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(records, st.booleans(), st.floats(0, 1))
def test_last_copy_wins_and_a_cut_keeps_what_was_written(tmp_path_factory, recs, footers,
                                                        cut_at):
    tmp = tmp_path_factory.mktemp("w")
    recs = [(k, "pc.ram", page * 4096, _page(seed)) if k != "zero" else (k, "pc.ram", page * 4096)
            for k, page, seed in recs]
    raw, ends = migwriter.stream([("pc.ram", PAGES * 4096)], recs, footers=footers)
    setup_end = raw.index(struct.pack(">Q", migwriter.EOS)) + 8  # the block list is whole
    cut = len(raw) if cut_at > 0.9 else max(setup_end, int(len(raw) * cut_at))
    p = tmp / "s.mig"
    p.write_bytes(raw[:cut])
    model: dict[int, bytes] = {}
    for end, rec in ends:
        if end <= cut:
            model[rec[2]] = rec[3] if rec[0] != "zero" else bytes(4096)
    with open_dump(str(p)) as d:
        eof_end = raw.rindex(b'{"configuration"') - 5  # QEMU_VM_EOF, then the vmdesc record
        assert d.details["stream"]["complete"] == (cut >= eof_end)
        for page in range(PAGES):
            data, pieces = d.space.read(page * 4096, 4096)
            if page * 4096 in model:
                assert pieces[0].status is Status.PRESENT and data == model[page * 4096]
            else:
                assert pieces[0].status is Status.ABSENT


def test_ram_split_rule():
    # pc_piix.c: 3.5 GiB unless RAM reaches it, then 3 GiB (gigabyte_align); pc-1.7: 3.5 GiB
    assert ram_split("i440fx", "pc-i440fx-10.0", 0xDFFFF000) == 0xDFFFF000
    assert ram_split("i440fx", "pc-i440fx-10.0", 0xE0000000) == 0xC0000000
    assert ram_split("i440fx", "pc-i440fx-1.7", 0x100000000) == 0xE0000000
    # pc_q35.c: 2.75 GiB fits below; from 2.75 GiB on, 2 GiB
    assert ram_split("q35", "pc-q35-7.2", 0xAFFFF000) == 0xAFFFF000
    assert ram_split("q35", "pc-q35-7.2", 0xB0000000) == 0x80000000
    assert ram_split("q35", "pc-q35-10.0", 0x40000000) == 0x40000000
    # distribution machine types (RHEL, Ubuntu) keep the family's rule
    assert family("pc-i440fx-rhel7.6.0") == "i440fx" and family("pc-q35-rhel9.4.0") == "q35"
    assert ram_split("i440fx", "pc-i440fx-rhel7.6.0", 0x100000000) == 0xC0000000
    assert family("pc-i440fx-jammy") == "i440fx" and family("pc-q35-noble") == "q35"
    for other in ("microvm", "virt-9.2", "s390-ccw-virtio-8.2", "isapc-x"):
        with pytest.raises(UnsupportedDumpError, match="machine type"):
            family(other)


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 3


def _write(tmp_path, data: bytes):
    p = tmp_path / "bad.mig"
    p.write_bytes(data)
    return p


def test_bad_streams_are_one_line_errors(tmp_path):
    ok, _ = migwriter.stream([("pc.ram", 0x10000)], [("page", "pc.ram", 0x1000, _page(3))])
    one_line_error(cli("info", _write(tmp_path, b"QEVM" + struct.pack(">I", 2) + bytes(64))),
                   3, "version 2")
    one_line_error(cli("info", _write(tmp_path, ok[:8] + b"\x42" + ok[9:])), 3,
                   "unknown section type 0x42")
    other, _ = migwriter.stream([("pc.ram", 0x10000)], [], machine="virt-10.0")
    one_line_error(cli("info", _write(tmp_path, other)), 3, "machine type")
    xb, _ = migwriter.stream([("pc.ram", 0x10000)], [("xbzrle", "pc.ram", 0x1000)])
    one_line_error(cli("info", _write(tmp_path, xb)), 3, "XBZRLE")
    beyond, _ = migwriter.stream([("pc.ram", 0x10000)], [("zero", "pc.ram", 0x10000)])
    one_line_error(cli("info", _write(tmp_path, beyond)), 3, "beyond RAM block")
    numa, _ = migwriter.stream([("ram-node0", 0x10000)], [])
    one_line_error(cli("info", _write(tmp_path, numa)), 3, "no pc.ram block")
    at = ok.index(b"\x02\x00\x00\x00\x00")  # the first PART section: a POSTCOPY_LISTEN first
    post = ok[:at] + bytes([8]) + struct.pack(">HH", 4, 0) + ok[at:]
    one_line_error(cli("info", _write(tmp_path, post)), 3, "postcopy")


def test_forcing_the_format_on_other_bytes(tmp_path):
    p = tmp_path / "x.raw"
    p.write_bytes(bytes(8192))
    one_line_error(cli("info", p, "--dump-format", "qemu-migration"), 3, "QEVM")


def test_diff_and_simulate_read_streams():
    """Two streams of the same guest (precopy and mapped-ram) hold the same records."""
    a, b = (qemu_streams.dump_path(n) for n in ("q35.q10.exec.mig", "q35.q10.mapped-ram.mig"))
    gpa = next(p["gpa"] for p in qemu_streams.entry("q35.q10.exec.mig")["points"]
               if p["name"] == "above_4g_2")
    r = cli("diff", a, b, "--gpa", gpa, "--format", "json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["before"]["raw"] == out["after"]["raw"] and out["verdicts"] == ["state_unchanged"]
    r = cli("simulate", "--from-dump", a, "--gpa", gpa, "--format", "json")
    assert r.exit_code == 0, r.stderr
    writes = [json.loads(line) for line in r.stdout.splitlines()]
    assert writes[0]["op"] == "write" and int(writes[0]["gpa"], 16) >= int(gpa, 16)


def test_a_claimed_block_size_costs_nothing(tmp_path):
    """A 1 PiB pc.ram with three records: the index holds the three 1 GiB chunks they touch,
    and info's extents are computed per chunk, not per page."""
    huge = 1 << 50
    recs = [("page", "pc.ram", off, _page(5)) for off in (0x1000, 0x40000000, huge - 0x1000)]
    raw, _ = migwriter.stream([("pc.ram", huge)], recs)
    p = _write(tmp_path, raw)
    with open_dump(str(p)) as d:
        index = d.space.segment_at(0x1000).pages.block.index
        assert len(index.chunks) == 3
        blocks = {b["name"]: b for b in d.details["ram_blocks"]}
        assert blocks["pc.ram"]["data"] == 3 and blocks["pc.ram"]["absent"] == huge // 4096 - 3
        assert sum(e.size for e in d.space.extents() if e.status is Status.PRESENT) == 3 * 4096
    r = cli("info", p, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["bytes"]["present"] == 3 * 4096


def test_records_scattered_beyond_what_the_file_can_describe(tmp_path):
    recs = [("zero", "pc.ram", k << 30) for k in range(64)]  # 64 chunks of 2 MiB for ~1 KiB
    raw, _ = migwriter.stream([("pc.ram", 1 << 40)], recs)
    one_line_error(cli("info", _write(tmp_path, raw)), 3, "more guest RAM than a stream")


EXAMPLE = open(qemu_streams.DATA.parent.parent.parent / "examples" / "guest.mig", "rb").read()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.integers(0, 0x2000), st.integers(0, len(EXAMPLE) - 1)),
                          st.integers(0, 255)), max_size=6),
       st.one_of(st.just(len(EXAMPLE)), st.integers(9, len(EXAMPLE))))
def test_corrupt_streams_fail_cleanly(tmp_path_factory, flips, keep):
    """Any byte of a real stream changed, or the stream cut: it opens, or fails as an input
    error (exit 3) — never another exception."""
    from xenrs_cli.errors import XenrsError
    from xenrs_cli.info import describe

    data = bytearray(EXAMPLE[:keep])
    for at, value in flips:
        if at < len(data):
            data[at] = value
    p = tmp_path_factory.mktemp("c") / "c.mig"
    p.write_bytes(bytes(data))
    try:
        with open_dump(str(p), "qemu-migration") as d:
            describe(d, str(p))
            for gpa in (0x101FF1, 0x102404, 0xFFFFF000):
                d.space.read(gpa, 48)
    except XenrsError as e:
        assert e.exit_code == 3


def test_a_malformed_vmdesc_leaves_the_ram_readable(tmp_path):
    cpu = migwriter.x86_cpu(0, 0x80050033, 0x1AB000, 0x3406F0, 0xD01, 0x5000)
    raw, _ = migwriter.stream([("pc.ram", 0x10000)], [("page", "pc.ram", 0x1000, _page(9))],
                              devices=[cpu])
    bad = raw.replace(b'"size": 8', b'"sizf": 8', 1)  # same length: the record stays framed
    with open_dump(str(_write(tmp_path, bad))) as d:
        assert d.space.read_present(0x1000, 4096) == _page(9)
        assert d.cpus == () and d.registered_runstate == {}
        assert "no vmdesc entry" in " ".join(d.details["notes"])
    with open_dump(str(_write(tmp_path, raw))) as d:  # the same stream, well formed
        assert d.registered_runstate == {0: 0x5000}


def test_a_stream_truncated_while_open_ends_in_one_error(tmp_path):
    """Pages are read with pread after the walk at open: a stream cut underneath is the
    readers' one-line error, not SIGBUS (which would kill this test process)."""
    from xenrs_cli.errors import DumpChangedError

    for name in ("pc.q10.booted.mig", "q35.q10.mapped-ram.mig", "pc.q72.compress.mig"):
        path = tmp_path / name
        shutil.copyfile(qemu_streams.dump_path(name), path)
        with open_dump(str(path)) as d:
            gpas = [e.gpa for e in d.space.extents() if e.status is Status.PRESENT]
            os.truncate(path, 4096)
            with pytest.raises(DumpChangedError, match="the dump changed while being read"):
                for g in gpas:
                    d.space.read_present(g, 4096)


# A corrupt stream's configuration and vmdesc: one line and exit 3, or read as well as can be
# (found by crafting them after the fuzz corpus was found to hold no migration stream).


def _with_configuration(extra: bytes) -> bytes:
    data, _ = migwriter.stream([("pc.ram", 1 << 20)],
                               [("page", "pc.ram", 0x1000, b"\x11" * 4096)])
    at = 8 + 1 + 4 + len(b"pc-i440fx-10.0")  # after the machine type
    return data[:at] + extra + data[at:]


def _subsection(name: bytes, payload: bytes) -> bytes:
    return bytes([5, len(name)]) + name + struct.pack(">I", 1) + payload


@pytest.mark.parametrize("bits", [0, 9, 17, 40, 63, 0xFFFFFFFF])
def test_target_page_bits_out_of_range(tmp_path, bits):
    path = tmp_path / "bits.mig"
    path.write_bytes(_with_configuration(_subsection(b"configuration/target-page-bits",
                                                     struct.pack(">I", bits))))
    one_line_error(cli("info", path), 3, f"target-page-bits {bits}: QEMU's target pages are")


def test_capability_names_that_are_not_ascii(tmp_path):
    path = tmp_path / "caps.mig"
    path.write_bytes(_with_configuration(_subsection(
        b"configuration/capabilities", struct.pack(">I", 1) + bytes([3]) + b"\xff\xfe\xfd")))
    result = cli("info", path, "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["details"]["capabilities"] == ["\\xff\\xfe\\xfd"]


@pytest.mark.parametrize("value", [b"0   ", b'"x" ', b"-1  ", b"1e99", b"3   ", b"[]  ",
                                   b"8192"])
def test_vmdesc_page_size_of_another_shape_is_not_believed(tmp_path, value):
    data, _ = migwriter.stream([("pc.ram", 1 << 20)],
                               [("page", "pc.ram", 0x1000, b"\x11" * 4096)])
    assert b'"page_size": 4096' in data
    path = tmp_path / "ps.mig"
    path.write_bytes(data.replace(b'"page_size": 4096', b'"page_size": ' + value))
    result = cli("decode", path, "--gpa", "0x1000", "--format", "json")
    if value == b"8192":  # a believable one is believed: the 4 KiB records no longer fit
        one_line_error(result, 3)
        return
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["raw"].startswith("11" * 48)


def test_unknown_block_names_are_shown_cut_and_escaped(tmp_path):
    data, _ = migwriter.stream([("pc.ram", 1 << 20)],
                               [("page", "pc.ram", 0x1000, b"\x11" * 4096)])
    name = b"\x06pc.ram"
    garbage = bytes([200]) + bytes(range(128, 255)) + b"\xff" * 72
    path = tmp_path / "name.mig"
    path.write_bytes(data.replace(name + b"\x11", garbage + b"\x11", 1))
    msg = one_line_error(cli("info", path), 3)
    # (200 is the name's length byte; the name is bytes 0x80 on)
    assert "block '\\x80\\x81" in msg and "'... at file offset" in msg and len(msg) < 200
