"""The rich consoles: results on stdout, progress and warnings on stderr (SPEC §1)."""

from __future__ import annotations

import functools

from rich.console import Console


@functools.cache
def stdout() -> Console:
    # rich honours NO_COLOR itself; highlight=False keeps it from colouring numbers at random.
    return Console(highlight=False, soft_wrap=False)


@functools.cache
def stderr() -> Console:
    return Console(stderr=True, highlight=False)
