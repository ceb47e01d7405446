"""Raw images (QEMU ``pmemsave``, ``/dev/mem`` copies): file offset = GPA − base."""

from __future__ import annotations

from xenrs_cli.address_space import GPA_LIMIT, AddressSpace, LinearSegment
from xenrs_cli.dumps import Dump, source
from xenrs_cli.errors import UsageError
from xenrs_cli.files import MappedFile


def sniff(buf) -> bool:
    return True  # any bytes are a raw image; tried last


def load(mapped: MappedFile, base: int = 0) -> Dump:
    if base % 4096:
        raise UsageError(f"{mapped.name}: base 0x{base:x} is not 4 KiB aligned")
    if base + mapped.size > GPA_LIMIT:
        raise UsageError(f"{mapped.name}: base 0x{base:x} puts the image beyond 2^52")
    seg = LinearSegment(base, mapped.size, source.of(mapped), 0, "raw image")
    return Dump(mapped.name, "raw", AddressSpace([seg]), mapped, None,
                {"base": base, "size": mapped.size})
