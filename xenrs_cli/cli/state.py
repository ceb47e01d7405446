"""Per-invocation settings shared by every command (``-q``, ``--traceback``)."""

from __future__ import annotations

import os

_quiet = False
_traceback = False


def reset() -> None:
    global _quiet, _traceback
    _quiet = False
    _traceback = False


def set_quiet(value: bool) -> None:
    global _quiet
    _quiet = _quiet or value


def set_traceback(value: bool) -> None:
    global _traceback
    _traceback = _traceback or value


def quiet() -> bool:
    return _quiet


def traceback_wanted() -> bool:
    return _traceback or os.environ.get("XENRS_TRACEBACK", "") not in ("", "0")
