"""How many cores this process may keep busy.

The CPUs it may run on (``sched_getaffinity``: a ``taskset`` or a container's cpuset, not the
machine's count), unless a scan that runs in several processes has given each of them one
(:func:`shared`): then a reader decompresses on its own thread only, rather than every process
starting a thread per core.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

_SHARE: list[int | None] = [None]


def available() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def for_readers() -> int:
    """The threads a reader may decompress on."""
    return _SHARE[0] or available()


@contextmanager
def shared(per_process: int) -> Iterator[None]:
    """Within the block, and in processes forked within it, readers use ``per_process``."""
    saved = _SHARE[0]
    _SHARE[0] = per_process
    try:
        yield
    finally:
        _SHARE[0] = saved
