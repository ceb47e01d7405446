"""The real QEMU migration streams of ``tests/data/qemu-migration``, decompressed once.

``path(name)`` gives the stream as QEMU wrote it (``pc.q10.exec.mig``), decompressed into the
shared test cache (``$XENRS_TEST_CACHE``, default ``~/.cache/xenrs-tests``, keyed by sha256)
the first time. ``.xz`` streams are decompressed in 1 MiB pieces; ``mapped-ram`` files are
GNU sparse members of a ``.tar.xz`` and are extracted by ``tarfile``, which seeks over the holes,
so a 3.6 GiB file costs its few MiB of data on disk and in time.

``dump_path(name)`` is what the tests open: the stream itself, or, for the ``mapped-ram-at-4k``
streams (QEMU wrote them at file offset 4096, as libvirt has it do for a sparse save image), a
sparse copy with libvirt's header and domain XML in front, written by the tests' independent
writer (``migwriter.libvirt_header``, format 6 = sparse).
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

import migwriter
from realxen import _sha256, cache_dir

LIBVIRT_XML = b"<domain type='kvm'>\n  <name>sparse1</name>\n</domain>\n"
SPARSE_FORMAT = 6  # libvirt qemu_saveimage_format.h QEMU_SAVE_FORMAT_SPARSE

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


def sparse_copy(src: Path, dst: Path) -> None:
    """Copy only the data extents of ``src`` (SEEK_DATA/SEEK_HOLE), keeping ``dst`` sparse."""
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.truncate(size)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # no data after pos
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            fin.seek(start)
            fout.seek(start)
            left = end - start
            while left:
                chunk = fin.read(min(left, 1 << 20))
                fout.write(chunk)
                left -= len(chunk)
            pos = end


@functools.cache
def dump_path(name: str) -> Path:
    src = path(name)
    if "at-4k" not in name:
        return src
    dest = src.with_name(src.name + ".save")
    if not dest.exists():
        header = migwriter.libvirt_header(LIBVIRT_XML, fmt=SPARSE_FORMAT)
        assert len(header) == 4096
        tmp = dest.with_name("." + dest.name + f".{os.getpid()}")
        sparse_copy(src, tmp)
        with open(tmp, "r+b") as f:
            assert f.read(4096) == bytes(4096)  # QEMU left the first 4 KiB to libvirt
            f.seek(0)
            f.write(header)
        os.replace(tmp, dest)
    return dest
