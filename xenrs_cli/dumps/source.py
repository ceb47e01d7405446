"""The bytes of a dump file, read with ``pread`` rather than through its mapping.

A read-only mapping of a file that another process truncates kills the reader with ``SIGBUS``
on the first touch of a page past the new end (exit 135, no message: Python cannot catch it).
:class:`FileBytes` reads the same bytes with ``os.pread``/``os.preadv`` instead, so a short read
is seen and becomes :class:`DumpChangedError` (one line, exit 3). It slices like ``bytes``
(``len()``, ``[a:b]``, ``[i]``) so the format readers parse headers from it unchanged, and it
reads bulk data into a caller's buffer (:meth:`readinto`) so ``scan`` reuses one buffer for the
whole dump: nothing is mapped, so the resident set does not grow with the bytes read.

:meth:`data_ranges` answers which parts of a range may hold nonzero bytes (``SEEK_DATA``/
``SEEK_HOLE``, as ``cp --sparse`` does), so a bitmap that a header claims is 8 GiB long but the
file holds as a hole is counted in no time.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from xenrs_cli.errors import DumpChangedError

READ_MAX = 1 << 30  # one pread is at most this long (Linux returns at most 0x7ffff000 anyway)


class FileBytes:
    """``len()`` and slices of a file of ``size`` bytes, read with ``pread`` on ``fd``."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.size = fd, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.size)
            if step != 1:
                raise ValueError("FileBytes slices have step 1")
            return self.pread(start, max(0, stop - start))
        if key < 0:
            key += self.size
        if not 0 <= key < self.size:
            raise IndexError("FileBytes index out of range")
        return self.pread(key, 1)[0]

    def pread(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` (the caller keeps inside the file's size)."""
        if size <= 0:
            return b""
        if size > READ_MAX:
            out = bytearray(size)
            self.readinto(offset, memoryview(out))
            return bytes(out)
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            data += self._rest(offset + len(data), size - len(data))
        return data

    def _rest(self, offset: int, size: int) -> bytes:
        """After a short read: the rest, or :class:`DumpChangedError` if the file shrank."""
        out = bytearray()
        while size > 0:
            data = os.pread(self.fd, min(size, READ_MAX), offset)
            if not data:
                raise DumpChangedError(offset)
            out += data
            offset += len(data)
            size -= len(data)
        return bytes(out)

    def readinto(self, offset: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes at ``offset``; :class:`DumpChangedError` if they are not
        all there any more."""
        done, size = 0, len(out)
        while done < size:
            n = os.preadv(self.fd, [out[done:done + READ_MAX]], offset + done)
            if n <= 0:
                raise DumpChangedError(offset + done)
            done += n

    def data_ranges(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """Subranges of ``[lo, hi)`` that may hold nonzero bytes (the rest is holes, zeros).
        Without ``SEEK_DATA`` support the whole range is one."""
        cur = lo
        while cur < hi:
            try:
                start = os.lseek(self.fd, cur, os.SEEK_DATA)
                end = os.lseek(self.fd, start, os.SEEK_HOLE)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data at or after cur
                    return
                yield cur, hi  # EINVAL etc.: the filesystem cannot tell
                return
            if start >= hi:
                return
            yield start, min(end, hi)
            cur = end


def of(mapped) -> FileBytes:
    """The :class:`FileBytes` of an opened dump (:class:`~xenrs_cli.files.MappedFile`)."""
    from xenrs_cli.files import descriptor

    return FileBytes(descriptor(mapped), mapped.size)
