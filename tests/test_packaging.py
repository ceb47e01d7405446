"""What a release ships: the wheel carries the LICENSE, the SPDX licence and a runnable example;
the sdist carries what its own test suite needs (helpers, fixtures with their subfolders), and
its tests run from it. Built with ``python -m build``, as a release is (issue 11)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "-o", str(out),
                        str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_wheel_has_license_and_a_runnable_example(dist, tmp_path):
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        data = "xenrs-{}.data/data/share/xenrs/examples/".format(wheel.name.split("-")[1])
        z.extract(data + "guest.raw", tmp_path)
    assert "License-Expression: MIT" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert {n[len(data):] for n in names if n.startswith(data)} == {
        p.name for p in (ROOT / "examples").iterdir()}
    r = subprocess.run([sys.executable, "-m", "xenrs_cli", "decode",
                        f"{tmp_path / data / 'guest.raw'}@0xc0000000", "--gpa", "0xc0001ff1",
                        "--format", "json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["state_entry_time"] == 5_200_000_000


def test_sdist_carries_its_tests_and_they_run(dist, tmp_path):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        t.extractall(tmp_path, filter="data")
    top = next(tmp_path.iterdir())
    for helper in ("clitools.py", "dumpwriter.py", "fixtures.py", "realxen.py"):
        assert (top / "tests" / helper).is_file(), helper
    assert (top / "LICENSE").is_file() and (top / ".ci" / "run").is_file()
    shipped = {p.name for p in (ROOT / "examples").iterdir()}
    assert shipped == {p.name for p in (top / "examples").iterdir()}
    def files(root):
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    data = {f for f in files(ROOT / "tests" / "data")
            if not (f.startswith("realxen") and f.endswith(".xz"))}
    assert data == files(top / "tests" / "data")
    fixtures = json.loads((top / "tests/data/MANIFEST.json").read_text())["dumps"]
    assert all((top / "tests/data" / d["stored_as"]).is_file() for d in fixtures)
    # the real Xen dumps are described but not shipped (MANIFEST.in says why)
    assert (top / "tests/data/realxen/MANIFEST.json").is_file()
    assert not list((top / "tests/data/realxen").glob("*.xz"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "tests/test_fixtures_raw.py", "tests/test_cli_decode.py"],
                       cwd=top, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout and "error" not in r.stdout.lower()
