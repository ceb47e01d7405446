"""The ``xenrs`` command line: a lazy click group and the one place errors become exit codes.

Each command lives in its own module and is imported only when it runs, so ``xenrs decode``
pays for click, construct and its own code, nothing else. Every :class:`XenrsError` becomes one
line ``xenrs: error: ...`` on stderr with its exit code; a closed stdout pipe ends quietly
with 141, as a shell reports a writer killed by SIGPIPE; SIGTERM and SIGHUP remove the
temporary output file and exit 128 + the signal; anything else is an internal error
(exit 70) whose traceback ``--traceback`` or ``XENRS_TRACEBACK=1`` shows.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click

from xenrs_cli import __version__
from xenrs_cli.cli import state
from xenrs_cli.cli.common import STDIN_MARK
from xenrs_cli.errors import XenrsError
from xenrs_cli.files import remove_temporaries

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


class _PipeClosed(Exception):
    """stdout's reader went away. Not an ``OSError``: click's ``main`` turns an ``EPIPE`` into
    exit 1 before this group could see it, so :meth:`XenrsGroup.invoke` re-raises it as this."""


def _terminate(signum, frame) -> None:
    """SIGTERM or SIGHUP: remove the temporary output file and stop now, with the status a
    shell gives a process killed by the signal. Not by raising an exception to unwind: C code
    that clears errors (numpy's import) can swallow it, and the process would run on."""
    remove_temporaries()
    os._exit(128 + signum)


class XenrsGroup(click.Group):
    """Loads commands on demand and maps every failure to the documented exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `-@0xBASE` (stdin as a raw image at BASE) would parse as an option: mark it with a NUL,
        # which no real argument can hold, and let common.PathType take the mark off.
        return super().parse_args(ctx, [STDIN_MARK + a if a.startswith("-@") else a
                                        for a in args])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise _PipeClosed() from None
        except OSError as e:
            import errno

            if e.errno == errno.EPIPE:
                raise _PipeClosed() from None
            raise

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        state.reset()
        saved = _catch_termination()
        try:
            rv = super().main(args, prog_name or "xenrs", complete_var, standalone_mode=False,
                              **extra)
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.exceptions.NoArgsIsHelpError as e:
            # bare `xenrs`: the whole help, laid out as click lays it out, then exit 2
            click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message(), err=True)
            code = EXIT_USAGE
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
        except (BrokenPipeError, _PipeClosed):
            code = _broken_pipe()
        except KeyboardInterrupt:
            _error("interrupted")
            code = 130
        except MemoryError:
            # The readers check what a file claims against its size before allocating; what is
            # left is a real dump too large for this machine's memory (or address-space limit).
            if state.traceback_wanted():
                raise
            _error("out of memory reading the dump: free memory or raise the process's "
                   "address-space limit (ulimit -v), or use --range to scan a part")
            code = 3
        except Exception as e:  # a bug: say so in one line unless asked for the traceback
            if state.traceback_wanted():
                raise
            _error(f"internal error: {type(e).__name__}: {e} (this is a bug in xenrs; rerun "
                   "with --traceback or XENRS_TRACEBACK=1 and report the traceback)")
            code = EXIT_INTERNAL
        finally:
            _restore_handlers(saved)
        if not _flush_stdout_quietly():
            code = EXIT_SIGPIPE  # the last of the output met a closed pipe
        sys.exit(code)


def _catch_termination() -> dict:
    saved = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            saved[signum] = signal.signal(signum, _terminate)
        except ValueError:  # not the main thread (an embedding caller): leave signals alone
            pass
    return saved


def _restore_handlers(saved: dict) -> None:
    for signum, handler in saved.items():
        signal.signal(signum, handler)


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


def _flush_stdout_quietly() -> bool:
    """Flush stdout; ``False`` if its reader had gone away."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _broken_pipe()
        return False
    except (OSError, ValueError):
        pass
    return True


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
