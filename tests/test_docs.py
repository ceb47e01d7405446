"""The README cannot drift: its commands run, its JSON examples are what xenrs prints."""

from __future__ import annotations

import json
import pathlib
import re
import shlex

from click.testing import CliRunner

from xenrs_cli.cli import COMMANDS, xenrs

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def run_in_root(monkeypatch, argv: list[str]):
    monkeypatch.chdir(ROOT)
    return CliRunner().invoke(xenrs, argv)


def test_every_command_has_a_reference_section():
    for name in COMMANDS:
        assert re.search(rf"^##+ .*`xenrs {name}`", README, re.M), f"no README section for {name}"


def test_quick_start_decode_runs(monkeypatch):
    line = next(l for l in README.splitlines() if "pip install . && xenrs decode" in l)
    argv = shlex.split(line.split("&& xenrs ", 1)[1])
    r = run_in_root(monkeypatch, [*argv, "--format", "json"])
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(l) for l in r.stdout.splitlines()]
    assert [(x["layout"], x["crosses_page"]) for x in recs] == [("64", True), ("compat", False)]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[test]' && python -m pytest" in README
    assert "pip install -q -e '.[test]'" in ci and "python -m pytest" in ci


def test_decode_record_example_is_real_output(monkeypatch):
    block = README.split("### The decode record (JSON)", 1)[1].split("```json\n", 1)[1]
    expected = json.loads(block.split("```", 1)[0])
    r = run_in_root(monkeypatch, ["decode", expected["dump"], "--gpa", expected["gpa"],
                                  "--format", "json"])
    assert json.loads(r.stdout) == expected


DUMP_ARG = re.compile(r"\.(raw|elf|kdump|flat|core|img|mig|save)(@0x[0-9a-f_]+)?$")


REALXEN = "tests/data/realxen/"


def runnable_here(argv: list[str]) -> bool:
    """An example runs in the test when every dump it names is shipped in examples/ or is one
    of the real Xen dumps (tests/data/realxen/NAME, decompressed by tests/realxen.py)."""
    return all(a.startswith(("examples/", REALXEN)) for a in argv if DUMP_ARG.search(a))


def real_dumps_dir(tmp_path: pathlib.Path, argv: list[str]) -> pathlib.Path | None:
    """A directory where the example's tests/data/realxen/NAME paths exist (links to the
    decompressed dumps, and to the rest of tests/data), so its output shows the README's paths."""
    names = [a[len(REALXEN):] for a in argv if a.startswith(REALXEN)]
    if not names:
        return None
    import realxen

    data = tmp_path / "tests" / "data"
    (data / "realxen").mkdir(parents=True, exist_ok=True)
    for name in names:
        link = data / "realxen" / name
        if not link.exists():
            link.symlink_to(realxen.path(name))
    for f in (ROOT / "tests" / "data").iterdir():
        if f.is_file() and not (data / f.name).exists():
            (data / f.name).symlink_to(f)
    return tmp_path


def code_blocks() -> list[list[str]]:
    blocks, current = [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def console_examples() -> list[tuple[str, str]]:
    """(command, shown output) for each ``$ xenrs ...`` line of the README's code blocks that
    is not part of a pipeline; the output runs to the next ``$`` line or the block's end."""
    out = []
    for block in code_blocks():
        cmd, shown = None, []
        for line in block + ["$ end"]:
            if line.startswith("$ "):
                if cmd is not None:
                    out.append((cmd, "\n".join(shown)))
                plain = line.startswith("$ xenrs ") and not re.search(r"[|<>]|\$\(", line)
                cmd, shown = (line[2:], []) if plain else (None, [])
            elif cmd is not None:
                shown.append(line.rstrip())
    return out


def test_console_examples_are_real_output(monkeypatch, tmp_path):
    """Every console example whose dumps ship in examples/ (or are the real Xen dumps) prints
    exactly what it shows."""
    checked = 0
    for cmd, shown in console_examples():
        argv = shlex.split(cmd)[1:]
        if not runnable_here(argv):
            continue
        real = real_dumps_dir(tmp_path, argv)
        if real is None:
            r = run_in_root(monkeypatch, argv)
        else:
            monkeypatch.chdir(real)
            r = CliRunner().invoke(xenrs, argv)
        got = "\n".join(l.rstrip() for l in r.stdout.rstrip("\n").splitlines())
        assert got == shown.rstrip("\n"), cmd
        checked += 1
    assert checked >= 3


def test_real_xen_examples_are_real_output(monkeypatch, tmp_path):
    """The README's examples on the real Xen dumps (``realxen/...``, linked as
    ``python tests/realxen.py realxen`` does) print exactly what they show."""
    import realxen

    realxen.main([str(tmp_path / "realxen")])
    checked = 0
    for cmd, shown in console_examples():
        argv = shlex.split(cmd)[1:]
        if not any(a.startswith("realxen/") for a in argv):
            continue
        monkeypatch.chdir(tmp_path)
        r = CliRunner().invoke(xenrs, argv)
        assert r.exit_code == 0, (cmd, r.stderr)
        got = "\n".join(l.rstrip() for l in r.stdout.rstrip("\n").splitlines())
        assert got == shown.rstrip("\n"), cmd
        checked += 1
    assert checked >= 4
