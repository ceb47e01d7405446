"""The core knows nothing of click or rich, and ``decode`` does not load what it does not use."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import xenrs_cli

# Everything but the command line and the human renderers.
SHELL_PACKAGES = ("xenrs_cli.cli", "xenrs_cli.render")


def core_modules() -> list[str]:
    names = []
    for m in pkgutil.walk_packages(xenrs_cli.__path__, "xenrs_cli."):
        if m.name in ("xenrs_cli.__main__",) or m.name.startswith(SHELL_PACKAGES):
            continue
        names.append(m.name)
    return names


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_neither_click_nor_rich():
    mods = core_modules()
    assert "xenrs_cli.layouts" in mods and "xenrs_cli.decode" in mods
    loaded = loaded_after("\n".join(f"import {m}" for m in mods))
    assert not {m for m in loaded if m.split(".")[0] in ("click", "rich")}


def test_decode_json_path_loads_no_rich_numpy_or_codecs(tmp_path):
    img = tmp_path / "z.raw"
    img.write_bytes(bytes(4096))
    code = ("import sys\nfrom xenrs_cli.cli import xenrs\n"
            f"sys.argv = ['xenrs', 'decode', {str(img)!r}, '--gpa', '0', '--format', 'json']\n"
            "try:\n    xenrs.main()\nexcept SystemExit:\n    pass")
    loaded = loaded_after(code)
    heavy = {m.split(".")[0] for m in loaded} & {"rich", "numpy", "cramjam", "lzallright"}
    assert not heavy
    # nor the page-table walker, the symbols or the scan: --gpa needs none of them
    unused = {"xenrs_cli.guest_va", "xenrs_cli.paging", "xenrs_cli.symbols", "xenrs_cli.scan",
              "xenrs_cli.scan_rules"}
    assert not unused & set(loaded), unused & set(loaded)
