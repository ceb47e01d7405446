"""The ``xenrs`` command line: a lazy click group and the one place errors become exit codes.

Each command lives in its own module and is imported only when it runs, so ``xenrs decode``
pays for click, construct and its own code, nothing else. Every :class:`XenrsError` becomes one
line ``xenrs: error: ...`` on stderr with its exit code (SPEC §1); a closed stdout pipe ends
quietly; anything else is an internal error (exit 70) whose traceback ``--traceback`` or
``XENRS_TRACEBACK=1`` shows.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from xenrs_cli import __version__
from xenrs_cli.cli import state
from xenrs_cli.errors import XenrsError

COMMANDS: dict[str, str] = {
    "decode": "xenrs_cli.cli.decode:decode",
    "diff": "xenrs_cli.cli.diff:diff",
    "info": "xenrs_cli.cli.info:info",
    "race": "xenrs_cli.cli.race:race",
    "scan": "xenrs_cli.cli.scan:scan",
    "simulate": "xenrs_cli.cli.simulate:simulate",
    "sweep": "xenrs_cli.cli.race:sweep",
}

EXIT_INTERNAL = 70
EXIT_USAGE = 2
EXIT_SIGPIPE = 141  # what a shell reports for a writer killed by SIGPIPE


class XenrsGroup(click.Group):
    """Loads commands on demand and maps every failure to SPEC §1's exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        state.reset()
        try:
            rv = super().main(args, prog_name or "xenrs", complete_var, standalone_mode=False,
                              **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.exceptions.Abort:
            _error("interrupted")
            code = 130
        except click.UsageError as e:
            code = _usage_error(e)
        except XenrsError as e:
            if state.traceback_wanted():
                raise
            _error(str(e))
            code = e.exit_code
        except BrokenPipeError:
            code = _broken_pipe()
        except KeyboardInterrupt:
            _error("interrupted")
            code = 130
        except Exception as e:  # a bug: say so in one line unless asked for the traceback
            if state.traceback_wanted():
                raise
            _error(f"internal error: {type(e).__name__}: {e} (this is a bug in xenrs; rerun "
                   "with --traceback or XENRS_TRACEBACK=1 and report the traceback)")
            code = EXIT_INTERNAL
        _flush_stdout_quietly()
        sys.exit(code)


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def _error(message: str) -> None:
    click.echo(f"xenrs: error: {_one_line(message)}", err=True)


def _usage_error(e: click.UsageError) -> int:
    cmd = e.ctx.command_path if e.ctx is not None else "xenrs"
    _error(f"{e.format_message()} (see '{cmd} --help')")
    return EXIT_USAGE


def _broken_pipe() -> int:
    # The reader went away (| head): stop quietly, and keep Python from complaining at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_SIGPIPE


def _flush_stdout_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _broken_pipe()
    except (OSError, ValueError):
        pass


@click.group(cls=XenrsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="xenrs",
                      message="%(prog)s %(version)s")
def xenrs() -> None:
    """Inspect the Xen vCPU runstate area in guest-memory dumps.

    Decode `vcpu_runstate_info` at a guest-physical address of a raw, ELF or kdump dump,
    simulate the writes KVM and Xen make to it, check whether a guest can read it torn,
    find it without a GPA, and compare two dumps.

    Exit codes: 0 success, 1 a finding, 2 usage error, 3 input error, 70 internal error.
    """


def main() -> None:
    """Console-script entry point."""
    xenrs.main()
