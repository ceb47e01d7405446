"""The only module that opens paths: read-only mappings in, atomic writes out.

Dumps are mapped read-only (``mmap.ACCESS_READ``) and never read whole: a 64 GiB sparse image
costs what a 64 MiB one does. Standard input is mapped directly when it is a regular file and
spooled to an anonymous temporary file otherwise. Output files are written to a temporary file
in the same directory and renamed on success only (``click.File(atomic=True)`` renames even on
failure, so it is not used).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from xenrs_cli.errors import DumpFileError


@dataclass
class MappedFile:
    """A read-only mapping of a dump and what it came from."""

    name: str
    buf: mmap.mmap
    size: int
    _file: BinaryIO | None = None

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self.buf.close()
        if self._file is not None:
            self._file.close()


class MappedFileGroup:
    """Several mapped files that make one dump (raw images joined by commas): one name, their
    total size, and one ``close()`` for all of them."""

    def __init__(self, members: list[MappedFile]) -> None:
        self.members = members
        self.name = ",".join(m.name for m in members)
        self.size = sum(m.size for m in members)

    def close(self) -> None:
        for m in self.members:
            m.close()


def _map_fd(name: str, fd: int, size: int) -> mmap.mmap:
    try:
        return mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as e:
        raise DumpFileError(name, f"cannot map the file: {e}") from None


def open_readonly(path: str) -> MappedFile:
    """Map ``path`` (or ``-``: standard input) read-only."""
    if path == "-":
        return _open_stdin()
    try:
        f = open(path, "rb")  # noqa: SIM115 - kept open for the mapping's life
    except FileNotFoundError:
        raise DumpFileError(path, "no such file") from None
    except IsADirectoryError:
        raise DumpFileError(path, "is a directory, not a dump file") from None
    except PermissionError:
        raise DumpFileError(path, "permission denied") from None
    except OSError as e:
        raise DumpFileError(path, e.strerror or str(e)) from None
    st = os.fstat(f.fileno())
    if stat.S_ISDIR(st.st_mode):
        f.close()
        raise DumpFileError(path, "is a directory, not a dump file")
    if not stat.S_ISREG(st.st_mode):
        return _spool(path, f)
    if st.st_size == 0:
        f.close()
        raise DumpFileError(path, "is empty")
    return MappedFile(path, _map_fd(path, f.fileno(), st.st_size), st.st_size, f)


def _open_stdin() -> MappedFile:
    stdin = sys.stdin.buffer
    try:
        st = os.fstat(stdin.fileno())
    except (OSError, ValueError):
        st = None
    if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > 0:
        return MappedFile("<stdin>", _map_fd("<stdin>", stdin.fileno(), st.st_size), st.st_size)
    return _spool("<stdin>", stdin)


def _spool(name: str, src: BinaryIO) -> MappedFile:
    """Copy a pipe to an unlinked temporary file, then map that."""
    import shutil
    import tempfile

    if src.isatty() if hasattr(src, "isatty") else False:
        raise DumpFileError(name, "is a terminal: pipe a dump into it or give a path")
    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - owned by MappedFile
    shutil.copyfileobj(src, tmp, 1 << 20)
    size = tmp.tell()
    if size == 0:
        tmp.close()
        raise DumpFileError(name, "is empty (nothing was piped in)")
    tmp.flush()
    return MappedFile(name, _map_fd(name, tmp.fileno(), size), size, tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator:
    """Write ``path`` through a temporary file in its directory; rename only on success."""
    import shutil
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".xenrs-", dir=directory)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        if os.path.exists(path):
            shutil.copymode(path, tmp)
        else:  # mkstemp makes 0600; a new output file gets the usual 0666 & ~umask
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
