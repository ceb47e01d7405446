"""The one exception root of xenrs and the subclasses SPEC §1's exit codes need.

Every error the core raises for bad input is a :class:`XenrsError`; its ``exit_code`` is the
documented exit code, and its message is the one line the CLI prints after ``xenrs: error:``.
The subclasses carry the address or file offset they concern, so callers (and tests) never parse
messages.
"""

from __future__ import annotations


class XenrsError(Exception):
    """Root of every error xenrs reports to a user (never a bug)."""

    exit_code = 3


class UsageError(XenrsError):
    """A bad option value or combination (exit 2)."""

    exit_code = 2


class InputError(XenrsError):
    """Unreadable, unsupported or corrupt input, or bytes that are not in the dump (exit 3)."""

    exit_code = 3


class DumpFileError(InputError):
    """The dump file itself cannot be opened or used (missing, directory, empty, not seekable)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class BadDumpError(InputError):
    """A dump whose structure is corrupt or truncated, at a file offset."""

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        where = f" at file offset 0x{offset:x}" if offset is not None else ""
        super().__init__(f"{message}{where}")
        self.offset = offset


class UnsupportedDumpError(InputError):
    """A recognisable input that xenrs cannot read; the message names what would work."""


class MissingCodecError(InputError):
    """A kdump page compressed with a codec whose Python package is not installed."""

    def __init__(self, codec: str, install: str) -> None:
        super().__init__(f"pages are {codec}-compressed and the {codec} codec is not installed: "
                         f"run {install}")
        self.codec = codec
        self.install = install


class UnmappedAddressError(InputError):
    """Bytes that a read needs are not present in the dump."""

    def __init__(self, gpa: int, size: int, status: str, detail: str = "",
                 hint: str = "use --allow-missing to decode what is there") -> None:
        end = gpa + size - 1
        tail = f" ({detail})" if detail else ""
        super().__init__(f"GPA 0x{gpa:x}-0x{end:x} is {status} in the dump{tail}; {hint}")
        self.gpa = gpa
        self.size = size
        self.status = status
        self.detail = detail


class DumpChangedError(BadDumpError):
    """The dump shrank (or vanished) while xenrs was reading it: another process truncated or
    rewrote it. Read through ``pread`` (never by touching a mapping, which would be killed by
    ``SIGBUS``), a short read is seen and ends here."""

    def __init__(self, offset: int) -> None:
        super().__init__("the dump changed while being read (another process truncated or "
                         "rewrote it)", offset=offset)


class PageWalkError(InputError):
    """A guest virtual address that the page tables do not translate (SPEC §8): the walk stopped
    at ``level`` (``PML4E``, ``PDE``, ...) on the entry at guest-physical ``entry_gpa``."""

    def __init__(self, va: int, level: str, entry_gpa: int, reason: str, *,
                 cr3: int | None = None, entry: int | None = None) -> None:
        value = f" = 0x{entry:x}" if entry is not None else ""
        root = f" (CR3 0x{cr3:x})" if cr3 is not None else ""
        super().__init__(f"VA 0x{va:x}: {level} at GPA 0x{entry_gpa:x}{value} {reason}{root}")
        self.va = va
        self.level = level
        self.entry_gpa = entry_gpa
        self.entry = entry
        self.cr3 = cr3
        self.reason = reason


class PageNotPresentError(PageWalkError):
    """The entry's present bit (bit 0) is clear: the VA is not mapped by these tables."""


class BadVirtualAddressError(InputError):
    """A virtual address that the paging mode cannot hold (not canonical, above 4 GiB)."""

    def __init__(self, va: int, reason: str) -> None:
        super().__init__(f"VA 0x{va:x} {reason}")
        self.va = va
