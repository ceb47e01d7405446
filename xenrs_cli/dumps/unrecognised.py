"""Inputs that are recognisably not a memory dump xenrs reads, and what to run instead.

Checked before falling back to ``raw`` so that a Windows crash dump or a compressed file gets a
clear error instead of garbage decodes. Signatures: Windows crash dumps ("PAGEDUMP"/"PAGEDU64",
QEMU ``win-dmp``), VMware checkpoint states (crash ``vmware_vmss.h``), the pre-kdump
``DISKDUMP`` format, and common compressors. Xen ``xl dump-core`` is an ELF file that
``xen_core`` reads; the ELF reader, when forced onto one, recognises it by its section names and
calls :func:`refuse_xen_dump_core`. (QEMU migration streams and libvirt save images are read by
``qemu_migration``.)
"""

from __future__ import annotations

from xenrs_cli.errors import UnsupportedDumpError

_NOT_MEMORY = ("give a memory dump: QMP dump-guest-memory, virsh dump --memory-only, "
               "makedumpfile, or a raw image")

# crash vmware_vmss.h CPTDUMP_{OLD_,,PARTIAL_,RESTORED_,NORESTORE_}MAGIC_NUMBER (u32 at 0)
_VMWARE_MAGICS = (0xBED0BED0, 0xBED2BED2, 0xBED3BED3, 0xBAD1BAD1, 0xBAD2BAD2)
_VMWARE = ("convert it and its .vmem with VMware's vmss2core (vmss2core -N6 FILE.vmss FILE.vmem "
           "writes an ELF core, vmss.core, which xenrs reads)")

SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"PAGEDU64", "a Windows crash dump (QEMU win-dmp)",
     "dump with QMP dump-guest-memory without a format (ELF) instead"),
    (b"PAGEDUMP", "a 32-bit Windows crash dump (QEMU win-dmp)",
     "dump with QMP dump-guest-memory without a format (ELF) instead"),
    *((m.to_bytes(4, "little"), "a VMware checkpoint state file (.vmss/.vmsn)", _VMWARE)
      for m in _VMWARE_MAGICS),
    (b"DISKDUMP", "an old-style diskdump file (Red Hat diskdump/netdump)",
     "open it with crash, or take a kdump/ELF dump (makedumpfile, virsh dump --memory-only)"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first: gzip -dk FILE"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first: xz -dk FILE"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first: zstd -d FILE"),
    (b"BZh", "bzip2-compressed", "decompress it first: bzip2 -dk FILE"),
    (b"\x04\x22\x4d\x18", "lz4-compressed", "decompress it first: lz4 -d FILE"),
    (b"QFI\xfb", "a QEMU qcow2 disk image (the guest's disk, not its memory)",
     "take a memory-only dump instead: virsh dump --memory-only --format elf DOMAIN FILE, or "
     "QMP dump-guest-memory"),
    (b"\xff\xd8\xff", "a JPEG image", _NOT_MEMORY),
    (b"\x89PNG\r\n\x1a\n", "a PNG image", _NOT_MEMORY),
    (b"GIF87a", "a GIF image", _NOT_MEMORY),
    (b"GIF89a", "a GIF image", _NOT_MEMORY),
    (b"%PDF-", "a PDF document", _NOT_MEMORY),
    (b"PK\x03\x04", "a zip archive", "unzip it first and give the dump inside"),
)
# A guest's memory from GPA 0 (the real-mode vector table, zeroed pages) holds NUL bytes within
# its first KiB; a file whose beginning is all text is a log, a note, a script.
_TEXT_PROBE = 4096


def refuse(buf) -> None:
    """Raise :class:`UnsupportedDumpError` if ``buf`` is one of the known foreign formats."""
    head = bytes(buf[:16])
    for magic, what, todo in SIGNATURES:
        if head.startswith(magic):
            if magic == b"BZh" and not (len(head) > 3 and head[3:4].isdigit()):
                continue
            raise UnsupportedDumpError(f"this is {what}, not a memory dump: {todo} "
                                       "(or force --dump-format raw)")
    if _is_text(bytes(buf[:_TEXT_PROBE])):
        raise UnsupportedDumpError(f"this is a text file, not a memory dump: {_NOT_MEMORY} "
                                   "(or force --dump-format raw)")


def _is_text(head: bytes) -> bool:
    """UTF-8 text in lines, without NUL or other control bytes than tab, newline, CR and form
    feed (a page of one repeated printable byte is not text: it has no line)."""
    if b"\n" not in head or any(b < 0x20 and b not in b"\t\n\r\f" for b in head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut by the probe's end is text
        return e.start >= len(head) - 3 and e.reason == "unexpected end of data"
    return True


def refuse_xen_dump_core() -> None:
    """Xen ``xl dump-core`` (tools/libs/guest/xg_core.c) read as a plain ELF core: its pages are
    indexed by the ``.xen_p2m``/``.xen_pfn`` sections, not by ``PT_LOAD`` GPAs."""
    raise UnsupportedDumpError(
        "this is a Xen xl dump-core file (ELF with .xen_pages/.xen_p2m sections), whose GPAs are "
        "in its .xen_p2m/.xen_pfn table, not in program headers: read it with --dump-format "
        "xen-core (or auto)")
