"""Options and record assembly for guest virtual addresses (SPEC §8), shared by ``decode``,
``simulate`` and ``race``: ``--va``, ``--cr3``, ``--cpu``, ``--paging``; ``decode --vcpus``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import click

from xenrs_cli.cli.common import NUMBER, warn
from xenrs_cli.numbers import parse_number

PAGING_MODES = ("4", "5", "pae", "32")


class VaType(click.ParamType):
    """A guest virtual address: hex or decimal, ``_`` allowed, below 2^64."""

    name = "VA"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            va = parse_number(value)
        except ValueError:
            va = None
        if va is None or va >= 1 << 64:
            self.fail(f"{value!r} is not a virtual address (0x hex or decimal, '_' allowed, "
                      "below 2^64)", param, ctx)
        return va


VA = VaType()


def paging_options(f: Callable) -> Callable:
    """``--cr3``, ``--cpu``, ``--paging``: which page tables translate a ``--va``."""
    options = [
        click.option("--cr3", type=NUMBER, default=None, metavar="CR3",
                     help="Root of the page tables for --va [default: the dump's CPU state]."),
        click.option("--cpu", "cpu_index", type=int, default=None, metavar="N",
                     help="Translate --va with vCPU N's CR3 and paging mode [default: the first "
                          "vCPU whose page tables map the VA]."),
        click.option("--paging", type=click.Choice(PAGING_MODES), default=None,
                     help="Paging mode for --va: 4- or 5-level, PAE, 32-bit [default: from the "
                          "CPU state, else 4]."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def paging_from(cr3: int | None, cpu_index: int | None, mode: str | None):
    from xenrs_cli.guest_va import Paging

    return Paging(cr3, cpu_index, mode)


def decode_jobs(d, dump: str, layout: str, allow_missing: bool, hypervisor: str, vas: tuple,
                vcpus: bool, symbols: str | None, kaslr: int | None, cpus: int | None,
                paging) -> Iterator[Callable[[], tuple[Any, dict]]]:
    """One callable per record ``decode`` prints for ``--va`` and ``--vcpus``; each returns
    ``(Decoded, record)`` or raises the :class:`InputError` of that record."""
    from xenrs_cli import guest_va
    from xenrs_cli.errors import UsageError

    if not vcpus:
        given = [o for o, v in (("--symbols", symbols), ("--kaslr-offset", kaslr),
                                ("--cpus", cpus)) if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply to --vcpus")
        if not vas and paging != guest_va.Paging():
            raise UsageError("--cr3, --cpu and --paging apply to --va and --vcpus")
    if cpus is not None and not 0 < cpus <= guest_va.MAX_CPUS:
        raise UsageError(f"--cpus {cpus}: give 1..{guest_va.MAX_CPUS}")
    for va in vas:
        yield lambda va=va: _va_record(d, dump, va, layout, allow_missing, hypervisor, paging, None)
    if not vcpus:
        return
    if symbols is not None:
        from xenrs_cli.symbols import kaslr_offset, read_symbols

        table = read_symbols(symbols)
        if kaslr is None:
            kaslr, _ = kaslr_offset(table, d.details.get("vmcoreinfo"))
        areas = guest_va.linux_areas(d, table, kaslr, cpus, paging)
    else:
        areas = guest_va.recorded_areas(d)
    for area in areas:
        if area.va is not None:
            yield lambda a=area: _va_record(d, dump, a.va, layout, allow_missing, hypervisor, paging,
                                                a.vcpu)
        else:
            yield lambda a=area: _gpa_record(d, dump, a.gpa, layout, allow_missing, hypervisor,
                                                 a.vcpu)


def _va_record(d, dump, va, layout, allow_missing, hypervisor, paging, vcpu):
    from xenrs_cli.decode import to_json_dict
    from xenrs_cli.guest_va import decode_va, kvm_warning, va_fields

    v = decode_va(d, va, layout, allow_missing, paging, vcpu, hypervisor)
    hazard = kvm_warning(v.view, v.decoded.layout.size)
    if hazard:
        warn(f"VA 0x{va:x}: {hazard}")
    return v.decoded, va_fields(v, to_json_dict(v.decoded, dump))


def _gpa_record(d, dump, gpa, layout, allow_missing, hypervisor, vcpu):
    from xenrs_cli.decode import decode_at, to_json_dict

    rec = decode_at(d.space, gpa, layout, allow_missing, hypervisor)
    return rec, {"vcpu": vcpu, **to_json_dict(rec, dump)}


def before_at_va(dump: str, dump_format: str, va: int, size: int, paging) -> tuple[int, bytes]:
    """``simulate``/``race --from-dump --va``: the GPA KVM would take for the area (the VA's
    translation at registration) and the bytes the guest sees there now, through its tables."""
    from xenrs_cli.address_space import check_present
    from xenrs_cli.dumps import open_dump
    from xenrs_cli.guest_va import VirtualView, kvm_warning, translate

    with open_dump(dump, dump_format) as d:
        _, spans = translate(d, va, size, paging)
        view = VirtualView(d.space, va, spans)
        data, pieces = view.read(view.base, size)
        check_present(pieces)
    hazard = kvm_warning(view, size)
    if hazard:
        warn(f"VA 0x{va:x}: {hazard}; the trace shows KVM's writes, at gpa + offset")
    return view.base, data
