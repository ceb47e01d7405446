"""The real QEMU dumps of ``tests/data`` (stored ``xz -9``), decompressed once per session.

``fixture_path(name)`` takes the name of a dump as produced (``d1.q72.elf``), decompresses its
``.xz`` copy into one temporary directory the first time it is asked for, checks the size and
sha256 the manifest records, and returns the path; ``manifest()`` is ``MANIFEST.json`` parsed.
Other test modules import these (``from fixtures import fixture_path, manifest``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import lzma
import shutil
import tempfile
from pathlib import Path

DATA = Path(__file__).parent / "data"


@functools.cache
def manifest() -> dict:
    return json.loads((DATA / "MANIFEST.json").read_text())


@functools.cache
def _tmpdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="xenrs-fixtures-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def entry(name: str) -> dict:
    """The manifest's ``dumps[]`` entry of the dump produced as ``name``."""
    for d in manifest()["dumps"]:
        if d["file"] == name:
            return d
    raise KeyError(f"{name} is not in tests/data/MANIFEST.json")


@functools.cache
def fixture_path(name: str) -> Path:
    """Path of the decompressed dump ``name`` (decompressed once, verified against the manifest)."""
    e = entry(name)
    out = _tmpdir() / name
    data = lzma.decompress((DATA / e["stored_as"]).read_bytes())
    if len(data) != e["size"] or hashlib.sha256(data).hexdigest() != e["sha256"]:
        raise AssertionError(f"{e['stored_as']} does not decompress to the manifest's size/sha256")
    out.write_bytes(data)
    return out


def cases(e: dict) -> list[dict]:
    """The planted records a dump holds (the manifest's cases minus ``cases_not_covered``)."""
    skip = set(e.get("cases_not_covered") or [])
    return [c for c in manifest()["guests"][e["guest"]]["cases"] if c["name"] not in skip]


def absent_probes(e: dict) -> list[dict]:
    return manifest()["guests"][e["guest"]]["absent"]


def accounting_of(case: dict) -> str:
    """SPEC §7's accounting of a planted record, from the manifest's values (not xenrs's code):
    exact when the times sum to the entry time (mod 2^64), offset when each time and their sum
    are below it, else broken."""
    entry, times = case["state_entry_time"], case["time"]
    if sum(times) % 2**64 == entry:
        return "exact"
    return "offset" if sum(times) < entry and max(times) <= entry else "broken"
