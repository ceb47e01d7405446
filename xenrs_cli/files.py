"""The only module that opens paths: read-only mappings in, atomic writes out.

Dumps are mapped read-only (``mmap.ACCESS_READ``) and never read whole: a 64 GiB sparse image
costs what a 64 MiB one does. A block device is mapped as a file is. A pipe (standard input, a
FIFO) is spooled to an anonymous temporary file, with a progress line on a terminal, and mapped
from there; the spool stops with a clear error before the temporary directory fills up.
Character devices (``/dev/zero``, ``/dev/mem``, a terminal) and files without a size
(``/proc``) are refused: they are not dumps, and ``/dev/zero`` would be spooled forever.

Output files are written to a temporary file in the same directory and renamed on success only
(``click.File(atomic=True)`` renames even on failure, so it is not used). A symlink is followed
(its target is replaced, the link stays); a FIFO, a character device or anything else that is
not a regular file is written into as it is, since renaming over it would replace it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from xenrs_cli.errors import DumpFileError, UsageError

# No GPA reaches 2^52 (SPEC's limit): a longer stream cannot be a dump xenrs could address.
SPOOL_LIMIT = 1 << 52
_CHUNK = 1 << 20
# Errors that mean "the file system (or a limit on file sizes) has no room for more".
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# Temporary output files of atomic_write, by path, until renamed or removed.
TEMPORARIES: set[str] = set()


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


def descriptor(mapped: MappedFile) -> int:
    """The file descriptor under a mapping, for readers that ``pread`` instead of touching the
    mapping (a mapping of a file another process truncates kills the reader with ``SIGBUS``)."""
    if mapped._file is not None:
        return mapped._file.fileno()
    return sys.stdin.buffer.fileno()  # _open_stdin() maps a regular file on stdin in place


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
    try:
        return _open_file(path, f)
    except BaseException:
        f.close()
        raise


def _open_file(name: str, f: BinaryIO) -> MappedFile:
    st = os.fstat(f.fileno())
    if stat.S_ISDIR(st.st_mode):
        raise DumpFileError(name, "is a directory, not a dump file")
    if stat.S_ISBLK(st.st_mode):
        # st_size is 0 for a block device; its size is where its end is
        size = os.lseek(f.fileno(), 0, os.SEEK_END)
        if size == 0:
            raise DumpFileError(name, "is an empty block device")
        return MappedFile(name, _map_fd(name, f.fileno(), size), size, f)
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return _spool(name, f)
    if stat.S_ISCHR(st.st_mode):
        raise DumpFileError(name, _chardev(f))
    if not stat.S_ISREG(st.st_mode):
        raise DumpFileError(name, "is not a regular file, a block device or a pipe")
    if st.st_size == 0:
        if f.read(1):  # /proc, /sys: the kernel makes the content up as it is read
            raise DumpFileError(name, "has no size (a /proc or /sys file?) and is not a dump: "
                                      "copy a memory dump to a regular file and give its path")
        raise DumpFileError(name, "is empty")
    return MappedFile(name, _map_fd(name, f.fileno(), st.st_size), st.st_size, f)


def _chardev(f: BinaryIO) -> str:
    if f.isatty():
        return "is a terminal: pipe a dump into it or give a path"
    return ("is a character device, not a dump file (/dev/zero and /dev/mem never end): copy "
            "the guest's memory to a file (QMP dump-guest-memory, virsh dump --memory-only) "
            "and give its path")


def _open_stdin() -> MappedFile:
    stdin = sys.stdin.buffer
    try:
        st = os.fstat(stdin.fileno())
    except (OSError, ValueError):  # not a real descriptor (an embedding caller's stream)
        return _spool("<stdin>", stdin)
    if stat.S_ISREG(st.st_mode) and st.st_size > 0:
        return MappedFile("<stdin>", _map_fd("<stdin>", stdin.fileno(), st.st_size), st.st_size)
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
        # ``- < file``: the same rules as the file given by name (a dup, so stdin stays open)
        f = os.fdopen(os.dup(stdin.fileno()), "rb")
        try:
            return _open_file("<stdin>", f)
        except BaseException:
            f.close()
            raise
    return _spool("<stdin>", stdin)


def _spool(name: str, src: BinaryIO) -> MappedFile:
    """Copy a pipe to an unlinked temporary file, then map that."""
    import tempfile

    tmp = tempfile.TemporaryFile()  # noqa: SIM115 - owned by MappedFile
    try:
        size = _copy(name, src, tmp)
        if size == 0:
            raise DumpFileError(name, "is empty (nothing was piped in)")
        tmp.flush()
        return MappedFile(name, _map_fd(name, tmp.fileno(), size), size, tmp)
    except OSError as e:
        _discard(tmp)
        if e.errno in _NO_ROOM:
            raise DumpFileError(name, f"the temporary directory {tempfile.gettempdir()} is full "
                                      "(or a file size limit was reached) while spooling the "
                                      "pipe: save the dump to a file and give its path, or set "
                                      "TMPDIR to a larger file system") from None
        raise DumpFileError(name, f"cannot spool the pipe to a temporary file: "
                                  f"{e.strerror or e}") from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: BinaryIO) -> None:
    # Closing flushes what the buffer still holds, which fails again on a full disk; the file
    # is closed (and, being unlinked, gone) all the same.
    with contextlib.suppress(OSError):
        tmp.close()


def _copy(name: str, src: BinaryIO, tmp: BinaryIO) -> int:
    """Copy ``src`` to ``tmp`` up to :data:`SPOOL_LIMIT`, with a progress line on a terminal."""
    progress = sys.stderr.isatty()
    size = 0
    shown = 0
    for chunk in _chunks(src):
        _check_room(name, tmp)  # one fstatvfs per MiB
        tmp.write(chunk)
        size += len(chunk)
        if size > SPOOL_LIMIT:
            raise DumpFileError(name, "is longer than 2^52 bytes, the guest-physical address "
                                      "space: not a dump")
        if progress and size - shown >= 64 * _CHUNK:
            shown = size
            sys.stderr.write(f"\rxenrs: spooling {name} to a temporary file: "
                             f"{size / (1 << 20):,.0f} MiB")
            sys.stderr.flush()
    if shown:
        sys.stderr.write("\n")
    return size


def _check_room(name: str, tmp: BinaryIO) -> None:
    """Stop before the temporary directory's file system is full: keep 5 % of it (at most
    1 GiB) free for everything else on the machine."""
    import tempfile

    st = os.fstatvfs(tmp.fileno())
    reserve = min(1 << 30, st.f_blocks * st.f_frsize // 20)
    if st.f_bavail * st.f_frsize - _CHUNK < reserve:
        raise DumpFileError(name, f"spooling the pipe would fill the temporary directory "
                                  f"{tempfile.gettempdir()} (5 % of it, at most 1 GiB, is left "
                                  "free): save the dump to a file and give its path, or set "
                                  "TMPDIR to a larger file system")


def _chunks(src: BinaryIO) -> Iterator[bytes]:
    """The pipe's bytes as they come. A pipe with a descriptor is waited on with a timeout, not
    in a blocking read: a SIGTERM that the kernel hands to another thread (numpy's) does not
    interrupt this thread's read, and Python runs the handler only when this thread runs."""
    import select

    try:
        fd = src.fileno()
    except (OSError, ValueError, AttributeError):  # an in-memory stream (tests, embedding)
        while chunk := src.read(_CHUNK):
            yield chunk
        return
    while True:
        ready, _, _ = select.select([fd], [], [], 0.25)
        if not ready:
            continue
        chunk = os.read(fd, _CHUNK)
        if not chunk:
            return
        yield chunk


class OutputFileError(UsageError):
    """``-o FILE`` cannot be created or written (exit 2); names the file and the reason."""

    def __init__(self, path: str, e: OSError | str) -> None:
        why = e if isinstance(e, str) else (e.strerror or str(e))
        super().__init__(f"--output {path}: {why}")
        self.path = path


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator:
    """Write ``path`` through a temporary file in its directory; rename only on success.

    A symlink is followed; a FIFO or device is written into directly (nothing to rename).
    Failures to create or write the file are :class:`OutputFileError`.
    """
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise OutputFileError(path, e) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputFileError(path, "is a directory")
    if st is not None and not stat.S_ISREG(st.st_mode):
        with _guarded(path, lambda: open(target, mode)) as f:
            yield _Guard(path, f)
        return
    yield from _atomic(path, target, mode)


@contextlib.contextmanager
def _guarded(path: str, opener) -> Iterator:
    try:
        f = opener()
    except OSError as e:
        raise OutputFileError(path, e) from None
    try:
        yield f
    finally:
        try:
            f.close()
        except OSError as e:
            raise OutputFileError(path, e) from None


def _atomic(path: str, target: str, mode: str) -> Iterator:
    import shutil

    # The name is registered (for remove_temporaries) before the file exists, so that a signal
    # arriving just after it is created cannot leave it behind. (Blocking signals around
    # ``mkstemp`` instead would send a SIGTERM to another thread, numpy's, and leave the main
    # thread asleep in a read.)
    import secrets

    tmp = None
    try:
        while True:
            tmp = os.path.join(os.path.dirname(target), f".xenrs-{secrets.token_hex(8)}")
            TEMPORARIES.add(tmp)
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:  # someone else's: not ours to remove
                TEMPORARIES.discard(tmp)
                tmp = None
            except OSError as e:
                TEMPORARIES.discard(tmp)
                tmp = None
                raise OutputFileError(path, e) from None
        with _guarded(path, lambda: os.fdopen(fd, mode)) as f:
            yield _Guard(path, f)
        try:
            if os.path.exists(target):
                shutil.copymode(target, tmp)
            else:  # mkstemp makes 0600; a new output file gets the usual 0666 & ~umask
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except OSError as e:
            raise OutputFileError(path, e) from None
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    finally:
        TEMPORARIES.discard(tmp)


def remove_temporaries() -> None:
    """Remove the temporary output files not renamed yet: what a SIGTERM handler calls before
    the process exits at once (an exception raised from a handler can be swallowed by C code
    that clears errors, numpy's import for one, so the handler does not rely on unwinding)."""
    for tmp in list(TEMPORARIES):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class _Guard:
    """The output stream, with its write errors (disk full, I/O error) reported as the output
    file's, not as a bug of the command that happened to be writing."""

    def __init__(self, path: str, f) -> None:
        self._path = path
        self._f = f

    def write(self, text):
        try:
            return self._f.write(text)
        except OSError as e:
            raise OutputFileError(self._path, e) from None

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise OutputFileError(self._path, e) from None

    def __getattr__(self, name):
        return getattr(self._f, name)
