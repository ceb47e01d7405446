"""``xenrs diff``: the runstate areas at the same GPAs in two dumps, compared (SPEC §6)."""

from __future__ import annotations

import click

from xenrs_cli.cli.common import (DUMP, GPA_OR_STDIN, CsvEmitter, common_options,
                                  dump_format_option, emit_json, expand_gpas, format_option,
                                  hypervisor_option, is_stdin, resolve_format)
from xenrs_cli.errors import InputError, UsageError
from xenrs_cli.layouts import LAYOUTS


@click.command()
@click.argument("dump1", type=DUMP)
@click.argument("dump2", type=DUMP)
@click.option("--gpa", "gpas", multiple=True, type=GPA_OR_STDIN,
              help="GPA of an area (repeatable; '-' reads GPAs from stdin, one per line, or "
                   "JSON Lines or CSV with a \"gpa\" field).")
@click.option("--scan", "use_scan", is_flag=True,
              help="Compare every area that 'xenrs scan' finds in DUMP1 (default scan options).")
@click.option("--layout", type=click.Choice(["auto", *LAYOUTS]), default="auto", show_default=True,
              help="Layout of the areas; auto infers it in DUMP1 and uses it for DUMP2 too.")
@format_option()
@click.option("--strict", is_flag=True,
              help="Exit 1 on a regression: time or steal went backwards, flag stuck, "
                   "inconsistent record, accounting drift.")
@hypervisor_option
@dump_format_option
@common_options
def diff(dump1: str, dump2: str, gpas: tuple, use_scan: bool, layout: str, fmt: str | None,
         strict: bool, hypervisor: str, dump_format: str) -> int:
    """Compare the runstate areas at the same GPAs in DUMP1 and DUMP2 (taken in that order).

    One record per GPA: both decodes, the signed deltas (DUMP2 - DUMP1) of state_entry_time,
    time[] and steal, and the verdicts time_went_backwards, steal_went_backwards, flag_stuck,
    state_unchanged, inconsistent, accounting_drift (state_entry_time moved by a different
    amount than the sum of time[]; both hypervisors keep the two in step). A GPA missing from either dump is an error line (exit 3)
    and the others are still compared.

    \b
    Examples:
      xenrs diff before.elf after.elf --gpa 0xc0001ff1
      xenrs diff before.kdump after.kdump --scan --strict --format json | jq .verdicts
    """
    from xenrs_cli.decode import decode_at
    from xenrs_cli.diff import compare, to_json_dict
    from xenrs_cli.dumps import open_dump

    if bool(gpas) == use_scan:
        raise UsageError("give --gpa (one or more) or --scan, not both and not neither")
    if (is_stdin(dump1) or is_stdin(dump2)) and "-" in gpas:
        raise UsageError("a DUMP and --gpa cannot both be '-' (stdin)")
    if is_stdin(dump1) and is_stdin(dump2):
        raise UsageError("DUMP1 and DUMP2 cannot both be '-' (stdin)")
    fmt = resolve_format(fmt)
    with open_dump(dump1, dump_format) as d1, open_dump(dump2, dump_format) as d2:
        targets = (_scan_targets(d1, layout, hypervisor) if use_scan
                   else [(g, layout) for g in expand_gpas(gpas)])
        out = _sink(fmt)
        failed = regression = False
        for gpa, lay in targets:
            try:
                before = _decode(decode_at, d1, dump1, gpa, lay, hypervisor)
                after = _decode(decode_at, d2, dump2, gpa, before.layout.name, hypervisor)
            except InputError as e:
                click.echo(f"xenrs: error: {e}", err=True)
                failed = True
                continue
            rec = compare(before, after)
            regression |= bool(rec.regressions)
            out(rec, to_json_dict(rec, dump1, dump2))
        if hasattr(out, "close"):
            out.close()
    return 3 if failed else 1 if strict and regression else 0


def _decode(decode_at, dump, name: str, gpa: int, layout: str, hypervisor: str):
    from xenrs_cli.errors import UnmappedAddressError

    try:
        return decode_at(dump.space, gpa, layout, hypervisor=hypervisor)
    except UnmappedAddressError as e:
        # Not decode's hint: diff has no --allow-missing (a delta needs both values).
        raise InputError(f"{name}: GPA 0x{e.gpa:x}-0x{e.gpa + e.size - 1:x} is {e.status} in "
                         "this dump, so this GPA cannot be compared") from None
    except InputError as e:
        raise InputError(f"{name}: {e}") from None


def _scan_targets(dump, layout: str, hypervisor: str) -> list[tuple[int, str]]:
    from xenrs_cli.scan import ScanOptions, Scanner

    layouts = tuple(LAYOUTS.values()) if layout == "auto" else (LAYOUTS[layout],)
    hits = Scanner(dump.space, ScanOptions(layouts=layouts, hypervisor=hypervisor)).hits()
    return [(h.gpa, h.layout.name) for h in hits]


def _sink(fmt: str):
    if fmt == "json":
        return lambda rec, obj: emit_json(obj)
    if fmt == "csv":
        csv_out = CsvEmitter()
        return lambda rec, obj: csv_out.emit(csv_row(obj))
    from xenrs_cli.render.diff import render_diff

    return lambda rec, obj: render_diff(rec, obj)


def csv_row(obj: dict) -> dict:
    """One row per GPA: both sides' main fields, the deltas and the verdicts."""
    row = {"gpa": obj["gpa"], "layout": obj["layout"]}
    for side in ("before", "after"):
        s = obj[side]
        row[f"{side}_dump"] = s["dump"]
        row[f"{side}_state"] = s["state"]
        row[f"{side}_state_entry_time"] = s["state_entry_time"]
        row[f"{side}_update_in_progress"] = s["update_in_progress"]
        for k, v in s["time"].items():
            row[f"{side}_{k}"] = v
        row[f"{side}_steal"] = s["steal"]
        row[f"{side}_consistent"] = s["consistent"]
    for k, v in obj["delta"].items():
        row[f"delta_{k}"] = v
    row["elapsed"] = obj["elapsed"]
    row["verdicts"] = " ".join(obj["verdicts"])
    row["regression"] = obj["regression"]
    return row
