"""``xenrs race`` and ``xenrs sweep``: can the guest accept a torn runstate snapshot? (SPEC §5)"""

from __future__ import annotations

from typing import Any

import click

from xenrs_cli.cli.common import (GPA, CsvEmitter, common_options, emit_json, format_option,
                                  resolve_format, warn)
from xenrs_cli.cli.simulate import scenario_options, scenario_from_options
from xenrs_cli.errors import UsageError
from xenrs_cli.readers import READERS

_READER_HELP = ("Guest reader: linux64 (one 8-byte load of state_entry_time) or linux32 "
                "(get64: hi, lo, hi) [default: linux64 for layout 64, linux32 for compat].")
_BEFORE_HELP = ("The record in memory before the update: state=..,entry=..,running=..,"
                "runnable=..,blocked=..,offline=.. (times left out are 0, entry defaults to "
                "their sum) [default: the values written, with 1 ms taken back from the state "
                "being left].")


def _scenario(kw: dict[str, Any]):
    """The scenario of the options, with ``--before`` replacing its before-image."""
    from dataclasses import replace

    from xenrs_cli.layouts import LAYOUTS, encode
    from xenrs_cli.race_report import parse_before

    before = kw.pop("before")
    kw_orig = dict(kw)
    if before is not None and kw.get("from_dump") is not None:
        raise UsageError("--before and --from-dump both give the record before; use one")
    transition = kw.get("transition") if before is not None else None
    if transition is not None:
        # --transition accounts the change from the record before, which --before gives here:
        # build the rest of the scenario without it, then account from that record.
        if kw["now"] is None:
            raise UsageError("--transition needs --now (the kvmclock time of the change)")
        given = [f"--{n.replace('_', '-')}" for n in ("state", "entry_time", "times")
                 if kw[n] is not None]
        if given:
            raise UsageError("--transition derives the values itself; drop "
                             f"{', '.join(g.replace('--times', '--time') for g in given)}")
        kw = dict(kw, transition=None, now=None, steal=None)
    scenario = scenario_from_options(**kw)
    if before is not None:
        from xenrs_cli.simulate import account_transition, parse_state

        layout = LAYOUTS[scenario.layout]
        info = parse_before(before, layout)
        scenario = replace(scenario, before=encode(layout, info))
        if transition is not None:
            after = account_transition(info, parse_state(transition), kw_orig["now"],
                                       kw_orig["steal"] or 0, kw["allow_inconsistent"])
            scenario = replace(scenario, after=replace(after, padding=None))
    return scenario


@click.command()
@scenario_options
@click.option("--before", default=None, metavar="state=..,entry=..,...", help=_BEFORE_HELP)
@click.option("--reader", type=click.Choice(READERS), default=None, help=_READER_HELP)
@format_option()
@common_options
def race(fmt: str | None, reader: str | None, **kw: Any) -> int:
    """Check whether the guest can accept a torn snapshot while one update runs.

    Explores every interleaving the x86-TSO memory model allows between the hypervisor's
    writes (as `xenrs simulate` shows them) and Linux's xen_get_runstate_snapshot_cpu_delta()
    (the README's "The model, exactly" spells it out).
    If a torn copy can be accepted, prints a minimal witness. Exit 1 if torn or refused.

    \b
    Examples:
      xenrs race --model kvm-6.1 --gpa 0xc0001034     # torn: the seed commit's bug
      xenrs race --no-update-flag                     # torn: nothing to retry on
      xenrs race --split --format json | jq .witness.torn_fields
    """
    from xenrs_cli.race_report import race as run, report_json

    fmt = resolve_format(fmt)
    rep = run(_scenario(kw), reader)
    if fmt == "json":
        emit_json(report_json(rep))
    elif fmt == "csv":
        obj = report_json(rep)
        w = obj.pop("witness")
        obj["torn_fields"] = " ".join(w["torn_fields"]) if w else None
        obj["witness"] = w
        CsvEmitter().emit(obj)
    else:
        from xenrs_cli.render.race import render_race

        render_race(rep)
    if rep.refused is not None and fmt == "csv":
        warn(f"{rep.model} refuses the area: {rep.refused.errno}: {rep.refused.why}")
    return 1 if rep.finding else 0


@click.command()
@scenario_options(hidden=("--gpa", "--split"))
@click.option("--page", type=GPA, default=0xc0001000, show_default="0xc0001000",
              help="Any GPA in the page to sweep; with --from-dump, the GPA of the record "
                   "before, which every placement starts from.")
@click.option("--before", default=None, metavar="state=..,entry=..,...", help=_BEFORE_HELP)
@click.option("--reader", type=click.Choice(READERS), default=None, help=_READER_HELP)
@click.option("--all", "run_all", is_flag=True,
              help="Every model x layout x flag setting; one summary line each.")
@format_option()
@common_options
def sweep(fmt: str | None, page: int, reader: str | None, run_all: bool, **kw: Any) -> int:
    """Run `xenrs race` at every page offset 0..4095 and summarise.

    Table output also draws the page as 64 lines of 64 offsets (one row per cache line):
    . no torn read, W torn (writer), R torn (reader's split load), x refused.
    Exit 1 if any offset is torn.

    \b
    Examples:
      xenrs sweep --model kvm-6.1
      xenrs sweep --all --format json | jq -c '[.model, .layout, .update_flag, .torn]'
    """
    from xenrs_cli.address_space import GPA_LIMIT
    from xenrs_cli.layouts import PAGE_SIZE

    fmt = resolve_format(fmt)
    ctx = click.get_current_context()
    if page - page % PAGE_SIZE + PAGE_SIZE >= GPA_LIMIT:
        raise UsageError(f"--page 0x{page:x}: the last page below 2^52 cannot hold the area at "
                         "every offset (it would end beyond 2^52)")
    for name in ("gpa", "split"):
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise UsageError(f"--{name} does not apply to sweep, which places the area at every "
                             "offset of --page itself")
    # --from-dump reads the record before at --page's GPA (or at --va's translation)
    kw.update(gpa=page if kw["from_dump"] is not None and kw.get("va") is None else None,
              split=False)
    if run_all:
        fixed = [n for n in ("model", "layout", "update_flag")
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if fixed:
            names = ", ".join("--update-flag" if n == "update_flag" else f"--{n}" for n in fixed)
            raise UsageError(f"--all runs every model, layout and flag setting; drop {names}")
        return _sweep_all(fmt, page, reader, kw)
    return _sweep_one(fmt, page, reader, kw)


def _sweep_one(fmt: str, page: int, reader: str | None, kw: dict[str, Any]) -> int:
    from xenrs_cli.readers import default_reader
    from xenrs_cli.sweep import sweep as run

    scenario = _scenario(kw)
    summary = run(scenario, reader or default_reader(scenario.layout_obj), page)
    _emit(fmt, [summary], page, show_map=True)
    return 1 if summary.count("torn") else 0


def _sweep_all(fmt: str, page: int, reader: str | None, kw: dict[str, Any]) -> int:
    from xenrs_cli.readers import default_reader
    from xenrs_cli.sweep import matrix, sweep as run

    summaries = []
    for model, layout, flag in matrix():
        scenario = _scenario(dict(kw, model=model, layout=layout, update_flag=flag))
        summary = run(scenario, reader or default_reader(scenario.layout_obj), page)
        summaries.append(summary)
        if fmt == "json":  # stream: one line per configuration as it finishes
            emit_json(summary.to_json_dict())
    if fmt != "json":
        _emit(fmt, summaries, page, show_map=False)
    return 1 if any(s.count("torn") for s in summaries) else 0


def _emit(fmt: str, summaries: list, page: int, show_map: bool) -> None:
    if fmt == "json":
        for s in summaries:
            emit_json(s.to_json_dict())
    elif fmt == "csv":
        out = CsvEmitter()
        for s in summaries:
            obj = s.to_json_dict()
            obj["torn_offsets"] = " ".join(f"{a}-{b}" if a != b else str(a)
                                           for a, b in obj["torn_offsets"])
            out.emit(obj)
    else:
        from xenrs_cli.render.race import render_sweep

        render_sweep(summaries, page, show_map)
