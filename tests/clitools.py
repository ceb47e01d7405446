"""Helpers shared by the CLI tests: run ``xenrs`` in-process, check a one-line error."""

from __future__ import annotations

from click.testing import CliRunner, Result

from xenrs_cli.cli import xenrs


def cli(*args, input: str | bytes | None = None) -> Result:
    """``xenrs ARGS`` through click's runner (stdout and stderr kept apart)."""
    return CliRunner().invoke(xenrs, [str(a) for a in args], input=input)


def one_line_error(result: Result, code: int = 3, *needles: str) -> str:
    """Assert SPEC §1's error contract: the exit code, one ``xenrs: error:`` line on stderr,
    nothing on stdout, no traceback; return the line."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("xenrs: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
