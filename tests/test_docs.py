"""The README cannot drift: its commands run, its JSON examples are what xenrs prints."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

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


# --- every example, run as a user runs it ------------------------------------------------------
#
# A console block (lines starting with "$ ") is run in bash from a directory laid out like the
# repository root after the README's setup lines: examples/, tests/ and benchmarks/ as they are,
# the QEMU dumps of tests/data decompressed under their bare names (d1.q72.elf, …) and the real
# Xen dumps linked by tests/realxen.py. stdout
# and stderr go to one pipe, as a terminal shows them, and the output must be what the README
# shows under the command: "# " lines are comments, a line "…" stands for any number of lines,
# scan's "in 0.08 s" timing is not compared. A command exits 0 unless the README follows it with
# "$ echo $?" (or "${PIPESTATUS[0]}"), whose shown value is then compared like any output.
# Outside console blocks only synopses (a metavariable such as DUMP, or "["), install,
# completion, benchmark and the setup line may name a command: anything else runnable must be
# written as a console example, so that it is run.

QEMU_DUMP = re.compile(r"\b(d[12]\.q\w+\.[a-z0-9-]+(?:\.[a-z0-9-]+)?)")
SYNOPSIS = re.compile(r"^xenrs [\w|]+ .*(\[|\bDUMP\b|\bGPA\b)")
NOT_RUN = ("pip ", "python3 -m venv", "python benchmarks/", "eval ", "_XENRS_COMPLETE=",
           "python tests/realxen.py")
STATUS = re.compile(r"^echo (\$\?|\$\{PIPESTATUS\[\d\]\})$")
TIMING = re.compile(r" in \d+\.\d\d s:")
SETUP = 'for f in tests/data/d[12].*.xz; do xz -dc "$f" > "$(basename "$f" .xz)"; done'


def code_blocks() -> list[list[str]]:
    blocks, current = [], None
    for line in README.splitlines():
        if line.startswith("```"):
            if current is None:
                current = [] if line.strip() in ("```", "```sh", "```console") else None
                if current is None:
                    current = ["\0skip"]
            else:
                if current[:1] != ["\0skip"]:
                    blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def console_examples() -> list[tuple[list[str], list[str], bool]]:
    """(commands, shown output, status shown) per example: a command and the ``echo $?`` that
    may follow it are one example."""
    out: list[tuple[list[str], list[str], bool]] = []
    for block in code_blocks():
        if not any(l.startswith("$ ") for l in block):
            continue
        for line in block:
            if line.startswith("$ "):
                cmd = line[2:].strip()
                if STATUS.match(cmd) and out and not out[-1][2]:
                    out[-1] = (out[-1][0] + [cmd], out[-1][1], True)
                else:
                    out.append(([cmd], [], False))
            elif not line.startswith("# ") and out:
                out[-1][1].append(line.rstrip())
    return [(c, _trim(s), st) for c, s, st in out]


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines


def commands_outside_console_blocks() -> list[str]:
    out = []
    for block in code_blocks():
        if any(l.startswith("$ ") for l in block):
            continue
        for line in block:
            text = line.strip()
            if (not text or text.startswith("#") or SYNOPSIS.match(text) or text == SETUP
                    or text.startswith(NOT_RUN)):
                continue
            if re.match(r"(xenrs|for|xargs|cat|printf) ", text):
                out.append(text)
    return out


def test_readme_has_its_setup_line():
    assert SETUP in README


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
    """The repository root as the README's setup lines leave it: the QEMU dumps decompressed
    under their bare names, the real Xen dumps linked as ``realxen/NAME`` and as
    ``tests/data/realxen/NAME`` (``python tests/realxen.py DIR``), everything else as it is."""
    import contextlib
    import io

    import realxen
    from fixtures import fixture_path

    w = tmp_path_factory.mktemp("readme")
    for sub in ("examples", "benchmarks"):
        (w / sub).symlink_to(ROOT / sub)
    _mirror(ROOT / "tests", w / "tests")
    for name in sorted(set(QEMU_DUMP.findall(README))):
        if not name.endswith(".xz"):
            (w / name).symlink_to(fixture_path(name))
    with contextlib.redirect_stdout(io.StringIO()):
        for d in ("realxen", "tests/data/realxen"):
            if re.search(rf"(^|[\s'\"]){re.escape(d)}/", README):
                realxen.main([str(w / d)])
    if "tests/data/realxen-domu/du1.core " in README:  # xz -dk … du1.core.xz
        (w / "tests/data/realxen-domu/du1.core").symlink_to(realxen.path("du1.core"))
    return w


def _mirror(src: pathlib.Path, dst: pathlib.Path) -> None:
    """``dst`` as a tree of directories whose files link to ``src``'s (so links can be added)."""
    dst.mkdir()
    for entry in src.iterdir():
        if entry.is_dir() and entry.name != "__pycache__":
            _mirror(entry, dst / entry.name)
        elif entry.is_file():
            (dst / entry.name).symlink_to(entry)


def _bash(w: pathlib.Path, script: str) -> str:
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("COLUMNS", None)
    env.pop("NO_COLOR", None)
    r = subprocess.run(["bash", "-c", "exec 2>&1\n" + script], cwd=w, capture_output=True,
                       text=True, env=env, timeout=300)
    return r.stdout


def _matches(got: list[str], shown: list[str]) -> bool:
    """``shown`` with each "…" line standing for any run of lines."""
    if not shown:
        return not got
    if shown[0] in ("…", "..."):
        return any(_matches(got[i:], shown[1:]) for i in range(len(got) + 1))
    return bool(got) and got[0] == shown[0] and _matches(got[1:], shown[1:])


def test_console_examples_are_real_output(workdir):
    """Every console example prints exactly what the README shows, stderr and status included."""
    examples = console_examples()
    assert len(examples) >= 30
    script = []
    for i, (cmds, _, status_shown) in enumerate(examples):
        script.append(f"printf '\\036%d\\n' {i}")
        script.append(cmds[0])
        if status_shown:
            script += cmds[1:]
        else:
            script.append("__s=$?; [ $__s = 0 ] || echo \"(exit $__s)\"")
    parts = _bash(workdir, "\n".join(script)).split("\x1e")[1:]
    assert len(parts) == len(examples), parts[-1:]
    for (cmds, shown, _), part in zip(examples, parts):
        got = [l.rstrip() for l in part.split("\n", 1)[1].splitlines()]
        got = [TIMING.sub(" in N s:", l) for l in _trim(got)]
        want = [TIMING.sub(" in N s:", l) for l in shown]
        assert _matches(got, want), (cmds, "\n".join(got))


def test_every_runnable_line_is_a_console_example():
    assert commands_outside_console_blocks() == []


def test_every_example_names_files_that_exist(workdir):
    """No vm.elf or gpas.txt: a file an example reads is in the repository (or made by an
    example before it: copy.raw, after.raw, patch.xxd)."""
    made = set()
    for cmds, _, _ in console_examples():
        for cmd in cmds:
            for word in shlex.split(cmd, comments=True):
                word = word.split("@", 1)[0]
                if re.search(r"\.(raw|elf|kdump|flat|core|mig|save|lime|avml|txt|xxd|jsonl)$", word):
                    if re.search(r"(>|tee |cp \S+ )\s*" + re.escape(word), cmd):
                        made.add(word)
                    else:
                        assert word in made or (workdir / word).exists(), (word, cmd)
