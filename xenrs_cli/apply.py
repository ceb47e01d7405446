"""Replaying a trace on bytes: the struct after each write, the final bytes, an ``xxd -r`` patch.

Pure functions over a trace of :mod:`xenrs_cli.trace` records. The struct image is the
``layout``-sized bytes at the area's GPA; a write is placed by its GPA, and one that falls
outside the image is a caller's bug (``ValueError``), never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from xenrs_cli.trace import Record, Write

XXD_COLUMNS = 16  # bytes per line, as xxd prints them


def _writes(records: Iterable[Record]) -> list[Write]:
    return [r for r in records if isinstance(r, Write)]


def _place(image: bytearray, gpa: int, w: Write) -> None:
    start = w.gpa - gpa
    if start < 0 or start + w.len > len(image):
        raise ValueError(f"write of {w.len} bytes at 0x{w.gpa:x} is outside the "
                         f"{len(image)}-byte area at 0x{gpa:x}")
    image[start:start + w.len] = w.data


def apply(before: bytes, gpa: int, records: Iterable[Record]) -> bytes:
    """The area's bytes once every write of ``records`` has landed, in trace order."""
    image = bytearray(before)
    for w in _writes(records):
        _place(image, gpa, w)
    return bytes(image)


def images(before: bytes, gpa: int, records: Iterable[Record]) -> list[bytes]:
    """The area's bytes after each write (one image per :class:`Write`, in trace order)."""
    image = bytearray(before)
    out = []
    for w in _writes(records):
        _place(image, gpa, w)
        out.append(bytes(image))
    return out


def written_mask(size: int, gpa: int, records: Iterable[Record]) -> list[bool]:
    """For each byte of the area, whether any write touches it."""
    mask = [False] * size
    for w in _writes(records):
        for i in range(w.gpa - gpa, w.gpa - gpa + w.len):
            mask[i] = True
    return mask


def patch_runs(gpa: int, final: bytes, records: Sequence[Record]) -> list[tuple[int, bytes]]:
    """Maximal runs of written bytes with their final values, as ``(gpa, bytes)``.

    Bytes no write touches (KVM's fast path leaves the 64-bit padding alone) are not in the
    patch, so replaying it keeps whatever the dump has there.
    """
    mask = written_mask(len(final), gpa, records)
    runs: list[tuple[int, bytes]] = []
    i = 0
    while i < len(mask):
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < len(mask) and mask[j]:
            j += 1
        runs.append((gpa + i, final[i:j]))
        i = j
    return runs


def xxd_patch(runs: Iterable[tuple[int, bytes]]) -> str:
    """``xxd`` plain-dump lines (``ADDR: hhhh hhhh ...``, no ASCII column) that ``xxd -r``
    writes at file offset ADDR; a line never spans two runs."""
    lines = []
    for start, data in runs:
        for pos in range(0, len(data), XXD_COLUMNS):
            chunk = data[pos:pos + XXD_COLUMNS].hex()
            groups = " ".join(chunk[k:k + 4] for k in range(0, len(chunk), 4))
            lines.append(f"{start + pos:08x}: {groups}")
    return "".join(line + "\n" for line in lines)
