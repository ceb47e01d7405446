"""Page decompression for kdump files: zlib from the standard library, the rest from the extra.

makedumpfile ``diskdump_mod.h`` names the codecs by ``page_desc.flags`` bit
(``DUMP_DH_COMPRESSED_*``: zlib 0x1, lzo 0x2, snappy 0x4, zstd 0x20); a page with none of them
is stored as-is. The libraries are imported on first use only, so ``xenrs decode`` on a raw or
ELF dump never loads them, and a missing one is a :class:`MissingCodecError` (exit 3) naming the
install command. Each decompressor gets the compressed bytes and the page size and returns the
page (any other length is a corrupt page), as makedumpfile checks ``retlen != page_size``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from xenrs_cli.errors import MissingCodecError

ZLIB, LZO, SNAPPY, ZSTD = 0x1, 0x2, 0x4, 0x20
NAMES = {ZLIB: "zlib", LZO: "lzo", SNAPPY: "snappy", ZSTD: "zstd"}
COMPRESSED = ZLIB | LZO | SNAPPY | ZSTD
INSTALL = "pip install 'xenrs[kdump]'"

Decompressor = Callable[[bytes, int], bytes]


def names(flags: int) -> list[str]:
    """Codec names of the compression bits in ``flags`` (a header ``status`` or page flags)."""
    return [name for bit, name in NAMES.items() if flags & bit]


def codec_of(flags: int) -> int:
    """The one codec bit of a page's flags (0: stored as-is), in makedumpfile's test order."""
    for bit in (ZLIB, LZO, SNAPPY, ZSTD):
        if flags & bit:
            return bit
    return 0


@cache
def decompressor(codec: int) -> Decompressor:
    """The decompressor of one codec bit; raises :class:`MissingCodecError` if not installed.

    Each writes at most one page: a page of a few KiB can claim gigabytes (a zstd frame of RLE
    blocks, a zlib stream of zeros, a snappy length prefix), so the output is bounded before
    anything is allocated, as makedumpfile bounds it by passing a one-page buffer.
    """
    if codec == ZLIB:
        import zlib

        def inflate(data, size: int) -> bytes:
            d = zlib.decompressobj()
            # max_length: never more than a page and a byte out (the byte lets inflate reach
            # the stream's end after a whole page; a longer stream stops there and is refused)
            page = d.decompress(data, size + 1)
            if len(page) > size or not d.eof:
                raise ValueError("the zlib stream does not end within one page")
            return page

        return inflate
    if codec == LZO:
        try:
            import lzallright
        except ImportError:
            raise MissingCodecError("lzo", INSTALL) from None
        # Raw lzo1x_1 output without a header (QEMU/makedumpfile lzo1x_1_compress). LZO cannot
        # bound its output, but it expands at most ~255x (a length byte of zeros per 255) and
        # the caller allows one page in: 64 MiB at the largest block size.
        lzo = lzallright.LZOCompressor()
        return lambda data, size: lzo.decompress(data, output_size_hint=size)
    if codec in (SNAPPY, ZSTD):
        try:
            import cramjam
        except ImportError:
            raise MissingCodecError(NAMES[codec], INSTALL) from None
        # Both write into a buffer of one page and fail rather than grow it (snappy checks the
        # block's length prefix first; zstd stops when the buffer is full).
        into = (cramjam.snappy.decompress_raw_into if codec == SNAPPY  # a raw snappy block
                else cramjam.zstd.decompress_into)

        def bounded(data, size: int) -> bytes:
            out = bytearray(size)
            n = into(bytes(data), out)
            if n != size:
                raise ValueError(f"the page decompresses to {n} bytes, not {size}")
            return bytes(out)

        return bounded
    raise ValueError(f"no codec for flags 0x{codec:x}")


def page_decoder(codec: int) -> Decompressor:
    """``(data, size) -> page`` for one codec, raising ``ValueError`` when the data does not
    decompress to exactly ``size`` bytes (looked up once for a batch of pages)."""
    fn, name = decompressor(codec), NAMES[codec]

    def decode(data, size: int) -> bytes:
        try:
            page = fn(data, size)
        except Exception as e:  # each library has its own error type; all mean a corrupt page
            raise ValueError(f"{name} decompression failed: {e}") from None
        if len(page) != size:
            raise ValueError(f"{name} page decompresses to {len(page)} bytes, not {size}")
        return page

    return decode


def decompress(codec: int, data: bytes, size: int) -> bytes:
    """The page, or ``ValueError`` when the data does not decompress to ``size`` bytes."""
    return page_decoder(codec)(data, size)
