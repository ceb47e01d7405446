"""Option types, decorators and output helpers shared by the commands.

Kept free of rich: JSON lines and CSV go straight to stdout, so ``xenrs decode --format json``
never pays for rich's import.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click

from xenrs_cli.cli import state
from xenrs_cli.numbers import parse_gpa, parse_number


class GpaType(click.ParamType):
    """A guest-physical address: hex or decimal, ``_`` allowed, below 2^52 (``-``: stdin)."""

    name = "GPA"

    def __init__(self, allow_stdin: bool = False) -> None:
        self.allow_stdin = allow_stdin

    def convert(self, value, param, ctx):
        if isinstance(value, int) or (self.allow_stdin and value == "-"):
            return value
        try:
            return parse_gpa(value)
        except ValueError:
            self.fail(f"{value!r} is not a guest-physical address (0x hex or decimal, "
                      "'_' allowed, below 2^52)", param, ctx)


class NumberType(click.ParamType):
    """A non-negative integer below ``limit``: hex or decimal, ``_`` allowed."""

    name = "N"

    def __init__(self, limit: int = 1 << 64, limit_text: str = "2^64 (a u64)") -> None:
        self.limit = limit
        self.limit_text = limit_text

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            number = parse_number(value)
        except ValueError:
            self.fail(f"{value!r} is not a non-negative number (0x hex or decimal, '_' allowed)",
                      param, ctx)
        if number >= self.limit:
            self.fail(f"{value!r} is too large: it must be below {self.limit_text}", param, ctx)
        return number


# Prefixed by the ``xenrs`` group to ``-@BASE`` so that click takes it for an argument.
STDIN_MARK = "\0"


class PathType(click.ParamType):
    """A file name, passed through as typed (``PATH@0xBASE`` and ``-`` included; the dump and
    output modules say what is wrong with it), whose shell completion completes file names."""

    def __init__(self, name: str) -> None:
        self.name = name

    def convert(self, value, param, ctx):
        return value.removeprefix(STDIN_MARK) if isinstance(value, str) else value

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        return [CompletionItem(incomplete, type="file")]


def is_stdin(dump: str) -> bool:
    """``-`` or ``-@0xBASE``: the dump is standard input."""
    return dump == "-" or dump.startswith("-@")


GPA = GpaType()
GPA_OR_STDIN = GpaType(allow_stdin=True)
NUMBER = NumberType()
# A state_entry_time with XEN_RUNSTATE_UPDATE (bit 63) cleared is below 2^63.
ENTRY_TIME = NumberType(1 << 63, "2^63 (state_entry_time without its flag bit)")
DUMP = PathType("DUMP")
FILE = PathType("FILE")


def _set_quiet(ctx, param, value):
    state.set_quiet(value)


def _set_traceback(ctx, param, value):
    state.set_traceback(value)


def common_options(f: Callable) -> Callable:
    """``-q``, ``--traceback`` and ``-o/--output`` on every command."""

    @functools.wraps(f)
    def run(*args, output: str | None = None, **kwargs):
        if output is None or output == "-":
            return f(*args, **kwargs)
        return _into_file(output, f, args, kwargs)

    run = click.option("-o", "--output", type=FILE, default=None,
                       help="Write the results to FILE instead of stdout, atomically: it is "
                            "replaced only if the command succeeds (exit 0 or 1).")(run)
    run = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_set_quiet,
                       is_eager=True, help="Silence warnings on stderr.")(run)
    run = click.option("--traceback", is_flag=True, expose_value=False,
                       callback=_set_traceback, is_eager=True,
                       help="Show the Python traceback of an error (also XENRS_TRACEBACK=1).")(run)
    return run


class _Discard(Exception):
    """A command that ran but failed (exit 2 or more): its output file must not appear."""

    def __init__(self, code: int) -> None:
        self.code = code


def _into_file(path: str, f: Callable, args, kwargs):
    """Run the command with stdout sent to ``path`` through :func:`files.atomic_write`."""
    from xenrs_cli.files import atomic_write

    saved = sys.stdout
    try:
        with atomic_write(path) as out:
            sys.stdout = out
            code = f(*args, **kwargs)
            if isinstance(code, int) and code >= 2:
                raise _Discard(code)
    except _Discard as d:
        return d.code
    finally:
        sys.stdout = saved
    return code


def format_option(choices: tuple[str, ...] = ("table", "json", "csv")) -> Callable:
    """``--format``; the default is ``table`` on a terminal and ``json`` otherwise (SPEC §1)."""
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=None,
        help="Output format (default: table on a terminal, json otherwise). "
             "json is JSON Lines: one object per line.")


def resolve_format(fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    return "table" if sys.stdout.isatty() else "json"


def hypervisor_option(f: Callable) -> Callable:
    """``--hypervisor any|kvm|xen``: whose accounting counts as consistent."""
    return click.option(
        "--hypervisor", type=click.Choice(["any", "kvm", "xen"]), default="any",
        show_default=True,
        help="Whose accounting counts as consistent: kvm keeps state_entry_time equal to the "
             "sum of time[] (exact); xen also leaves it ahead by the vCPU's creation time "
             "(offset); any accepts both.")(f)


def dump_format_option(f: Callable) -> Callable:
    from xenrs_cli.dumps import FORMATS

    return click.option("--dump-format", type=click.Choice(["auto", *FORMATS]), default="auto",
                        show_default=True,
                        help="Format of the dump (default: detected from its content).")(f)


def warn(message: str) -> None:
    """A warning on stderr, unless ``-q``."""
    if not state.quiet():
        click.echo(f"xenrs: warning: {' '.join(message.split())}", err=True)


def emit_json(obj: dict[str, Any]) -> None:
    """One JSON Lines record, flushed so that ``| jq`` and ``xargs -P`` stream."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class CsvEmitter:
    """CSV rows with a header taken from the first record's keys; nested values as JSON."""

    def __init__(self) -> None:
        import csv

        self._writer = csv.writer(sys.stdout, lineterminator="\n")
        self._header: list[str] | None = None

    def emit(self, flat: dict[str, Any]) -> None:
        if self._header is None:
            self._header = list(flat)
            self._writer.writerow(self._header)
        row = []
        for key in self._header:
            v = flat.get(key)
            if v is None:
                row.append("")
            elif isinstance(v, bool):
                row.append("true" if v else "false")
            elif isinstance(v, (dict, list)):
                row.append(json.dumps(v, separators=(",", ":")))
            else:
                row.append(v)
        self._writer.writerow(row)
        sys.stdout.flush()


def read_stdin_gpas(stream: Iterable[str]) -> Iterator[int]:
    """GPAs from standard input: one per line, JSON Lines with a ``gpa`` field, or CSV with a
    ``gpa`` column in its header (so that ``xenrs scan … | xenrs decode DUMP --gpa -`` works in
    every format scan writes); blank lines and ``#`` comments skipped."""
    import csv

    from xenrs_cli.errors import UsageError

    column: int | None = None  # the gpa column, once a CSV header has been seen
    for lineno, line in enumerate(stream, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("{"):
            try:
                text = str(json.loads(text)["gpa"])
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"--gpa -: line {lineno} of stdin is JSON without a \"gpa\" "
                                 "field") from None
        elif "," in text:
            row = next(csv.reader([text]))
            if column is None:
                if "gpa" not in row:
                    raise UsageError(f"--gpa -: line {lineno} of stdin is CSV without a \"gpa\" "
                                     "column in a header line before it")
                column = row.index("gpa")
                continue
            if column >= len(row):
                raise UsageError(f"--gpa -: line {lineno} of stdin has no \"gpa\" column")
            text = row[column]
        try:
            yield parse_gpa(text)
        except ValueError:
            raise UsageError(f"--gpa -: line {lineno} of stdin, {text!r}, is not a "
                             "guest-physical address (0x hex or decimal, below 2^52)") from None


def expand_gpas(gpas: tuple) -> list[int]:
    """The ``--gpa`` values with each ``-`` replaced by the GPAs read from standard input."""
    from xenrs_cli.errors import UsageError

    out: list[int] = []
    for g in gpas:
        if g == "-":
            read = list(read_stdin_gpas(sys.stdin))
            if not read:
                raise UsageError("--gpa -: no GPA on stdin")
            out += read
        else:
            out.append(g)
    return out


# The fields ``decode --strict`` checks: state, the flag, and the sum rule's operands.
_CHECKED = ("state", "state_entry_time", "time[0]", "time[1]", "time[2]", "time[3]")


def unverified(rec, gpa: int) -> bool:
    """``--strict`` with ``--allow-missing``: a record whose checked fields overlap missing bytes
    cannot be vouched for, so it is a finding (exit 1), with a warning saying which fields."""
    missing = [f for f in _CHECKED if f in rec.missing]
    if missing:
        warn(f"GPA 0x{gpa:x}: --strict cannot check {', '.join(missing)} (over bytes not "
             "present in the dump): counted as a finding")
    return bool(missing)


def with_base_hint(e: Exception, dump, spec: str) -> str:
    """The error, with the hint to give a raw image's base where a GPA lies beyond an image
    read from base 0: the likely mistake is a missing ``@0xBASE``, not a missing byte."""
    from xenrs_cli.errors import UnmappedAddressError

    if (isinstance(e, UnmappedAddressError) and dump.format == "raw"
            and dump.details.get("base") == 0 and "@" not in spec
            and e.gpa >= dump.details.get("size", 0)):
        size = dump.details["size"]
        return str(UnmappedAddressError(
            e.gpa, e.size, e.status, e.detail,
            hint=f"this raw image, read from base 0, holds GPAs 0x0-0x{size - 1:x}: if it starts "
                 f"at a nonzero GPA, give its base as {spec}@0xBASE"))
    return str(e)
