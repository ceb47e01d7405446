"""An independent writer of LiME and AVML images for the tests: stdlib ``struct`` and cramjam.

Shares nothing with ``xenrs_cli.dumps.lime``. The layout is written out from LiME ``src/lime.h``
(``lime_mem_range_header``) and AVML ``src/image.rs`` (``Header::encode``, ``copy_block``):
a 32-byte header per range (magic, version, start, *inclusive* end, reserved 0), then the bytes
(LiME, version 1) or a snappy framed stream and its u64 length (AVML, version 2; cut into
blocks of at most 16 MiB, all-zero blocks of up to 16 MiB skipped). The framed stream comes
from cramjam's ``snappy.compress`` (the Rust ``snap`` crate's ``FrameEncoder``, which AVML
itself uses), or, with ``uncompressed=True``, from the hand-made framing below (type-1 chunks
with their masked CRC-32C, google/snappy ``framing_format.txt``).
"""

from __future__ import annotations

import struct

MAX_BLOCK = 0x1000 * 0x1000


def header(magic: bytes, version: int, start: int, end_inclusive: int) -> bytes:
    return magic + struct.pack("<IQQQ", version, start, end_inclusive, 0)


def lime(ranges: list[tuple[int, bytes]]) -> bytes:
    """LiME: each (start, data) as one range, in the order given."""
    return b"".join(header(b"EMiL", 1, s, s + len(d) - 1) + d for s, d in ranges)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def framed_uncompressed(data: bytes, chunk: int = 65536) -> bytes:
    out = b"\xff\x06\x00\x00sNaPpY"
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        body = struct.pack("<I", _masked(_crc32c(piece))) + piece
        out += bytes([0x01]) + len(body).to_bytes(3, "little") + body
    return out


def framed(data: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.snappy.compress(data))


def avml(ranges: list[tuple[int, bytes]], *, uncompressed: bool = False,
         skip_zero: bool = True) -> bytes:
    """AVML version 2: each range cut into 16 MiB blocks, each block a header, a framed stream
    and the stream's length; all-zero blocks skipped as AVML's copy_if_nonzero() does."""
    out = b""
    for start, data in ranges:
        for off in range(0, len(data), MAX_BLOCK):
            block = data[off:off + MAX_BLOCK]
            if skip_zero and not any(block):
                continue
            stream = framed_uncompressed(block) if uncompressed else framed(block)
            out += (header(b"AVML", 2, start + off, start + off + len(block) - 1) + stream
                    + struct.pack("<Q", len(stream)))
    return out
