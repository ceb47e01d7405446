"""``xenrs scan``: runstate areas found without a GPA (SPEC §6)."""

from __future__ import annotations

import sys
import time

import click

from xenrs_cli.cli import state
from xenrs_cli.cli.common import (DUMP, ENTRY_TIME, CsvEmitter, common_options,
                                  dump_format_option, emit_json, format_option, hypervisor_option,
                                  resolve_format, warn)
from xenrs_cli.errors import UsageError
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
@hypervisor_option
@click.option("--loose", is_flag=True,
              help="Report every place the state, entry-time and accounting rules accept, "
                   "also what no hypervisor writes (nonzero padding, packed integers, text, "
                   "crowded pages, a clock far ahead).")
@click.option("--later", "later", type=DUMP, metavar="DUMP2", default=None,
              help="A later dump of the same guest: each hit also says whether its area "
                   "advanced, stayed unchanged, changed otherwise or is missing there.")
@format_option()
@dump_format_option
@common_options
def scan(dump: str, layout: str, align: str | None, min_entry_time: int,
         gpa_range: tuple[int, int] | None, hypervisor: str, loose: bool, later: str | None,
         fmt: str | None, dump_format: str) -> int:
    """Find runstate areas in DUMP without knowing their GPA.

    A hit has state 0..3, a state_entry_time (flag bit cleared) of at least --min-entry-time,
    and times that add up as --hypervisor accounts them: equal to state_entry_time (KVM, Xen's
    idle vCPUs) or behind it by the vCPU's creation time (Xen). Unless --loose, it must also
    be something a hypervisor writes: zero 64-bit padding, times a vCPU's life produces, counters
    with the texture of nanosecond sums, not a page crowded with look-alikes, not far ahead of
    the dump's clock. Records caught mid-update (flag set) are hits. Excluded and absent pages
    are skipped and counted; the summary on stderr counts what each rule rejected.

    \b
    Examples:
      xenrs scan vm.elf
      xenrs scan vm.elf --later vm-10s-later.elf --format json | jq 'select(.later == "advanced")'
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
                          min_entry_time=min_entry_time, start=start, end=end,
                          hypervisor=hypervisor, loose=loose)
    if later is not None and "-" in (dump, later):
        raise UsageError("scan --later needs two files: neither DUMP nor DUMP2 can be '-'")
    t0 = time.perf_counter()
    with open_dump(dump, dump_format) as d, _open_later(later, dump_format) as d2:
        out = _sink(fmt, dump)
        verdicts: dict[str, int] = {}
        with _progress() as progress:
            scanner = Scanner(d.space, options, progress)
            for hit in scanner.hits():
                obj = hit_to_json_dict(hit, dump)
                if d2 is not None:
                    obj["later"], obj["delta"] = _later(hit, d2, hypervisor)
                    verdicts[obj["later"]] = verdicts.get(obj["later"], 0) + 1
                out.emit(hit, obj)
        out.close(scanner.stats, d.page_size)
        page_size = d.page_size
    _report(scanner, options, page_size, time.perf_counter() - t0, verdicts if later else None)
    return 0


def _open_later(later: str | None, dump_format: str):
    from contextlib import nullcontext

    from xenrs_cli.dumps import open_dump

    return nullcontext() if later is None else open_dump(later, dump_format)


def _later(hit, d2, hypervisor: str):
    """``(verdict, delta)`` of the hit's area in the later dump (SPEC §6 ``--later``)."""
    from xenrs_cli.decode import decode_at
    from xenrs_cli.diff import later_verdict
    from xenrs_cli.errors import InputError

    try:
        after = decode_at(d2.space, hit.gpa, hit.layout.name, hypervisor=hypervisor)
    except InputError:  # not present in the later dump
        after = None
    return later_verdict(hit.decoded, after)


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

    base = {k: v for k, v in obj.items() if k not in ("ambiguous_with", "later", "delta")}
    row = decode_row(base)
    twin = obj["ambiguous_with"]
    row["ambiguous_with"] = f"{twin['gpa']}/{twin['layout']}" if twin else None
    if "later" in obj:
        row["later"] = obj["later"]
        for k, v in (obj["delta"] or {}).items():
            row[f"delta_{k}"] = v
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


def _report(scanner, options, page_size: int, seconds: float,
            later: dict[str, int] | None) -> None:
    """The summary, what the rules rejected, and the records the options hid: each a line
    with a count and a few examples, never a line per candidate (SPEC §6)."""
    from xenrs_cli.address_space import Status

    st = scanner.stats
    pages = {s: st.pages(s, page_size) for s in Status}
    _note(f"GPA 0x{st.range_start:x}-0x{st.range_end:x} ({_size(st.range_end - st.range_start)}) "
          f"in {seconds:.2f} s: "
          f"{st.hits} hit(s); pages: {pages[Status.PRESENT]} present, "
          f"{pages[Status.ZERO_FILLED]} zero-filled, {pages[Status.EXCLUDED]} excluded and "
          f"{pages[Status.ABSENT]} absent (both skipped)")
    if later is not None:
        _note("later dump: " + (", ".join(f"{n} {v}" for v, n in sorted(later.items()))
                                or "no hit to compare"))
    if st.rejected:
        total = sum(st.rejected.values())
        parts = ", ".join(f"{rule} {n:,}" for rule, n in
                          sorted(st.rejected.items(), key=lambda kv: -kv[1]))
        _note(f"{total:,} look-alike(s) no hypervisor writes were left out ({parts}); "
              "--loose shows them")
    if scanner.clock is not None:
        _note(f"clock rule: latest exact record at {scanner.clock / 1e9:,.3f} s")
    if scanner.clock_skipped:
        warn("too many hits to hold for the clock rule; it was not applied")
    grouped: dict[str, list] = {}
    for u in scanner.unreported:
        grouped.setdefault(u.excluded_by, []).append(u)
    for option, items in grouped.items():
        records = sorted({(u.gpa, u.layout.name) for u in items})
        why, hint = {
            "layout": ("excluded by --layout", "--layout auto"),
            "align": ("at a start --align excludes", "--align 1"),
            "range": ("partly outside --range", "a wider --range"),
            "min-entry-time": ("with an entry time below --min-entry-time",
                               "a smaller --min-entry-time"),
        }[option]
        shown = ", ".join(f"0x{g:x} ({name})" for g, name in records[:EXAMPLES])
        more = f" and {len(records) - EXAMPLES} more" if len(records) > EXAMPLES else ""
        warn(f"{len(records)} record(s) {why} were not reported, only shifted or twin readings "
             f"of them were seen: {shown}{more}; use {hint} to see them")


EXAMPLES = 3  # records named per summary line
