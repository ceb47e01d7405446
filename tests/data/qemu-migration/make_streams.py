#!/usr/bin/env python3
"""Write real QEMU migration streams with planted runstate records (the qemu-migration fixtures).

Usage (as root on Debian 12; stdlib only):

    python3 make_streams.py --install      # apt-get QEMU 7.2; download + dpkg -x QEMU 10.0
    python3 make_streams.py [--q10 DIR]    # write the streams and MANIFEST.json here

Each guest boots with no OS (``-S``: the vCPUs never run) and 3600 MiB of RAM, so that both
machine types split RAM around the 4 GiB hole (pc: 3 GiB below, q35: 2 GiB below; QEMU
hw/i386/pc_piix.c and pc_q35.c). QEMU's generic loader (``-device loader,file=F,addr=GPA,
force-raw=on``) copies each planted record into guest RAM at reset. QMP ``migrate`` then writes
the stream; ``info mtree -f`` (QEMU's own flat view) records where RAM is, and HMP ``xp`` reads
every planted record back from the source VM, so the manifest's bytes are what QEMU itself saw.

Variants: QEMU 7.2 ``exec:`` and ``exec:`` with the ``compress`` capability (7.2 has no
``file:`` URI: migration/file.c arrived in 8.2); QEMU 10.0 ``exec:``, ``file:``, ``file:`` with
``mapped-ram``, with ``mapped-ram`` + ``multifd`` (2 channels), and ``mapped-ram`` at file
offset 4096 (``file:F,offset=0x1000``, as libvirt's sparse save images are written), and with
OVMF in two pflash chips (``ovmf`` package) instead of SeaBIOS. Each for ``pc`` and ``q35``
(OVMF: ``q35`` only); and ``booted`` (7.2 and 10.0): SeaBIOS runs and the guest keeps running
during the migration.
Streams are stored ``xz``; ``mapped-ram`` files (sparse, as large as the guest's RAM) are
stored as a GNU sparse tar in ``.tar.xz``, so extracting them is fast and stays sparse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RAM_MIB = 3600
Q10_PACKAGES = ("qemu-system-x86", "qemu-system-common", "qemu-system-data", "seabios")
Q10_DEFAULT = "/opt/qemu10"

# (name, GPA) of each planted 48-byte vcpu_runstate_info record. GPAs are chosen in every
# kind of RAM: low RAM, the last page below the hole, the first page above 4 GiB and the
# last page of RAM. "top_low" and "top_high" depend on the machine type's split.
def plant_points(machine: str) -> list[tuple[str, int]]:
    below = 0xC0000000 if machine == "pc" else 0x80000000
    above = RAM_MIB * 2**20 - below
    return [
        ("low", 0x7000),
        ("mid", 0x1234000 + 0x40),
        ("top_low", below - 0x1000 + 0x100),
        ("above_4g", 0x100000000 + 0x80),
        ("above_4g_2", 0x100000000 + 0x2345000 + 0x7C0),
        ("top_high", 0x100000000 + above - 0x1000 + 0xF00),
    ]


def record(name: str, machine: str) -> tuple[dict, bytes]:
    """A deterministic vcpu_runstate_info (64-bit layout) for one planted point."""
    seed = int.from_bytes(hashlib.sha256(f"{machine}/{name}".encode()).digest()[:8], "little")
    state = seed % 4
    times = [(seed >> (8 * i) & 0xFFFF) * 1_000_003 + i for i in range(4)]
    entry = sum(times)  # consistent: xenrs scan finds it
    blob = struct.pack("<iIQ4Q", state, 0, entry, *times)
    return {"state": state, "state_entry_time": entry, "time": times}, blob


class QMP:
    def __init__(self, path: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())
        self.ok("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name, **({"arguments": args} if args else {})}
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError(f"QMP closed during {name}")
            r = json.loads(line)
            if "event" not in r:
                return r

    def ok(self, name, **args):
        r = self.cmd(name, **args)
        if "error" in r:
            raise RuntimeError(f"QMP {name} failed: {r['error']}")
        return r["return"]

    def hmp(self, line: str) -> str:
        return self.ok("human-monitor-command", **{"command-line": line})


def xp_bytes(q: QMP, gpa: int, n: int) -> bytes:
    text = q.hmp(f"xp /{n}xb {gpa:#x}")
    got = [int(v, 16) for line in text.splitlines() if ":" in line
           for v in line.split(":", 1)[1].split()]
    if len(got) != n:
        raise RuntimeError(f"xp returned {len(got)} bytes: {text!r}")
    return bytes(got)


def install(q10_dir: str) -> None:
    """QEMU 7.2 from bookworm; QEMU 10.0 from bookworm-backports, unpacked (not installed)."""
    src = Path("/etc/apt/sources.list.d/bookworm-backports.sources")
    if not any("bookworm-backports" in p.read_text()
               for p in Path("/etc/apt/sources.list.d").glob("*") if p.is_file()):
        src.write_text("Types: deb\nURIs: http://deb.debian.org/debian\n"
                       "Suites: bookworm-backports\nComponents: main\n"
                       "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-q", "qemu-system-x86", "xz-utils"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    with tempfile.TemporaryDirectory() as dl:
        subprocess.run(["apt-get", "download",
                        *(f"{p}/bookworm-backports" for p in Q10_PACKAGES)], cwd=dl, check=True)
        for deb in sorted(Path(dl).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), q10_dir], check=True)


class Tool:
    def __init__(self, tid: str, binary: str, datadirs: list[str]):
        self.id, self.binary, self.datadirs = tid, binary, datadirs
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
        self.version = out.stdout.splitlines()[0]

    def argv(self) -> list[str]:
        return [self.binary] + [a for d in self.datadirs for a in ("-L", d)]


# examples/guest.mig: a 4 MiB pc guest with the two records of examples/guest.raw
EXAMPLE_RECORDS = [
    ("crossing_64", 0x101FF1, struct.pack("<i4sQ4Q", 0, b"\0" * 4, 5_200_000_000, 4_000_000_000,
                                          200_000_000, 1_000_000_000, 0)),
    ("compat", 0x102404, struct.pack("<iQ4Q", 1, 7_350_000_000, 5_000_000_000, 1_250_000_000,
                                     1_100_000_000, 0)),
]


OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"  # Debian's ovmf package
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


def run_variant(tool: Tool, machine: str, variant: str, caps: dict, params: dict, uri: str,
                work: Path, boot: bool, ram_mib: int = RAM_MIB, example: bool = False) -> dict:
    blobs = []
    points = []
    planted = ([(n, g, None, b) for n, g, b in EXAMPLE_RECORDS] if example else
               [(n, g, *record(n, machine)) for n, g in plant_points(machine)])
    for name, gpa, values, blob in planted:
        values = values or {}
        path = work / f"{machine}-{name}.bin"
        path.write_bytes(blob)
        blobs.append((gpa, path))
        points.append({"name": name, "gpa": f"0x{gpa:x}", "planted": blob.hex(), **values})
    sock = str(work / "qmp.sock")
    argv = tool.argv() + ["-machine", machine, "-m", f"{ram_mib}M", "-smp", "2",
                          "-accel", "tcg", "-nodefaults", "-display", "none",
                          "-qmp", f"unix:{sock},server=on,wait=off"]
    # -S: the vCPUs never run. Booted: SeaBIOS runs (it shadows itself into RAM through the PAM
    # registers and finds nothing to boot), with a VGA device, and the guest keeps running
    # during the migration, so pages it dirties (the BIOS tick count at 0x46c) are resent.
    argv += ["-vga", "std"] if boot else ["-S"]
    if variant == "ovmf":  # UEFI firmware in two pflash chips instead of SeaBIOS's pc.bios
        shutil.copyfile(OVMF_VARS, work / "vars.fd")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={work / 'vars.fd'}"]
    for gpa, path in blobs:
        argv += ["-device", f"loader,file={path},addr={gpa:#x},force-raw=on"]
    log = open(work / "qemu.log", "w+")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        q = QMP(sock)
        machine_type = next(m["name"] for m in q.ok("query-machines")
                            if m["name"] == machine or m.get("alias") == machine)
        if boot:
            time.sleep(4)  # SeaBIOS under TCG is done in about a second
        mtree = q.hmp("info mtree -f")
        if caps:
            q.ok("migrate-set-capabilities",
                 capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
        if params:
            q.ok("migrate-set-parameters", **params)
        q.ok("migrate", uri=uri)
        deadline = time.monotonic() + 600
        while True:
            st = q.ok("query-migrate")
            if st.get("status") == "completed":
                break
            if st.get("status") in ("failed", "cancelled") or time.monotonic() > deadline:
                raise RuntimeError(f"migration {variant}: {st}")
            time.sleep(0.1)
        # the source VM is paused now: what it holds is what the stream must give back
        for p in points:
            n = len(p["planted"]) // 2
            p["bytes"] = xp_bytes(q, int(p["gpa"], 16), n).hex()
            if not boot and p["bytes"] != p["planted"]:
                raise RuntimeError(f"{p['name']}: xp reads {p['bytes']}, planted {p['planted']}")
        bda = {"gpa": "0x400", "bytes": xp_bytes(q, 0x400, 256).hex()}
        migrated = {k: st.get("ram", {}).get(k) for k in ("total", "transferred", "duplicate",
                                                           "normal", "dirty-sync-count")}
        q.cmd("quit")
    finally:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()  # our own child
            proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
    return {"machine_type": machine_type, "booted": boot, "points": points, "bda": bda,
            "query_migrate_ram": migrated, "flat_view": flat_view(mtree), "qemu_log": text.strip()}


def flat_view(mtree: str) -> list[dict]:
    """RAM, ROM and ROM-device (pflash) ranges of the flat view of address space "memory"
    (``info mtree -f``): GPA range, RAM block and offset in it, as QEMU itself maps them."""
    for view in mtree.split("FlatView #")[1:]:
        if 'AS "memory"' not in view:
            continue
        out = []
        for m in re.finditer(r"([0-9a-f]{16})-([0-9a-f]{16}) \(prio \d+, (ram|rom|romd)\): "
                             r"(\S+)(?: @([0-9a-f]{16}))?", view):
            out.append({"gpa": f"0x{int(m[1], 16):x}", "end": f"0x{int(m[2], 16) + 1:x}",
                        "kind": m[3], "block": m[4], "offset": f"0x{int(m[5] or '0', 16):x}"})
        return out
    raise RuntimeError("no flat view of address space memory in info mtree -f")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def store(path: Path, sparse: bool) -> str:
    if sparse:  # GNU sparse tar: only the written extents are archived
        stored = path.with_name(path.name + ".tar.xz")
        subprocess.run(["tar", "-C", str(path.parent), "--sparse", "--format=gnu", "-cJf",
                        str(stored), path.name], check=True, env={**os.environ, "XZ_OPT": "-9"})
    else:
        stored = path.with_name(path.name + ".xz")
        subprocess.run(["xz", "-9", "-k", "-f", str(path)], check=True)
    return stored.name


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--install", action="store_true", help="install/unpack both QEMUs first")
    ap.add_argument("--q10", default=Q10_DEFAULT, help="where QEMU 10.0 is unpacked")
    ap.add_argument("--q72", default="/usr/bin/qemu-system-x86_64")
    ap.add_argument("--out", default=str(HERE))
    ap.add_argument("--only", help="regexp of stream names to write")
    ap.add_argument("--example", metavar="PATH",
                    help="write only the README's small example stream (pc, 4 MiB) to PATH")
    args = ap.parse_args(argv)
    if args.install:
        install(args.q10)
    tools = {
        "q72": Tool("q72", args.q72, []),
        "q10": Tool("q10", f"{args.q10}/usr/bin/qemu-system-x86_64",
                    [f"{args.q10}/usr/share/seabios", f"{args.q10}/usr/share/qemu"]),
    }
    variants = [  # (tool, name, capabilities, parameters, uri kind, booted)
        ("q72", "exec", {}, {}, "exec", False),
        ("q72", "compress", {"compress": True}, {"compress-threads": 1}, "exec", False),
        ("q72", "booted", {}, {}, "exec", True),
        ("q10", "exec", {}, {}, "exec", False),
        ("q10", "file", {}, {}, "file", False),
        ("q10", "mapped-ram", {"mapped-ram": True}, {}, "file", False),
        ("q10", "mapped-ram-multifd", {"mapped-ram": True, "multifd": True},
         {"multifd-channels": 2}, "file", False),
        ("q10", "booted", {}, {}, "exec", True),
        # what libvirt's sparse save format has QEMU write: mapped-ram at file offset 4096,
        # libvirt's header and XML going in front (the tests write them there)
        ("q10", "mapped-ram-at-4k", {"mapped-ram": True}, {}, "file-offset", False),
        ("q10", "ovmf", {}, {}, "exec", False),
    ]
    if args.example:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "guest.mig"
            info = run_variant(tools["q10"], "pc", "exec", {}, {}, f"exec:cat > {target}",
                               Path(tmp), False, ram_mib=4, example=True)
            shutil.copyfile(target, args.example)
        print(f"wrote {args.example}: {info['machine_type']}, "
              + ", ".join(f"{p['name']} at {p['gpa']}" for p in info["points"]), file=sys.stderr)
        return
    out = Path(args.out)
    manifest = {"generator": "make_streams.py", "ram_mib": RAM_MIB,
                "record_layout": "vcpu_runstate_info, 64-bit (48 bytes)", "tools": {},
                "streams": []}
    old = out / "MANIFEST.json"
    if args.only and old.exists():
        manifest = json.loads(old.read_text())
    for tid, tool in tools.items():
        manifest["tools"][tid] = tool.version
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for tid, vname, caps, params, kind, boot in variants:
            # OVMF is the q35 firmware in practice, and its streams are the big ones (1.7 MB)
            for machine in ("q35",) if vname == "ovmf" else ("pc", "q35"):
                name = f"{machine}.{tid}.{vname}.mig"
                if args.only and not re.search(args.only, name):
                    continue
                target = work / name
                uri = {"exec": f"exec:cat > {target}", "file": f"file:{target}",
                       "file-offset": f"file:{target},offset=0x1000"}[kind]
                print(f"{name}: {tools[tid].version}", file=sys.stderr)
                info = run_variant(tools[tid], machine, vname, caps, params, uri, work, boot)
                size = target.stat().st_size
                entry = {"file": name, "tool": tid, "machine": machine, "variant": vname,
                         "capabilities": caps, "parameters": params,
                         "uri": uri.replace(str(work), "$WORK"), "size": size,
                         "sha256": sha256(target), **info}
                entry["stored_as"] = store(target, sparse="mapped-ram" in vname)
                shutil.move(str(work / entry["stored_as"]), out / entry["stored_as"])
                target.unlink()
                manifest["streams"] = [s for s in manifest["streams"] if s["file"] != name]
                manifest["streams"].append(entry)
    manifest["streams"].sort(key=lambda s: s["file"])
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
