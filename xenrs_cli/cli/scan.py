"""``xenrs scan``: runstate areas found without a GPA (SPEC §6)."""

from __future__ import annotations

import sys
import time

import click

from xenrs_cli.cli import state
from xenrs_cli.cli.common import (DUMP, ENTRY_TIME, CsvEmitter, common_options, dump_format_option,
                                  emit_json, format_option, resolve_format, warn)
from xenrs_cli.layouts import LAYOUTS
from xenrs_cli.numbers import parse_number


class GpaRangeType(click.ParamType):
    """``START-END``: guest-physical addresses, END exclusive (as ``info``'s extents)."""

    name = "GPA-GPA"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from xenrs_cli.address_space import GPA_LIMIT

        try:
            lo, hi = (parse_number(v) for v in value.split("-"))
        except ValueError:
            self.fail(f"{value!r} is not a range START-END of guest-physical addresses "
                      "(0x hex or decimal, END exclusive)", param, ctx)
        if hi > GPA_LIMIT or lo >= hi:
            self.fail(f"{value!r}: need START < END <= 2^52 (END is exclusive)", param, ctx)
        return lo, hi


@click.command()
@click.argument("dump", type=DUMP)
@click.option("--layout", type=click.Choice(["auto", *LAYOUTS]), default="auto",
              show_default=True, help="Layout to look for; auto looks for both.")
@click.option("--align", type=click.Choice(["8", "4", "1"]), default=None,
              help="Alignment of a record's start GPA [default: 8 for 64, 4 for compat]; "
                   "1 finds records at any byte.")
@click.option("--min-entry-time", type=ENTRY_TIME, default=1_000_000_000, show_default=True,
              metavar="NS", help="Smallest state_entry_time (ns) a hit may have.")
@click.option("--range", "gpa_range", type=GpaRangeType(), default=None,
              help="Only scan GPAs START..END (END exclusive); a hit lies wholly inside.")
@format_option()
@dump_format_option
@common_options
def scan(dump: str, layout: str, align: str | None, min_entry_time: int,
         gpa_range: tuple[int, int] | None, fmt: str | None, dump_format: str) -> int:
    """Find runstate areas in DUMP without knowing their GPA.

    A hit has state 0..3, a state_entry_time (flag bit cleared) of at least --min-entry-time,
    and state_entry_time equal to the sum of time[]. Records caught mid-update (flag set) are
    hits; the 64-bit padding is not checked. Excluded and absent pages are skipped and counted.

    \b
    Examples:
      xenrs scan vm.elf
      xenrs scan vm.kdump --align 1 --format json | jq -r .gpa
      xenrs scan vm.elf | xenrs decode vm.elf --gpa - --format csv
    """
    from xenrs_cli.dumps import open_dump
    from xenrs_cli.scan import ScanOptions, Scanner, hit_to_json_dict, numpy

    numpy()  # the install hint before any work
    fmt = resolve_format(fmt)
    layouts = tuple(LAYOUTS.values()) if layout == "auto" else (LAYOUTS[layout],)
    start, end = gpa_range if gpa_range else (None, None)
    options = ScanOptions(layouts=layouts, align=int(align) if align else None,
                          min_entry_time=min_entry_time, start=start, end=end)
    t0 = time.perf_counter()
    with open_dump(dump, dump_format) as d:
        out = _sink(fmt, dump)
        with _progress() as progress:
            scanner = Scanner(d.space, options, progress)
            for hit in scanner.hits():
                out.emit(hit, hit_to_json_dict(hit, dump))
        out.close(scanner.stats, d.page_size)
        page_size = d.page_size
    _report(scanner, options, page_size, time.perf_counter() - t0)
    return 0


def _progress():
    """A rich progress bar on stderr when it is a terminal, else a no-op callable."""
    if sys.stderr.isatty() and not state.quiet():
        from xenrs_cli.render.scan import ProgressBar

        return ProgressBar("scanning")
    return _NoProgress()


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def _sink(fmt: str, dump: str):
    if fmt == "json":
        return _JsonSink()
    if fmt == "csv":
        return _CsvSink()
    from xenrs_cli.render.scan import ScanTable

    return ScanTable(dump)


class _JsonSink:
    def emit(self, hit, obj) -> None:
        emit_json(obj)

    def close(self, stats, page_size) -> None:
        pass


class _CsvSink:
    def __init__(self) -> None:
        self._csv = CsvEmitter()

    def emit(self, hit, obj) -> None:
        self._csv.emit(csv_row(obj))

    def close(self, stats, page_size) -> None:
        pass


def csv_row(obj: dict) -> dict:
    """decode's CSV row plus the array fields and the twin (``gpa/layout`` or empty)."""
    from xenrs_cli.cli.decode import csv_row as decode_row

    base = {k: v for k, v in obj.items() if k != "ambiguous_with"}
    row = decode_row(base)
    twin = obj["ambiguous_with"]
    row["ambiguous_with"] = f"{twin['gpa']}/{twin['layout']}" if twin else None
    return row


def _size(n: int) -> str:
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
    return ""


def _note(message: str) -> None:
    """The scan summary on stderr (not a result, so not on stdout), unless ``-q``."""
    if not state.quiet():
        click.echo(f"xenrs: scan: {message}", err=True)


def _report(scanner, options, page_size: int, seconds: float) -> None:
    """The summary, then a warning for each record the alignment, layout or range hid."""
    from xenrs_cli.address_space import Status

    st = scanner.stats
    pages = {s: st.pages(s, page_size) for s in Status}
    _note(f"GPA 0x{st.range_start:x}-0x{st.range_end:x} ({_size(st.range_end - st.range_start)}) "
          f"in {seconds:.2f} s: "
          f"{st.hits} hit(s); pages: {pages[Status.PRESENT]} present, "
          f"{pages[Status.ZERO_FILLED]} zero-filled, {pages[Status.EXCLUDED]} excluded and "
          f"{pages[Status.ABSENT]} absent (both skipped)")
    seen: dict[tuple[int, str, str], list[int]] = {}
    for u in scanner.unreported:
        seen.setdefault((u.gpa, u.layout.name, u.excluded_by), []).append(u.instead_of)
    for (gpa, name, option), instead in seen.items():
        why, hint = {
            "layout": ("excluded by --layout", f"--layout {name}"),
            "align": (f"excluded by --align {options.align_of(LAYOUTS[name])}", "--align 1"),
            "range": ("partly outside --range", "a wider --range"),
            "min-entry-time": ("entry time below --min-entry-time", "a smaller --min-entry-time"),
        }[option]
        shown = ", ".join(f"0x{g:x}" for g in sorted(set(instead)))
        warn(f"GPA 0x{gpa:x}: a {name} record ({why}); its shifted or twin readings at {shown} "
             f"were not reported; use {hint} to see it")
