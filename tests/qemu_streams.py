"""The real QEMU migration streams of ``tests/data/qemu-migration``, decompressed once.

``path(name)`` gives the stream as QEMU wrote it (``pc.q10.exec.mig``), decompressed into the
shared test cache (``$XENRS_TEST_CACHE``, default ``~/.cache/xenrs-tests``, keyed by sha256)
the first time. ``.xz`` streams are decompressed in 1 MiB pieces; ``mapped-ram`` files are
GNU sparse members of a ``.tar.xz`` and are extracted by ``tarfile``, which seeks over the holes,
so a 3.6 GiB file costs its few MiB of data on disk and in time.
"""

from __future__ import annotations

import functools
import json
import lzma
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from realxen import _sha256, cache_dir

DATA = Path(__file__).parent / "data" / "qemu-migration"


@functools.cache
def manifest() -> dict:
    return json.loads((DATA / "MANIFEST.json").read_text())


def streams() -> list[dict]:
    return manifest()["streams"]


def entry(name: str) -> dict:
    return next(s for s in streams() if s["file"] == name)


@functools.cache
def path(name: str) -> Path:
    e = entry(name)
    dest = cache_dir() / f"{e['sha256'][:16]}-{name}"
    if dest.exists() and dest.stat().st_size == e["size"]:
        return dest
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".qemu-migration-") as tmp:
        out = Path(tmp) / name
        stored = DATA / e["stored_as"]
        if e["stored_as"].endswith(".tar.xz"):
            with tarfile.open(stored, "r:xz") as tar:
                tar.extract(name, tmp, filter="data")
        else:
            with lzma.open(stored) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        # Hashing a sparse 3.6 GiB file would read 3.6 GiB of holes: its archive is checked by
        # xz's CRC64 instead, and the size here; the other streams are hashed.
        sparse = e["stored_as"].endswith(".tar.xz")
        if out.stat().st_size != e["size"] or (not sparse and _sha256(out) != e["sha256"]):
            raise AssertionError(f"{name}: decompressed size/sha256 differ from the manifest")
        os.replace(out, dest)
    return dest
