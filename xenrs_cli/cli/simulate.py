"""``xenrs simulate``: the ordered guest-memory writes of one runstate update (SPEC §4).

:func:`scenario_options` and :func:`scenario_from_options` are shared with ``xenrs race``:
every option that describes the update is declared here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from xenrs_cli.cli.common import (DUMP, GPA, NUMBER, CsvEmitter, common_options, dump_format_option,
                                  emit_json, resolve_format, warn)
from xenrs_cli.cli.vaddr import VA, paging_options
from xenrs_cli.errors import UsageError
from xenrs_cli.layouts import LAYOUTS
from xenrs_cli.models import EVENTS, MODELS

CSV_COLUMNS = ("seq", "op", "kind", "group", "gpa", "offset", "len", "page", "data", "field",
               "why", "errno")


def scenario_options(f: Callable | None = None, *, hidden: tuple[str, ...] = ()):
    """Every option of ``simulate`` that describes the update (reused verbatim by ``race``;
    ``sweep`` hides the ones that place the area, ``hidden=("--gpa", "--split")``, from its
    help, and refuses them with the reason)."""
    if f is None:
        return lambda g: scenario_options(g, hidden=hidden)
    options = [
        _opt("--model", type=click.Choice(list(MODELS)), default="kvm", show_default=True,
             help="kvm: Linux >= 6.2; kvm-6.1: before 5ec3289b31ab; xen: guest-virtual "
                  "area; xen-phys: VCPUOP_register_runstate_phys_area."),
        _opt("--layout", type=click.Choice(list(LAYOUTS)), default="64",
             show_default=True, help="64-bit (48 bytes) or compat (44 bytes)."),
        _opt("--gpa", type=GPA, default=None,
             help="GPA of the area [default: 0xc0001020]."),
        _opt("--split", is_flag=True,
             help="Place the area as the KVM selftest does: flag byte first in the next "
                  "page (0xc0001ff1 for 64, 0xc0001ff5 for compat)."),
        _opt("--update-flag/--no-update-flag", default=True, show_default=True,
             help="Use XEN_RUNSTATE_UPDATE (KVM attribute / Xen VMASST); kvm-6.1 and "
                  "xen-phys always do."),
        _opt("--event", type=click.Choice(list(EVENTS)), default="update",
             show_default=True, help="An update, or the registration of the area."),
        _opt("--state", default=None, metavar="NAME|CODE",
             help="State written: running, runnable, blocked, offline or 0..3 "
                  "[default: running]."),
        _opt("--entry-time", type=NUMBER, default=None, metavar="NS",
             help="state_entry_time written [default: the sum of --time]."),
        _opt("--time", "times", default=None, metavar="running=N,...",
             help="time[] written: running=N,runnable=N,blocked=N,offline=N (missing "
                  "keys are 0) [default: 4 s, 0.2 s, 1 s, 0]."),
        _opt("--allow-inconsistent", is_flag=True,
             help="Accept --entry-time != sum of time[] (KVM refuses it)."),
        _opt("--from-dump", type=DUMP, default=None,
             help="Take the before-image from DUMP at the GPA."),
        _opt("--va", type=VA, default=None,
             help="--from-dump: the area's guest virtual address; the GPA is its "
                  "translation (what KVM takes at registration)."),
        (None, paging_options),
        (None, dump_format_option),
        _opt("--transition", default=None, metavar="STATE",
             help="Derive the values as kvm_xen_update_runstate() accounts a change "
                  "to STATE from the record before (needs --now)."),
        _opt("--now", type=NUMBER, default=None, metavar="NS",
             help="kvmclock time of the --transition."),
        _opt("--steal", type=NUMBER, default=None, metavar="NS",
             help="Steal time moved from running to runnable by the --transition."),
    ]
    for decls, attrs in reversed(options):
        if decls is None:  # a shared decorator
            f = attrs(f)
        else:
            f = click.option(*decls, **attrs, hidden=decls[0] in hidden)(f)
    return f


def _opt(*decls: str, **attrs: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    return decls, attrs


def _resolve_gpa(gpa: int | None, split: bool, layout: str) -> int:
    from xenrs_cli.address_space import GPA_LIMIT
    from xenrs_cli.simulate import DEFAULT_GPA, split_gpa

    if split and gpa is not None:
        raise UsageError("--split and --gpa are exclusive (--split places the area itself)")
    if split:
        return split_gpa(LAYOUTS[layout])
    if gpa is None:
        return DEFAULT_GPA
    size = LAYOUTS[layout].size
    if gpa + size > GPA_LIMIT:
        raise UsageError(f"--gpa 0x{gpa:x}: the {size}-byte area would end beyond 2^52 (the "
                         f"last GPA it can start at is 0x{GPA_LIMIT - size:x})")
    return gpa


def _check_combinations(kw: dict[str, Any]) -> None:
    if kw["transition"] is None:
        for name in ("now", "steal"):
            if kw[name] is not None:
                raise UsageError(f"--{name} applies to --transition")
        return
    if kw["now"] is None:
        raise UsageError("--transition needs --now (the kvmclock time of the change)")
    given = [f"--{n.replace('_', '-')}" for n in ("state", "entry_time") if kw[n] is not None]
    given += ["--time"] if kw["times"] is not None else []
    if given:
        raise UsageError(f"--transition derives the values itself; drop {', '.join(given)}")


def _read_before(dump: str, dump_format: str, gpa: int, size: int) -> bytes:
    from xenrs_cli.dumps import open_dump

    from xenrs_cli.errors import UnmappedAddressError

    with open_dump(dump, dump_format) as d:
        try:
            return d.space.read_present(gpa, size)
        except UnmappedAddressError as e:
            # not decode's --allow-missing hint: the record before must be whole
            raise UnmappedAddressError(
                e.gpa, e.size, e.status,
                hint=f"--from-dump needs the whole record before at GPA 0x{gpa:x}: give a GPA "
                     f"the dump holds (xenrs info {dump} lists its ranges)") from None


def _before_at_va(kw: dict[str, Any], size: int) -> tuple[int, bytes]:
    from xenrs_cli.cli.vaddr import before_at_va, paging_from

    if kw["from_dump"] is None:
        raise UsageError("--va needs --from-dump (the page tables are in the dump)")
    if kw["gpa"] is not None or kw["split"]:
        raise UsageError("--va and --gpa/--split are exclusive")
    return before_at_va(kw["from_dump"], kw.get("dump_format") or "auto", kw["va"], size,
                        paging_from(kw["cr3"], kw["cpu_index"], kw["paging"]))


def scenario_from_options(**kw: Any):
    """The :class:`~xenrs_cli.simulate.Scenario` the options describe (extra keys ignored)."""
    from xenrs_cli import simulate as sim
    from xenrs_cli.layouts import decode, encode
    from xenrs_cli.models import ALWAYS_FLAG

    _check_combinations(kw)
    layout = LAYOUTS[kw["layout"]]
    before = None
    if kw.get("va") is not None:
        gpa, before = _before_at_va(kw, layout.size)
    else:
        if any(kw.get(k) is not None for k in ("cr3", "cpu_index", "paging")):
            raise UsageError("--cr3, --cpu and --paging apply to --va")
        gpa = _resolve_gpa(kw["gpa"], kw["split"], kw["layout"])
    if kw["from_dump"] is not None and before is None:
        before = _read_before(kw["from_dump"], kw.get("dump_format") or "auto", gpa, layout.size)
    if kw["transition"] is not None:
        start = decode(layout, before) if before is not None else sim.DEFAULT_VALUES
        after = sim.account_transition(start, sim.parse_state(kw["transition"]), kw["now"],
                                       kw["steal"] or 0, kw["allow_inconsistent"])
        if before is None:
            before = encode(layout, start)
    else:
        state = sim.parse_state(kw["state"]) if kw["state"] is not None else \
            sim.DEFAULT_VALUES.state
        if kw["times"] is not None:
            times = sim.parse_time_spec(kw["times"])
        elif kw["entry_time"] is not None:
            raise UsageError("--entry-time needs --time (the times it must add up to)")
        else:
            times = sim.DEFAULT_VALUES.time
        after = sim.make_values(state, kw["entry_time"], times, kw["allow_inconsistent"])
    if before is None:
        before = sim.default_before_image(layout, after)
    # kvm-6.1 and xen-phys have no switch: they always set XEN_RUNSTATE_UPDATE.
    flag = True if kw["model"] in ALWAYS_FLAG else kw["update_flag"]
    return sim.Scenario(kw["model"], layout.name, gpa, flag, kw["event"], after, before)


@click.command()
@scenario_options
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "xxd"]), default=None,
              help="Output format (default: table on a terminal, json otherwise). xxd: an "
                   "'xxd -r' patch of the final bytes at their GPAs.")
@click.option("--images", "show_images", is_flag=True,
              help="Table: also show the struct after each write, changed bytes highlighted.")
@common_options
def simulate(fmt: str | None, show_images: bool, **kw: Any) -> int:
    """Show, in order, the guest-memory writes of one runstate update.

    Pure: no dump is needed (--from-dump only reads the bytes there before the update).
    Exit 1 if the model refuses to register the area.

    \b
    Examples:
      xenrs simulate --split
      xenrs simulate --model kvm-6.1 --gpa 0xc0001fd8          # refused: EINVAL
      xenrs simulate --layout compat --gpa 0xc0001ff5 --images
      xenrs simulate --from-dump vm.raw --gpa 0x625ff1 --transition runnable \\
          --now 9622000000000 --format xxd > patch.xxd
    """
    from xenrs_cli.simulate import simulate as run
    from xenrs_cli.trace import Reject

    fmt = "table" if show_images and fmt is None else resolve_format(fmt)
    if show_images and fmt != "table":
        raise UsageError("--images applies to the table format")
    scenario = scenario_from_options(**kw)
    records = run(scenario)
    refused = [r for r in records if isinstance(r, Reject)]
    _output(fmt, scenario, records, show_images)
    if refused and fmt in ("xxd", "table"):
        warn(f"{scenario.model} refuses the area: {refused[0].errno}: {refused[0].why}")
    return 1 if refused else 0


def _output(fmt: str, scenario, records, show_images: bool) -> None:
    from xenrs_cli.trace import to_json_dict

    if fmt == "json":
        for r in records:
            emit_json(to_json_dict(r))
    elif fmt == "csv":
        out = CsvEmitter()
        for r in records:
            obj = to_json_dict(r)
            out.emit({k: obj.get(k) for k in CSV_COLUMNS})
    elif fmt == "xxd":
        import sys

        from xenrs_cli.apply import apply, patch_runs, xxd_patch

        final = apply(scenario.before, scenario.gpa, records)
        sys.stdout.write(xxd_patch(patch_runs(scenario.gpa, final, records)))
    else:
        from xenrs_cli.models import SOURCES
        from xenrs_cli.render.trace import render_trace

        render_trace(scenario, records, SOURCES[scenario.model], show_images)
