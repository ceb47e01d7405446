"""Dump formats: each turns a mapped file into segments of an :class:`AddressSpace`.

``FORMATS`` lists the readable formats in the order they are sniffed; ``raw`` is last because
any bytes are a raw image. ``unrecognised`` names inputs that are recognisably something else
(a migration stream, a compressed file) so that the error says what to do instead.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

from xenrs_cli.address_space import AddressSpace
from xenrs_cli.cpu_state import CpuState
from xenrs_cli.errors import UsageError
from xenrs_cli.files import MappedFile, MappedFileGroup, open_readonly

# name -> module path; each module has sniff(buf) -> bool and load(mapped, base) -> Dump.
FORMATS: dict[str, str] = {
    "raw": "xenrs_cli.dumps.raw",
    "elf": "xenrs_cli.dumps.elf",
    "kdump": "xenrs_cli.dumps.kdump",
    "xen-core": "xenrs_cli.dumps.xen_core",
    "lime": "xenrs_cli.dumps.lime",
    "qemu-migration": "xenrs_cli.dumps.qemu_migration",
}
# formats with a signature, tried in this order before falling back to raw
# (``xen-core`` before ``elf``: an xl dump-core file is an ELF core whose GPAs are not p_paddr)
SNIFF_ORDER: tuple[str, ...] = ("xen-core", "elf", "kdump", "lime", "qemu-migration")
# The leading bytes each of them starts with: detect() imports a reader (and pays for its
# construct declarations) only when they match, so a raw image decodes at raw-image cost.
MAGIC: dict[str, tuple[bytes, ...]] = {
    "elf": (b"\x7fELF",),
    "kdump": (b"KDUMP   ", b"makedumpfile\0"),
    "xen-core": (b"\x7fELF",),
    "lime": (b"EMiL", b"AVML"),
    "qemu-migration": (b"QEVM", b"LibvirtQemudSave", b"LibvirtQemudPart"),
}


@dataclass
class Dump:
    """An opened dump: its address space and what ``info`` says about it."""

    name: str
    format: str
    space: AddressSpace
    file: MappedFile | MappedFileGroup
    variant: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Each vCPU's control registers, where the file records them (SPEC §8's CR3 and paging mode).
    cpus: tuple[CpuState, ...] = ()
    # vCPU -> GPA of the runstate area the guest registered, where the dump itself records it
    # (a QEMU migration stream of a KVM Xen guest: vmstate ``xen_vcpu``); ``decode --vcpus``
    # without ``--symbols`` uses it.
    registered_runstate: dict[int, int] = field(default_factory=dict)
    # Frame numbers found in the guest's page tables -> GPA frame numbers, where they differ (an
    # ``xl dump-core`` of a PV guest: machine frames, translated through ``.xen_p2m``); ``None``
    # where page-table entries hold GPAs already. Returns ``None`` for a frame the dump lacks.
    frame_to_gpa: Callable[[int], int | None] | None = None

    @property
    def page_size(self) -> int:
        return self.space.page_size

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_BASE_RE = re.compile(r"^(?P<path>.+)@(?P<base>(0[xX][0-9a-fA-F_]+|[0-9_]+))$")


def split_base(spec: str) -> tuple[str, int | None]:
    """``vm.raw@0x80000000`` → (``vm.raw``, 0x80000000), crash's syntax for a raw image's base.

    A path that exists as written (even with an ``@`` in it) is taken literally.
    """
    if os.path.exists(spec):
        return spec, None
    m = _BASE_RE.match(spec)
    if m is None:
        path, at, base = spec.rpartition("@")
        if at and (path == "-" or os.path.exists(path)):
            raise UsageError(f"{spec}: {base!r} is not a base address: write PATH@0xBASE with "
                             "BASE in 0x hex or decimal ('_' allowed), 4 KiB aligned")
        return spec, None
    return m.group("path"), int(m.group("base").replace("_", ""), 0)


def detect(buf) -> str:
    """The format of a mapped dump, from its content."""
    from xenrs_cli.dumps import unrecognised

    head = bytes(buf[:16])
    for name in SNIFF_ORDER:
        if head.startswith(MAGIC[name]) and importlib.import_module(FORMATS[name]).sniff(buf):
            return name
    unrecognised.refuse(buf)  # raises for inputs that are recognisably something else
    return "raw"


def open_dump(spec: str, fmt: str = "auto") -> Dump:
    """Open ``spec`` (``path``, ``path@0xBASE``, ``-``, or raw images ``a@0x0,b@0x100000000``)
    read-only as a dump. A path that exists as written (with a comma in it) is taken literally."""
    if "," in spec and not os.path.exists(spec):
        from xenrs_cli.dumps import multi_raw

        return multi_raw.open_images(spec, fmt)
    path, base = split_base(spec)
    if fmt not in ("auto", *FORMATS):
        raise UsageError(f"unknown dump format {fmt!r} (choose from auto, {', '.join(FORMATS)})")
    mapped = open_readonly(path)
    try:
        # Sniffed through pread, like everything the readers read: a mapping's page past a
        # concurrent truncation would be SIGBUS (see dumps/source.py).
        from xenrs_cli.dumps import source

        name = fmt if fmt != "auto" else detect(source.of(mapped))
        if base is not None and name != "raw":
            raise UsageError(f"{path}: @0x{base:x} sets the base of a raw image, "
                             f"but this is a {name} dump whose GPAs are in the file")
        return importlib.import_module(FORMATS[name]).load(mapped, base or 0)
    except BaseException:
        mapped.close()
        raise
