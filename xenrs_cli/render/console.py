"""The rich consoles: results on stdout, progress and warnings on stderr (SPEC §1)."""

from __future__ import annotations

import functools
import os
import sys

from rich.console import Console
from rich.table import Table as _RichTable

# A table sent to a pipe or a file is laid out this wide (rich would use 80 and cut columns);
# COLUMNS overrides it, as it does on a terminal.
PIPE_WIDTH = 160


def _width() -> int | None:
    if os.environ.get("COLUMNS", "").isdigit():
        return int(os.environ["COLUMNS"])
    return None if sys.stdout.isatty() else PIPE_WIDTH


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's own handling exits 1 (a "finding" for xenrs): let the CLI end it as a closed
        # pipe, 141, as it does for JSON Lines and CSV.
        self.quiet = True
        raise BrokenPipeError()


class _Stdout:
    """Whatever ``sys.stdout`` is now (``-o`` swaps it), written in pieces no larger than its
    buffer (8 KiB: 2,048 characters of up to 4 bytes).

    rich writes a whole table in one call. When the reader of a pipe goes away in the middle of
    a write larger than the buffer, the kernel cuts the write short and CPython's buffered
    writer drops the rest without an error, so ``| head`` would see exit 0. Pieces that fit the
    buffer are flushed by the buffer's own loop, which does see the ``EPIPE``."""

    _PIECE = 2048

    def write(self, text: str) -> int:
        for i in range(0, len(text), self._PIECE):
            sys.stdout.write(text[i:i + self._PIECE])
        return len(text)

    def __getattr__(self, name):
        return getattr(sys.stdout, name)


@functools.cache
def stdout() -> Console:
    # rich honours NO_COLOR itself; highlight=False keeps it from colouring numbers at random.
    return _Console(file=_Stdout(), highlight=False, soft_wrap=False, width=_width())


@functools.cache
def stderr() -> Console:
    return Console(stderr=True, highlight=False)


class Table(_RichTable):
    """rich's table, except that a value too long for its column folds onto the next line
    instead of being cut with an ellipsis: on an 80-column terminal a GPA or a count is shown
    whole or not at all. Columns of values that must stay on one line (GPAs, numbers) are made
    ``no_wrap``: rich then narrows the wrapping columns (notes, titles) first."""

    def add_column(self, *args, overflow="fold", **kwargs) -> None:
        super().add_column(*args, overflow=overflow, **kwargs)
