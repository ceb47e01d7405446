"""Coverage-guided fuzzing of xenrs's readers, ``scan`` and command line (atheris).

Each input is one byte choosing a target and the bytes of a dump file (written to a memfd, so
xenrs opens it by path as a user's file). Targets:

0-3  ``open_dump`` as auto/raw/elf/kdump, then ``info``'s record, every extent, and ``decode``
     (both layouts, missing bytes allowed) at the first and last bytes of every segment and at
     the page edges around them;
4    ``scan`` (4 KiB windows, both layouts) over the first 4 MiB of the dump, and with
     ``--align 1`` over its first 64 KiB;
5-7  the CLI in-process: ``info --format json``, ``decode --gpa`` at a segment edge, ``scan``.

A :class:`~xenrs_cli.errors.XenrsError` (one line, exit 2 or 3) is the expected answer to a bad
file; anything else, exit 70 from the CLI, more than ``MEMORY_LIMIT`` of address space or more
than atheris's ``-timeout`` seconds is a finding. Run (see README "Fuzzing"):

    pip install atheris
    python tests/fuzz/make_corpus.py /tmp/xenrs-corpus
    python tests/fuzz/fuzz_xenrs.py /tmp/xenrs-corpus -timeout=10 -runs=1000000
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys

import atheris

with atheris.instrument_imports(include=["xenrs_cli"]):
    from xenrs_cli.cli import xenrs
    from xenrs_cli.decode import decode_at
    from xenrs_cli.dumps import open_dump
    from xenrs_cli.errors import XenrsError
    from xenrs_cli.info import describe
    from xenrs_cli.scan import ScanOptions, Scanner

MEMORY_LIMIT = 3 << 30  # address space: a believed multi-GB claim fails (1 GiB also failed scan's own 16 MiB scratch)
FORMATS = ("auto", "raw", "elf", "kdump")
FD = os.memfd_create("xenrs-fuzz")
PATH = f"/proc/self/fd/{FD}"
EXECUTIONS = [0]


def _write(data: bytes) -> None:
    os.ftruncate(FD, 0)
    os.pwrite(FD, data, 0)


def _edges(space) -> list[int]:
    out = []
    page = space.page_size
    for seg in space.segments[:3] + space.segments[-3:]:
        for g in (seg.gpa, seg.end):
            out += [g - 47, g - 20, (g // page) * page - 24, (g // page + 1) * page - 24]
    return [g for g in out if g >= 0]


def _open_and_read(fmt: str) -> None:
    with open_dump(PATH, fmt) as d:
        json.dumps(describe(d, "fuzz"), default=str)
        for _ in d.space.extents():
            pass
        for g in _edges(d.space):
            for layout in ("64", "compat"):
                decode_at(d.space, g, layout, allow_missing=True)


def _scan() -> None:
    with open_dump(PATH) as d:
        first = d.space.segments[0].gpa if d.space.segments else 0
        # --align 1 only on the first 64 KiB: a file full of passing readings makes the scan
        # resolve each (scan.py), which under instrumentation dominated the campaign
        opts = ScanOptions(align=1, start=first, end=first + (64 << 10), chunk_size=4096)
        for _ in Scanner(d.space, opts).hits():
            pass
        opts = ScanOptions(start=first, end=first + (4 << 20), chunk_size=4096)
        for _ in Scanner(d.space, opts).hits():
            pass


def _cli(args: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            xenrs.main(args=args, prog_name="xenrs")
            code = 0
        except SystemExit as e:
            code = e.code
    if code not in (0, 1, 2, 3):
        raise RuntimeError(f"xenrs {' '.join(args)} exited {code}: {err.getvalue()}")
    if code in (2, 3) and len(err.getvalue().strip().splitlines()) != 1:
        raise RuntimeError(f"xenrs {' '.join(args)}: not one line: {err.getvalue()!r}")


def test_one_input(data: bytes) -> None:
    EXECUTIONS[0] += 1
    if FINDINGS and EXECUTIONS[0] % 500 == 0:
        _count()
    if len(data) < 2:
        return
    target, body = data[0] % 8, data[1:]
    _write(body)
    try:
        if target < 4:
            _open_and_read(FORMATS[target])
        elif target == 4:
            _scan()
        elif target == 5:
            _cli(["info", PATH, "--format", "json"])
        elif target == 6:
            _cli(["decode", PATH, "--gpa", "0x1000", "--allow-missing"])
        else:
            _cli(["scan", PATH, "--format", "json", "--range", "0x0-0x400000"])
    except XenrsError:
        pass
    except Exception as e:  # a finding
        if FINDINGS is None:
            raise
        _record(e, data)


# XENRS_FUZZ_FINDINGS=DIR: record each distinct finding (exception type and innermost xenrs
# frame) with its input in DIR and go on, instead of stopping at the first (a long run).
FINDINGS = os.environ.get("XENRS_FUZZ_FINDINGS")
SEEN: set[str] = set()


def _count() -> None:
    """This process's executions so far, in a file of its own (a timeout ends it abruptly)."""
    with open(os.path.join(FINDINGS, f"executions-{os.getpid()}.txt"), "w") as f:
        f.write(f"{EXECUTIONS[0]}\n")


def _record(e: Exception, data: bytes) -> None:
    import hashlib
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "xenrs_cli" in f.filename]
    where = f"{frames[-1].filename.split('xenrs_cli/')[-1]}:{frames[-1].lineno}" if frames else "?"
    key = f"{type(e).__name__} at {where}"
    if key in SEEN:
        return
    SEEN.add(key)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(FINDINGS, f"finding-{name}"), "wb") as f:
        f.write(data)
    with open(os.path.join(FINDINGS, "findings.txt"), "a") as f:
        f.write(f"{key}: {str(e)[:300]!r} (input finding-{name})\n")


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        print(f"xenrs fuzz: {EXECUTIONS[0]} executions", file=sys.stderr)
        if FINDINGS:
            _count()


if __name__ == "__main__":
    main()
