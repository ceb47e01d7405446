"""An independent writer of QEMU migration streams and libvirt save headers, for tests.

Written from QEMU's savevm.c/ram.c/vmstate.c (``save_section_header``, ``save_page_header``,
``vmstate_subsection_save``, ``qemu_savevm_state_complete_precopy_non_iterable``) and libvirt's
``qemu_saveimage.h`` with ``struct`` only; it shares no code with ``xenrs_cli``. It writes what
real QEMU rarely does on demand: pages resent many times, zlib pages next to plain ones, a
``cpu/xen_vcpu`` subsection (QEMU writes it only for a KVM guest with Xen emulation).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

EOS, MEM_SIZE, ZERO, PAGE, CONTINUE, COMPRESS, XBZRLE = 0x10, 0x04, 0x02, 0x08, 0x20, 0x100, 0x40


@dataclass
class Device:
    """A non-iterable section: fields are (name, vmdesc type, encoded bytes); subsections are
    (vmsd name, fields)."""

    idstr: str
    instance: int
    vmsd: str
    fields: list[tuple]
    subsections: list[tuple[str, list[tuple]]] = field(default_factory=list)


def _desc_fields(fields):
    """vmdesc entries; a 4-tuple is an array described once with ``array_len`` (vmstate.c
    ``vmsd_desc_field_start`` for a compressible array)."""
    out = []
    for f in fields:
        n, t, b = f[:3]
        if len(f) == 4:
            out.append({"name": n, "array_len": f[3], "type": t, "size": len(b) // f[3]})
        else:
            out.append({"name": n, "type": t, "size": len(b)})
    return out


def _vmstate(dev: Device) -> tuple[bytes, dict]:
    data = b"".join(f[2] for f in dev.fields)
    desc = {"name": dev.idstr, "instance_id": dev.instance, "vmsd_name": dev.vmsd, "version": 1,
            "fields": _desc_fields(dev.fields)}
    subs = []
    for name, fields in dev.subsections:
        data += bytes([5, len(name)]) + name.encode() + struct.pack(">I", 1)
        data += b"".join(f[2] for f in fields)
        subs.append({"vmsd_name": name, "version": 1, "fields": _desc_fields(fields)})
    if subs:
        desc["subsections"] = subs
    return data, desc


def stream(blocks: list[tuple[str, int]], records: list[tuple], *,
           machine: str = "pc-i440fx-10.0", devices: list[Device] = (), per_part: int = 7,
           footers: bool = True, vmdesc: bool = True) -> tuple[bytes, list[tuple[int, tuple]]]:
    """The stream bytes and, for each page record, (file offset just after it, record).

    ``records``: ``("zero", block, offset)``, ``("page", block, offset, 4096 bytes)``,
    ``("zlib", block, offset, 4096 bytes)``, ``("xbzrle", block, offset)``."""
    out = bytearray(b"QEVM" + struct.pack(">I", 3))
    name = machine.encode()
    out += bytes([7]) + struct.pack(">I", len(name)) + name

    def footer(sid):
        if footers:
            out.extend(bytes([0x7E]) + struct.pack(">I", sid))

    out += bytes([1]) + struct.pack(">I", 0) + bytes([3]) + b"ram" + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", sum(n for _, n in blocks) | MEM_SIZE)
    for bname, length in blocks:
        out += bytes([len(bname)]) + bname.encode() + struct.pack(">Q", length)
    out += struct.pack(">Q", EOS)
    footer(0)
    ends = []
    last = None
    for i in range(0, max(len(records), 1), per_part):
        out += bytes([2]) + struct.pack(">I", 0)
        for rec in records[i:i + per_part]:
            kind, bname, off = rec[0], rec[1], rec[2]
            flags = {"zero": ZERO, "page": PAGE, "zlib": COMPRESS, "xbzrle": XBZRLE}[kind]
            if bname == last:
                out += struct.pack(">Q", off | flags | CONTINUE)
            else:
                out += struct.pack(">Q", off | flags) + bytes([len(bname)]) + bname.encode()
                last = bname
            if kind == "zero":
                out += b"\0"
            elif kind == "page":
                out += rec[3]
            elif kind == "zlib":
                z = zlib.compress(rec[3])
                out += struct.pack(">I", len(z)) + z
            else:
                out += bytes([1]) + struct.pack(">H", 0)
            ends.append((len(out), rec))
        out += struct.pack(">Q", EOS)
        footer(0)
    out += bytes([3]) + struct.pack(">I", 0) + struct.pack(">Q", EOS)
    footer(0)
    descs = []
    for sid, dev in enumerate(devices, start=1):
        data, desc = _vmstate(dev)
        name = dev.idstr.encode()
        out += bytes([4]) + struct.pack(">I", sid) + bytes([len(name)]) + name
        out += struct.pack(">II", dev.instance, 1) + data
        footer(sid)
        descs.append(desc)
    out += b"\0"  # QEMU_VM_EOF
    if vmdesc:
        text = json.dumps({"configuration": {"vmsd_name": "configuration", "version": 1,
                                             "fields": []},
                           "page_size": 4096, "devices": descs}).encode()
        out += bytes([6]) + struct.pack(">I", len(text)) + text
    return bytes(out), ends


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def x86_cpu(index: int, cr0: int, cr3: int, cr4: int, efer: int,
            runstate_gpa: int | None = None) -> Device:
    """A ``cpu`` section with the fields of target/i386/machine.c around the ones xenrs reads
    (field order as vmstate_x86_cpu: regs, eip, ..., cr[0], cr[2], cr[3], cr[4], ..., efer)."""
    fields = [("env.regs", "uint64", u64(0x1111) * 16, 16), ("env.eip", "uint64", u64(0xFFF0)),
              ("env.cr[0]", "uint64", u64(cr0)), ("env.cr[2]", "uint64", u64(0xDEAD)),
              ("env.cr[3]", "uint64", u64(cr3)), ("env.cr[4]", "uint64", u64(cr4)),
              ("env.a20_mask", "int32", struct.pack(">i", -1)), ("env.efer", "uint64", u64(efer))]
    subs = [("cpu/poll_control_msr", [("env.poll_control_msr", "uint64", u64(1))])]
    if runstate_gpa is not None:
        subs.append(("cpu/xen_vcpu", xen_vcpu_fields(runstate_gpa)))
    return Device("cpu", index, "cpu", fields, subs)


def xen_vcpu_fields(runstate_gpa: int) -> list[tuple]:
    """target/i386/machine.c ``vmstate_xen_vcpu`` (XEN_NR_VIRQS = 24 uint16s)."""
    return [("env.xen_vcpu_info_gpa", "uint64", u64(2**64 - 1)),
            ("env.xen_vcpu_info_default_gpa", "uint64", u64(2**64 - 1)),
            ("env.xen_vcpu_time_info_gpa", "uint64", u64(2**64 - 1)),
            ("env.xen_vcpu_runstate_gpa", "uint64", u64(runstate_gpa)),
            ("env.xen_vcpu_callback_vector", "uint8", b"\xf3"),
            ("env.xen_virq", "uint16", bytes(48), 24),
            ("env.xen_singleshot_timer_ns", "uint64", u64(0)),
            ("env.xen_periodic_timer_period", "uint64", u64(0))]


def libvirt_header(xml: bytes, *, magic: bytes = b"LibvirtQemudSave", fmt: int = 0,
                   pad_to: int = 4096) -> bytes:
    """libvirt ``virQEMUSaveHeader`` (version 2, host order = little-endian here) + the domain
    XML, NUL-padded as libvirt pads it to leave room for later edits."""
    data = xml + b"\0"
    data += bytes(-(92 + len(data)) % pad_to)
    return struct.pack("<16s5I14I", magic, 2, len(data), 1, fmt, 0, *([0] * 14)) + data
