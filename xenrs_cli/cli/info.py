"""``xenrs info``: what a dump is and which guest-physical ranges it holds (SPEC §6)."""

from __future__ import annotations

import click

from xenrs_cli.cli.common import (DUMP, common_options, dump_format_option, emit_json,
                                  format_option, resolve_format)


@click.command()
@click.argument("dump", type=DUMP)
@format_option(("table", "json"))
@dump_format_option
@common_options
def info(dump: str, fmt: str | None, dump_format: str) -> int:
    """Describe DUMP: format, page size, GPA extents with their provenance, vCPUs.

    \b
    Examples:
      xenrs info vm.elf
      xenrs info vm.kdump --format json | jq '.extents[] | select(.status != "present")'
    """
    from xenrs_cli.dumps import open_dump
    from xenrs_cli.info import describe

    with open_dump(dump, dump_format) as d:
        obj = describe(d, dump)
    if resolve_format(fmt) == "json":
        emit_json(obj)
    else:
        from xenrs_cli.render.info import render_info

        render_info(obj)
    return 0
