"""Inputs that are recognisably not a memory dump xenrs reads, and what to run instead.

Checked before falling back to ``raw`` so that a Windows crash dump or a compressed file gets a
clear error instead of garbage decodes. Signatures: Windows crash dumps ("PAGEDUMP"/"PAGEDU64",
QEMU ``win-dmp``), the pre-kdump ``DISKDUMP`` format, and common compressors. Xen ``xl dump-core`` is an ELF file: the ELF sniffer recognises
it by its section names and calls :func:`refuse_xen_dump_core`.
"""

from __future__ import annotations

from xenrs_cli.errors import UnsupportedDumpError

SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"PAGEDU64", "a Windows crash dump (QEMU win-dmp)",
     "dump with QMP dump-guest-memory without a format (ELF) instead"),
    (b"PAGEDUMP", "a 32-bit Windows crash dump (QEMU win-dmp)",
     "dump with QMP dump-guest-memory without a format (ELF) instead"),
    (b"DISKDUMP", "an old-style diskdump file (Red Hat diskdump/netdump)",
     "open it with crash, or take a kdump/ELF dump (makedumpfile, virsh dump --memory-only)"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first: gzip -dk FILE"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first: xz -dk FILE"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first: zstd -d FILE"),
    (b"BZh", "bzip2-compressed", "decompress it first: bzip2 -dk FILE"),
    (b"\x04\x22\x4d\x18", "lz4-compressed", "decompress it first: lz4 -d FILE"),
)


def refuse(buf) -> None:
    """Raise :class:`UnsupportedDumpError` if ``buf`` is one of the known foreign formats."""
    head = bytes(buf[:16])
    for magic, what, todo in SIGNATURES:
        if head.startswith(magic):
            if magic == b"BZh" and not (len(head) > 3 and head[3:4].isdigit()):
                continue
            raise UnsupportedDumpError(f"this is {what}, not a memory dump: {todo} "
                                       "(or force --dump-format raw)")


def refuse_xen_dump_core() -> None:
    """Xen ``xl dump-core`` (tools/libs/guest/xg_core.c): an ELF core whose pages are indexed
    by the ``.xen_p2m``/``.xen_pfn`` sections, not by ``PT_LOAD`` GPAs."""
    raise UnsupportedDumpError(
        "this is a Xen xl dump-core file (ELF with .xen_pages/.xen_p2m sections), which xenrs "
        "does not read: dump the guest with QEMU/libvirt instead (virsh dump --memory-only "
        "--format elf DOMAIN FILE, or QMP dump-guest-memory); crash reads xl dump-core "
        "files (its xendump support)")
