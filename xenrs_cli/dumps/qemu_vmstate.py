"""Fields of a migration stream's device state, located through its vmdesc JSON.

Device sections are encoded field after field with no tags (QEMU ``migration/vmstate.c``
``vmstate_save_state_v``), so a field's offset is the sum of the sizes before it. The vmdesc
gives every field's name and written size, struct fields with their nested description, and
the subsections that followed the fields (each after a 6-byte + name header,
``vmstate_subsection_save``). From that, :func:`field_offsets` lists each field's offset
without any device layout hard-coded here; the readers below then ask for names:

* ``cpu`` (target/i386/machine.c ``vmstate_x86_cpu``): ``env.cr[0]``/``[3]``/``[4]`` and
  ``env.efer``, and the ``cpu/xen_vcpu`` subsection's ``env.xen_vcpu_runstate_gpa`` (present
  when QEMU emulated Xen for a KVM guest, ``xen_vcpu_needed``); the instance id is the vCPU
  index (``cpu_exec_realizefn`` registers the vmstate with ``cpu_index``).
* the PCI host bridge's config space (``I440FX``/``mch``: ``PCIDevice`` field ``config``), for
  its PAM registers (hw/pci-host/pam.c): which of 0xc0000-0xfffff reads RAM or ROM.

The vmdesc is the stream's last record (:func:`find_vmdesc`); :func:`vmsd_size` gives each
device section's length, by which the stream walker skips it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

from construct import Int32ub, Struct

from xenrs_cli.binary import compiled
from xenrs_cli.cpu_state import CpuState

INVALID_GPA = (1 << 64) - 1  # xen-emu.c: no area registered
_INDEX = re.compile(r"\[\d+\]$")
_BE32 = compiled(Struct("value" / Int32ub))
VMDESCRIPTION = 0x06  # savevm.h QEMU_VM_VMDESCRIPTION
VMDESC_WINDOW = 64 << 20  # the vmdesc JSON is looked for in the file's last 64 MiB


@dataclass(frozen=True, slots=True)
class DeviceSection:
    """A ``QEMU_VM_SECTION_FULL`` device section: where its data is and its vmdesc entry."""

    name: str
    instance_id: int
    version_id: int
    data_offset: int
    size: int
    desc: dict


def find_vmdesc(buf, size: int) -> tuple[int, dict] | None:
    """The ``QEMU_VM_VMDESCRIPTION`` record at the end of the stream (trailing zero padding
    allowed), found from its JSON's first key: ``configuration`` (QEMU >= 2.x with a
    configuration section, savevm.c ``qemu_savevm_state_header``) or ``page_size``."""
    lo = max(0, size - VMDESC_WINDOW)
    for marker in (b'{"configuration"', b'{"page_size"'):
        at = buf.rfind(marker, lo)
        if at < 5 or buf[at - 5] != VMDESCRIPTION:
            continue
        (length,) = _BE32.unpack_from(buf, at - 4)
        end = at + length
        if end > size or buf[end:size].strip(b"\0"):
            continue
        try:
            desc = json.loads(bytes(buf[at:end]))
        except (ValueError, RecursionError):
            continue
        if (isinstance(desc, dict) and isinstance(desc.get("devices"), list)
                and _page_size_ok(desc.get("page_size", 1 << 12))
                and all(_well_formed(d) for d in desc["devices"])):
            return at - 5, desc
    return None


# QEMU's TARGET_PAGE_BITS: 10 (Arm's TARGET_PAGE_BITS_MIN) to 16; a stream's page size is one
PAGE_BITS = (10, 16)


def _page_size_ok(size) -> bool:
    """A target page size QEMU can have (:data:`PAGE_BITS`)."""
    return (type(size) is int and 1 << PAGE_BITS[0] <= size <= 1 << PAGE_BITS[1]
            and not size & (size - 1))


def _well_formed(desc, depth: int = 0) -> bool:
    """Whether a vmdesc entry has the shape vmstate.c writes (so that sizes and offsets can be
    computed from it without surprises): fields with a name and a size, optional
    ``array_len``, nested ``struct``s and ``subsections`` with a ``vmsd_name``."""
    if not isinstance(desc, dict) or depth > 32:
        return False
    fields, subs = desc.get("fields", []), desc.get("subsections", [])
    if not isinstance(fields, list) or not isinstance(subs, list):
        return False
    for f in fields:
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                and type(f.get("size")) is int and f["size"] >= 0
                and type(f.get("array_len", 1)) is int and f.get("array_len", 1) >= 1):
            return False
        if "struct" in f and not _well_formed(f["struct"], depth + 1):
            return False
    return all(isinstance(sub, dict) and isinstance(sub.get("vmsd_name"), str)
               and _well_formed(sub, depth + 1) for sub in subs)


def vmsd_size(desc: dict) -> int:
    """Bytes a vmstate occupies, from its vmdesc: every field's size (times ``array_len``: a
    compressible array is described once, vmstate.c ``vmsd_desc_field_start``) plus each
    subsection's header (``vmstate_subsection_save``: type, name length, name, be32 version)."""
    total = 0
    for f in desc.get("fields", ()):
        total += int(f["size"]) * int(f.get("array_len", 1))
    for sub in desc.get("subsections", ()):
        total += 6 + len(sub["vmsd_name"]) + vmsd_size(sub)
    return total




def field_offsets(desc: dict, base: int = 0, prefix: tuple[str, ...] = ()
                  ) -> Iterator[tuple[tuple[str, ...], int, int]]:
    """(path, offset, size of one element) of every field of a vmdesc entry, depth first.

    A path holds field names as the vmdesc spells them (``env.cr[3]`` is the field's C
    expression; ``config[0]`` is ``config`` suffixed by vmstate.c because the name repeats)
    and subsection names (``cpu/xen_vcpu``)."""
    cur = base
    for f in desc.get("fields", ()):
        size, count = int(f["size"]), int(f.get("array_len", 1))
        path = (*prefix, f["name"])
        yield path, cur, size
        if isinstance(f.get("struct"), dict):
            yield from field_offsets(f["struct"], cur, path)
        cur += size * count
    for sub in desc.get("subsections", ()):
        cur += 6 + len(sub["vmsd_name"])
        yield from field_offsets(sub, cur, (*prefix, sub["vmsd_name"]))
        cur += vmsd_size(sub)


def fields(section: DeviceSection) -> dict[tuple[str, ...], tuple[int, int]]:
    """Path -> (file offset, size) of each field of a device section."""
    return {path: (section.data_offset + off, size)
            for path, off, size in field_offsets(section.desc)}


def _u64(buf, where: tuple[int, int] | None) -> int | None:
    if where is None or where[1] != 8:
        return None
    off, _ = where
    return int.from_bytes(buf[off:off + 8], "big")


def cpus(buf, devices: list[DeviceSection]) -> tuple[tuple[CpuState, ...], dict[int, int]]:
    """Each vCPU's control registers, and vCPU -> registered runstate GPA (KVM Xen)."""
    states, runstate = [], {}
    for dev in devices:
        if dev.name != "cpu":
            continue
        where = fields(dev)
        states.append(CpuState(dev.instance_id,
                               cr0=_u64(buf, where.get(("env.cr[0]",))),
                               cr3=_u64(buf, where.get(("env.cr[3]",))),
                               cr4=_u64(buf, where.get(("env.cr[4]",))),
                               efer=_u64(buf, where.get(("env.efer",))),
                               source="QEMU cpu vmstate"))
        gpa = _u64(buf, where.get(("cpu/xen_vcpu", "env.xen_vcpu_runstate_gpa")))
        if gpa is not None and gpa != INVALID_GPA:
            runstate[dev.instance_id] = gpa
    return tuple(sorted(states, key=lambda c: c.index)), runstate


def xen_vcpus(buf, devices: list[DeviceSection]) -> list[dict]:
    """The ``cpu/xen_vcpu`` subsection of each vCPU that has one, for ``info``."""
    out = []
    for dev in devices:
        if dev.name != "cpu":
            continue
        where = fields(dev)
        if ("cpu/xen_vcpu", "env.xen_vcpu_runstate_gpa") not in where:
            continue
        row = {"vcpu": dev.instance_id}
        for key in ("runstate", "info", "time_info"):
            value = _u64(buf, where.get(("cpu/xen_vcpu", f"env.xen_vcpu_{key}_gpa")))
            row[f"{key}_gpa"] = None if value in (None, INVALID_GPA) else f"0x{value:x}"
        out.append(row)
    return sorted(out, key=lambda r: r["vcpu"])


def pci_config(buf, devices: list[DeviceSection], vmsd_names: tuple[str, ...]) -> bytes | None:
    """The 256-byte config space of the first device whose vmsd is one of ``vmsd_names``."""
    for dev in devices:
        if dev.desc.get("vmsd_name") not in vmsd_names:
            continue
        for path, (off, size) in fields(dev).items():
            if _INDEX.sub("", path[-1]) == "config" and size >= 256:
                return bytes(buf[off:off + 256])
    return None
