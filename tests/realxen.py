"""The real Xen 4.17 whole-machine dumps of ``tests/data/realxen`` (and the ``xl dump-core`` of
``tests/data/realxen-domu``), decompressed once and cached across runs.

``path(name)`` takes a dump's name as produced (``p1.elf``, ``p2.kdump-zlib.kdump``,
``p1.areas.raw``, ``du1.core``), decompresses it from its ``.xz`` or ``.tar.xz`` container the
first time, checks the manifest's size and sha256, and returns the path. The cache lives in
``$XENRS_TEST_CACHE`` (default ``~/.cache/xenrs-tests``), keyed by sha256, so several checkouts
share one copy; files are written under a temporary name and renamed, so concurrent runs are
safe. ``truth(point)`` gives the manifest's true areas and Xen-internal copies of a point.

Memory: the ELF archive was made with a 448 MiB xz dictionary; members are streamed to disk in
1 MiB pieces, never read whole.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

DATA = Path(__file__).parent / "data"
REALXEN = DATA / "realxen"
DOMU = DATA / "realxen-domu"
POINTS = ("p1", "p2", "p3")
ELF = {p: f"{p}.elf" for p in POINTS}
FLAT = {p: f"{p}.kdump-zlib.flat" for p in POINTS}
PLAIN = "p2.kdump-zlib.kdump"
AREAS_RAW = {p: f"{p}.areas.raw" for p in POINTS}
AREAS_BASE = 0x17000000


@functools.cache
def manifest() -> dict:
    return json.loads((REALXEN / "MANIFEST.json").read_text())


@functools.cache
def domu_manifest() -> dict:
    return json.loads((DOMU / "MANIFEST.json").read_text())


def cache_dir() -> Path:
    root = os.environ.get("XENRS_TEST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xenrs-tests")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def entry(name: str) -> dict:
    for d in manifest()["dumps"]:
        if d["uncompressed"] == name:
            return d
    raise KeyError(f"{name} is not in tests/data/realxen/MANIFEST.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _materialise(dest: Path, size: int, sha256: str, opener) -> Path:
    if dest.exists() and dest.stat().st_size == size:
        return dest
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as out, opener() as src:
            shutil.copyfileobj(src, out, 1 << 20)
        if os.path.getsize(tmp) != size or _sha256(Path(tmp)) != sha256:
            raise AssertionError(f"{dest.name}: decompressed size/sha256 differ from the manifest")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _require(dest: Path, archive: Path) -> None:
    """Skip the test where the archive is not here: the sdist leaves these 42 MB out (MANIFEST.in
    says why); a git checkout has them."""
    if not dest.exists() and not archive.exists():
        import pytest

        pytest.skip(f"{archive.relative_to(DATA.parent.parent)} is not in this copy of the tests "
                    "(the sdist leaves the real Xen dumps out; use a git checkout)")


@functools.cache
def path(name: str) -> Path:
    """Path of the decompressed real dump ``name`` (see the module docstring)."""
    if name == "du1.core":
        core = domu_manifest()["dump_core"]
        dest = cache_dir() / f"{core['sha256'][:16]}-du1.core"
        _require(dest, DOMU / core["file"])
        return _materialise(dest, core["size"], core["sha256"],
                            lambda: lzma.open(DOMU / core["file"]))
    e = entry(name)
    dest = cache_dir() / f"{e['sha256'][:16]}-{name}"
    stored = e["stored_as"]
    archive = REALXEN / stored["file"]
    _require(dest, archive)
    if stored["container"] == "xz":
        opener = lambda: lzma.open(archive)  # noqa: E731
    else:
        def opener():
            tar = tarfile.open(archive, "r:xz")
            member = tar.extractfile(stored["member"])
            member._tar = tar  # keep the archive open as long as the member
            return member
    return _materialise(dest, e["size"], e["sha256"], opener)


def dump_arg(name: str) -> str:
    """The DUMP argument for ``name``: raw extracts carry their base (``p1.areas.raw@0x…``)."""
    p = str(path(name))
    return f"{p}@0x{AREAS_BASE:x}" if name.endswith(".areas.raw") else p


def truth(point: str) -> dict:
    """``{"true_areas": [...], "xen_internal_copies": [...]}`` of a point, as the manifest says."""
    return manifest()["points"][point]


def true_gpas(point: str) -> set[int]:
    """GPAs of every real record of the point: dom0's guest areas and Xen's own copies."""
    t = truth(point)
    return ({int(a["gpa"], 16) for a in t["true_areas"]}
            | {int(c["maddr"], 16) for c in t["xen_internal_copies"]})


NAMES = (*ELF.values(), *FLAT.values(), PLAIN, *AREAS_RAW.values())


def main(argv: list[str]) -> int:
    """``python tests/realxen.py DIR``: decompress every real dump (once, into the cache) and
    link it into DIR under its own name, as the README's examples expect (``realxen/p1.elf``)."""
    if len(argv) != 1:
        print("usage: python tests/realxen.py DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name in NAMES:
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(path(name))
        print(link)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
