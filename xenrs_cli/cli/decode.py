"""``xenrs decode``: the runstate area at each GPA of a dump (SPEC §3)."""

from __future__ import annotations

import click

from xenrs_cli.cli.common import (DUMP, FILE, GPA_OR_STDIN, NUMBER, CsvEmitter, common_options,
                                  dump_format_option, emit_json, expand_gpas, format_option,
                                  hypervisor_option, is_stdin, resolve_format, unverified, warn,
                                  with_base_hint)
from xenrs_cli.cli.vaddr import VA, decode_jobs, paging_from, paging_options
from xenrs_cli.errors import InputError, UsageError
from xenrs_cli.layouts import LAYOUTS


@click.command()
@click.argument("dump", type=DUMP)
@click.option("--gpa", "gpas", multiple=True, type=GPA_OR_STDIN,
              help="Guest-physical address of the area (repeatable; '-' reads GPAs from stdin, "
                   "one per line, or JSON Lines or CSV with a \"gpa\" field).")
@click.option("--layout", type=click.Choice(["auto", *LAYOUTS]), default="auto", show_default=True,
              help="64-bit (48 bytes) or compat (44 bytes, 32-bit guest); auto infers it.")
@click.option("--va", "vas", multiple=True, type=VA,
              help="Guest virtual address of the area, translated through the guest's page "
                   "tables (repeatable).")
@paging_options
@click.option("--vcpus", is_flag=True,
              help="Decode every vCPU's area: from --symbols (Linux per-CPU xen_runstate), or "
                   "where the dump records the registered areas.")
@click.option("--symbols", type=FILE, default=None,
              help="--vcpus: the guest kernel's System.map or /proc/kallsyms text.")
@click.option("--kaslr-offset", type=NUMBER, default=None, metavar="OFFSET",
              help="--symbols: KASLR offset [default: from the dump's VMCOREINFO, else 0].")
@click.option("--cpus", type=int, default=None, metavar="N",
              help="--vcpus: CPU count when the symbols lack nr_cpu_ids [default: the dump's].")
@format_option()
@click.option("--strict", is_flag=True,
              help="Exit 1 if a record is mid-update, has an unknown state, or has an "
                   "accounting the --hypervisor cannot leave, or (with --allow-missing) cannot "
                   "be checked for these.")
@hypervisor_option
@click.option("--allow-missing", is_flag=True,
              help="Decode what is in the dump; fields over missing bytes are null.")
@click.option("--hex", "show_hex", is_flag=True,
              help="Table: also show the struct bytes, fields coloured, page boundary marked.")
@dump_format_option
@common_options
def decode(dump: str, gpas: tuple, layout: str, vas: tuple, cr3: int | None,
           cpu_index: int | None, paging: str | None, vcpus: bool, symbols: str | None,
           kaslr_offset: int | None, cpus: int | None, fmt: str | None, strict: bool,
           hypervisor: str,
           allow_missing: bool, show_hex: bool, dump_format: str) -> int:
    """Decode the vcpu_runstate_info at each GPA of DUMP.

    DUMP is a raw image (PATH or PATH@0xBASE), an ELF core or a kdump file; '-' reads it
    from stdin.

    \b
    Examples:
      xenrs decode vm.elf --gpa 0xc0001ff1
      xenrs decode vm.raw@0x80000000 --gpa 0x80001ff1 --layout compat --hex
      xenrs scan vm.elf | xenrs decode vm.elf --gpa - --format csv
      xenrs decode vm.elf --va 0xffff88800982f040
      xenrs decode vm.elf --vcpus --symbols System.map
    """
    from xenrs_cli.decode import decode_at
    from xenrs_cli.dumps import open_dump

    if not (gpas or vas or vcpus):
        raise UsageError("give the area: --gpa, --va or --vcpus")
    if "-" in gpas and is_stdin(dump):
        raise UsageError("DUMP and --gpa cannot both be '-' (stdin)")
    fmt = "table" if show_hex and fmt is None else resolve_format(fmt)
    if show_hex and fmt != "table":
        raise UsageError("--hex applies to the table format")
    with open_dump(dump, dump_format) as d:
        out = _sink(fmt, show_hex)
        failed = finding = False
        jobs = [lambda gpa=gpa: _record(decode_at(d.space, gpa, layout, allow_missing,
                                                  hypervisor), dump)
                for gpa in expand_gpas(gpas)]
        if vas or vcpus or any(v is not None for v in (symbols, kaslr_offset, cpus, cr3,
                                                        cpu_index, paging)):
            # the page-table walker is imported only when asked for: --gpa decodes start fast
            jobs += decode_jobs(d, dump, layout, allow_missing, hypervisor, vas, vcpus, symbols,
                                kaslr_offset, cpus, paging_from(cr3, cpu_index, paging))
        for job in jobs:
            try:
                rec, obj = job()
            except InputError as e:
                click.echo(f"xenrs: error: {with_base_hint(e, d, dump)}", err=True)
                failed = True
                continue
            if rec.layout_warning:
                warn(f"GPA 0x{rec.gpa:x}: {rec.layout_warning}")
            finding |= bool(rec.findings) or (strict and unverified(rec, rec.gpa))
            out(rec, obj)
    return 3 if failed else 1 if strict and finding else 0


def _record(rec, dump: str):
    from xenrs_cli.decode import to_json_dict

    return rec, to_json_dict(rec, dump)


def _sink(fmt: str, show_hex: bool):
    if fmt == "json":
        return lambda rec, obj: emit_json(obj)
    if fmt == "csv":
        csv_out = CsvEmitter()
        return lambda rec, obj: csv_out.emit(csv_row(obj))
    from xenrs_cli.render.decode import render_decoded

    return lambda rec, obj: render_decoded(rec, obj, show_hex)


def csv_row(obj: dict) -> dict:
    """The JSON record flattened: ``time.running`` → ``time_running``; pieces as one cell."""
    row = {k: v for k, v in obj.items() if k not in ("time", "pieces", "warnings")}
    at = list(row).index("time_sum")
    items = list(row.items())
    times = [(f"time_{k}", v) for k, v in obj["time"].items()]
    row = dict(items[:at] + times + items[at:])
    row["pieces"] = " ".join(f"{p['gpa']}+{p['len']}:{p['status']}" for p in obj["pieces"])
    row["warnings"] = "; ".join(obj["warnings"])
    return row
