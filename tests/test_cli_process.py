"""The process side of the command line, tested as a user meets it: real pipes, FIFOs, signals,
terminals of 80 columns, file systems that are read-only or full (issue 11).

Each test runs ``python -m xenrs_cli`` as a subprocess where the behaviour belongs to the process
(exit status through a pipe, signals, what ``-o`` does to the file system).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clitools import cli, one_line_error
from dumpwriter import runstate64

ROOT = Path(__file__).resolve().parent.parent
GUEST = ROOT / "examples" / "guest.raw"  # the README's example: areas at 0xc0001ff1, 0xc0002404
XENRS = [sys.executable, "-m", "xenrs_cli"]


def run(*args, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    return subprocess.run([*XENRS, *map(str, args)], **kw)


def shell(script: str, **kw) -> subprocess.CompletedProcess:
    """``script`` in bash with ``X`` = the xenrs command (for pipelines and PIPESTATUS)."""
    env = dict(os.environ, X=" ".join(XENRS))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env=env, **kw)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A 1 MiB raw image with 1,000 valid 64-bit records (2,000 hits with their compat twins
    under ``--loose``, which reports what the bare rules pass, as it finds it): far more output
    than a pipe buffers."""
    buf = bytearray(1 << 20)
    for i in range(1000):
        rec = runstate64(0, 0, (2_000_000_000 + i, 300, 400, 0))
        rec = rec[:8] + (2_000_000_700 + i).to_bytes(8, "little") + rec[16:]
        buf[i * 256:i * 256 + 48] = rec
    path = tmp_path_factory.mktemp("many") / "many.raw"
    path.write_bytes(buf)
    return path


def no_temp_files(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.startswith(".xenrs-")]


# --- 1. a closed pipe ------------------------------------------------------------------------

def test_scan_into_head_exits_141(many):
    r = shell(f'$X scan {many} --loose --format json | head -1 >/dev/null; '
              'echo "${PIPESTATUS[0]}"')
    assert r.stdout.strip() == "141", r
    assert r.stderr.count("xenrs: error") == 0


def test_decode_gpa_stdin_into_head_exits_141(many):
    r = shell(f'for i in $(seq 0 999); do printf "0x%x\\n" $((i * 256)); done | '
              f'$X decode {many} --gpa - --format json | head -1 | wc -l; '
              'echo "${PIPESTATUS[1]}"')
    assert r.stdout.split() == ["1", "141"], r
    assert "Traceback" not in r.stderr and "error" not in r.stderr


def test_table_into_closed_pipe_exits_141(many):
    r = shell(f'COLUMNS=80 $X scan {many} --loose --format table 2>/dev/null | head -1 >/dev/null; '
              'echo "${PIPESTATUS[0]}"')
    assert r.stdout.strip() == "141"


# --- 2. -o into what is not a regular file ---------------------------------------------------

def test_output_into_a_fifo_writes_into_it(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    r = run("decode", f"{GUEST}@0xc0000000", "--gpa", "0xc0001ff1", "--format", "json",
            "-o", fifo)
    out, _ = reader.communicate(timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(out)["gpa"] == "0xc0001ff1"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still the FIFO, not replaced
    no_temp_files(tmp_path)


def test_output_into_a_character_device_leaves_it_a_device():
    r = run("info", GUEST, "--format", "json", "-o", "/dev/null")
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_output_follows_a_symlink(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old\n")
    os.chmod(target, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(target.name)
    r = run("info", GUEST, "--format", "json", "-o", link)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == "real.json"
    assert json.loads(target.read_text())["format"] == "raw"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    no_temp_files(tmp_path)


def test_output_through_a_dangling_symlink_creates_its_target(tmp_path):
    (tmp_path / "link.json").symlink_to("new.json")
    r = run("info", GUEST, "--format", "json", "-o", tmp_path / "link.json")
    assert r.returncode == 0 and (tmp_path / "new.json").is_file()
    assert (tmp_path / "link.json").is_symlink()


def test_output_into_a_directory_is_a_usage_error(tmp_path):
    one_line_error(cli("info", GUEST, "-o", tmp_path), 2, "--output", "is a directory")


# --- 3. devices and pipes as the dump ----------------------------------------------------------

@pytest.mark.parametrize("dev", ["/dev/zero", "/dev/urandom"])
def test_character_devices_are_refused_at_once(dev):
    r = run("decode", dev, "--gpa", "0", timeout=20)
    assert r.returncode == 3
    assert r.stderr.decode().startswith(f"xenrs: error: {dev}: is a character device")


def test_character_device_on_stdin_is_refused():
    with open("/dev/zero", "rb") as zero:
        r = run("decode", "-", "--gpa", "0", stdin=zero, timeout=20)
    assert r.returncode == 3 and b"is a character device" in r.stderr


def test_proc_file_is_not_called_empty():
    r = run("decode", "/proc/self/status", "--gpa", "0")
    assert r.returncode == 3
    err = r.stderr.decode()
    assert "has no size" in err and "empty" not in err


def test_pipe_on_stdin_is_spooled():
    r = shell(f"cat {GUEST} | $X decode -@0xc0000000 --gpa 0xc0001ff1 --format json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state_entry_time"] == 5_200_000_000


def test_named_fifo_as_the_dump_is_spooled(tmp_path):
    fifo = tmp_path / "dump.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat {GUEST} > {fifo}"])
    r = run("decode", f"{fifo}@0xc0000000", "--gpa", "0xc0001ff1", "--format", "json")
    writer.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["gpa"] == "0xc0001ff1"


def _private_mount(script: str) -> subprocess.CompletedProcess:
    """``script`` in a private mount namespace with ``$M`` a fresh mount point; skip where
    mounting is not allowed."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0 or shutil.which("unshare") is None:
        pytest.skip("no private mount namespace here (unshare -m)")
    env = dict(os.environ, X=" ".join(XENRS), M="/mnt")
    return subprocess.run(["unshare", "-m", "bash", "-c", script], capture_output=True,
                          text=True, timeout=120, env=env)


def test_spool_stops_with_a_clear_error_when_a_write_fails():
    # a file size limit (ulimit -f, in KiB) is what makes the write itself fail
    r = _private_mount('mount -t tmpfs -o size=64m none "$M" || exit 99; trap "" XFSZ; '
                       'head -c 8000000 /dev/urandom | (ulimit -f 2048; '
                       'TMPDIR="$M" $X decode - --gpa 0)')
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs")
    assert r.returncode == 3, r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "temporary directory /mnt is full" in lines[0], r.stderr
    assert "TMPDIR" in lines[0]


def test_spool_shows_progress_on_a_terminal():
    import pty

    primary, secondary = pty.openpty()
    try:
        p = subprocess.Popen(f"head -c 70000000 /dev/zero | {' '.join(XENRS)} decode - "
                             "--gpa 0x1000 --format json", shell=True, stdout=subprocess.PIPE,
                             stderr=secondary)
        out, _ = p.communicate(timeout=120)
        os.close(secondary)
        secondary = -1
        err = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    assert p.returncode == 0 and json.loads(out)["gpa"] == "0x1000"
    assert b"xenrs: spooling <stdin> to a temporary file: 64 MiB" in err


# --- 4. user errors, not internal ones ---------------------------------------------------------

def test_output_on_a_read_only_file_system_is_a_usage_error():
    r = _private_mount('mount -t tmpfs -o ro none "$M" || exit 99; '
                       f'$X info {GUEST} -o "$M/out.json"')
    if r.returncode == 99:
        pytest.skip("cannot mount a tmpfs")
    assert r.returncode == 2, r
    assert r.stderr.splitlines() == ["xenrs: error: --output /mnt/out.json: Read-only file "
                                     "system"]


def test_output_on_a_full_file_system_leaves_nothing(many):
    r = _private_mount('mount -t tmpfs -o size=64k none "$M" || exit 99; '
                       f'$X scan {many} --loose --format json -o "$M/hits.json"; echo "rc=$?"; ls -A "$M"')
    if "rc=" not in r.stdout:
        pytest.skip("cannot mount a tmpfs")
    assert "rc=2" in r.stdout, r
    assert r.stdout.strip().endswith("rc=2")  # no output, no temporary file left
    assert "xenrs: error: --output /mnt/hits.json: No space left on device" in r.stderr


@pytest.mark.parametrize("value", ["99999999999999999999999", "0x8000000000000000"])
def test_min_entry_time_beyond_63_bits_is_a_usage_error(value):
    one_line_error(cli("scan", GUEST, "--min-entry-time", value), 2, "--min-entry-time",
                   "below 2^63")


def test_min_entry_time_just_below_2_63_scans():
    r = cli("scan", GUEST, "--min-entry-time", "0x7fffffffffffffff", "--format", "json")
    assert r.exit_code == 0 and r.stdout == ""


# --- 5. SIGTERM --------------------------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_scan_output_leaves_no_temporary_file(tmp_path, signum):
    # The dump is a pipe that never ends: the temporary output file exists while xenrs spools.
    r_fd, w_fd = os.pipe()
    p = subprocess.Popen([*XENRS, "scan", "-", "--format", "json", "-o", tmp_path / "hits.json"],
                         stdin=r_fd, stderr=subprocess.PIPE)
    os.close(r_fd)
    try:
        os.write(w_fd, b"\x01" * 65536)
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".xenrs-") for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline, "no temporary output file appeared"
            time.sleep(0.05)
        p.send_signal(signum)
        _, err = p.communicate(timeout=30)
    finally:
        os.close(w_fd)
    assert p.returncode == 128 + signum
    assert b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# --- a scan on every core: its workers end with it ---------------------------------------------

def _in_session(sid: int) -> list[int]:
    """The processes of session ``sid`` (Linux's /proc: field 6 of ``stat``)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(pid))
    return out


def _session_ends(sid: int) -> bool:
    deadline = time.monotonic() + 10
    while _in_session(sid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _workers() -> int:
    from xenrs_cli import scan_parallel

    return scan_parallel.workers()


@pytest.fixture(scope="module")
def many16(many, tmp_path_factory) -> Path:
    """16 MiB of ``many``: four tasks, so ``scan`` runs them on forked workers."""
    path = tmp_path_factory.mktemp("many16") / "many16.raw"
    path.write_bytes(many.read_bytes() * 16)
    return path


needs_workers = pytest.mark.skipif(_workers() < 2, reason="scan runs in one process here")


@needs_workers
def test_parallel_scan_into_head_exits_141_and_leaves_no_worker(many16):
    p = subprocess.Popen(["bash", "-c", f'{" ".join(XENRS)} scan {many16} --loose --format json'
                          ' | head -1 >/dev/null; echo "${PIPESTATUS[0]}"'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    out, err = p.communicate(timeout=120)
    assert out.strip() == "141" and "Traceback" not in err, err
    assert _session_ends(p.pid)


@needs_workers
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_a_parallel_scan_leaves_no_worker_and_no_temporary_file(tmp_path, many16,
                                                                         signum):
    p = subprocess.Popen([*XENRS, "scan", many16, "--loose", "--format", "json", "-o",
                          tmp_path / "hits.json"], stderr=subprocess.PIPE,
                         start_new_session=True)
    deadline = time.monotonic() + 30
    while len(_in_session(p.pid)) < 2:  # the workers are forked
        assert time.monotonic() < deadline and p.poll() is None, "no worker appeared"
        time.sleep(0.02)
    p.send_signal(signum)  # to the parent alone: its workers see their pipes end
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signum and b"Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    assert _session_ends(p.pid)


# --- 6. sweep's options ------------------------------------------------------------------------

def test_sweep_help_lists_only_what_it_accepts():
    r = cli("sweep", "--help")
    assert "--page" in r.stdout and "--from-dump" in r.stdout
    assert not re.search(r"--gpa\b", r.stdout) and "--split" not in r.stdout
    one_line_error(cli("sweep", "--gpa", "0x1000"), 2, "--gpa does not apply to sweep")
    one_line_error(cli("sweep", "--split"), 2, "--split does not apply to sweep")


def test_sweep_from_dump_reads_the_record_at_page():
    # guest.raw at 0xc0000000 holds an area at 0xc0001ff1; the default GPA 0xc0001020 is zeros,
    # so the record read shows in the error when --page points at a GPA the dump lacks.
    dump = f"{GUEST}@0xc0000000"
    one_line_error(cli("sweep", "--from-dump", dump, "--page", "0xc0005010"), 3,
                   "GPA 0xc0005010-0xc000503f is absent")
    r = cli("sweep", "--from-dump", dump, "--page", "0xc0001ff1", "--format", "json")
    assert r.exit_code in (0, 1), r.stderr
    assert json.loads(r.stdout)["offsets"] == 4096


# --- 7. advice names only options the command has ----------------------------------------------

@pytest.mark.parametrize("cmd", ["simulate", "race", "sweep"])
def test_from_dump_advice_does_not_name_allow_missing(cmd):
    where = ["--page", "0x5000"] if cmd == "sweep" else ["--gpa", "0x5000"]
    line = one_line_error(cli(cmd, "--from-dump", GUEST, *where), 3, "absent",
                          "--from-dump needs the whole record", f"xenrs info {GUEST}")
    assert "--allow-missing" not in line


# --- 8. nothing above 2^52 ---------------------------------------------------------------------

@pytest.mark.parametrize("layout,last", [("64", 0xfffffffffffd0), ("compat", 0xfffffffffffd4)])
def test_simulate_refuses_an_area_ending_beyond_2_52(layout, last):
    one_line_error(cli("simulate", "--layout", layout, "--gpa", hex(last + 1)), 2,
                   "beyond 2^52", hex(last))
    r = cli("simulate", "--layout", layout, "--gpa", hex(last), "--format", "json")
    assert r.exit_code == 0
    writes = [json.loads(x) for x in r.stdout.splitlines()]
    assert max(int(w["gpa"], 16) + w["len"] for w in writes if w["op"] == "write") <= 1 << 52


def test_sweep_refuses_the_last_page_below_2_52():
    one_line_error(cli("sweep", "--page", "0xfffffffffff00"), 2, "beyond 2^52")


# --- 9. --strict over missing bytes ------------------------------------------------------------

def test_strict_allow_missing_wholly_absent_record_is_a_finding():
    dump = f"{GUEST}@0xc0000000"
    r = cli("decode", dump, "--gpa", "0xc0005000", "--allow-missing", "--strict",
            "--format", "json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["consistent"] is None
    assert "--strict cannot check state, state_entry_time" in r.stderr
    assert cli("decode", dump, "--gpa", "0xc0005000", "--allow-missing",
               "--format", "json").exit_code == 0
    # a record wholly present and consistent stays exit 0 under both options
    assert cli("decode", dump, "--gpa", "0xc0001ff1", "--allow-missing", "--strict",
               "--format", "json").exit_code == 0


# --- 13. what an odd input is told ---------------------------------------------------------------

@pytest.mark.parametrize("name,head,what", [
    ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "a JPEG image"),
    ("shot.png", b"\x89PNG\r\n\x1a\n\x00\x00", "a PNG image"),
    ("disk.qcow2", b"QFI\xfb\x00\x00\x00\x03", "a QEMU qcow2 disk image"),
    ("notes.txt", "Notes: the guest hung at 10:32, vCPU 3 — runstate?\n".encode() * 40,
     "a text file"),
])
def test_files_that_are_not_dumps_are_named(tmp_path, name, head, what):
    path = tmp_path / name
    path.write_bytes(head + bytes(8192) if not what.endswith("text file") else head)
    line = one_line_error(cli("decode", path, "--gpa", "0"), 3, what, "not a memory dump")
    assert "--dump-format raw" in line
    assert cli("decode", path, "--gpa", "0", "--dump-format", "raw",
               "--format", "json").exit_code == 0


def test_text_cut_inside_a_character_at_the_probe_end_is_still_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"line\n" * 818 + b"abcde" + "é".encode() + b"x\n" * 50)
    assert len(b"line\n" * 818 + b"abcde") == 4095  # é's second byte is the probe's 4097th
    one_line_error(cli("decode", path, "--gpa", "0"), 3, "a text file")


def test_bad_base_is_named_not_a_missing_file(tmp_path):
    path = tmp_path / "d.raw"
    path.write_bytes(bytes(8192))
    one_line_error(cli("decode", f"{path}@0xzz", "--gpa", "0"), 2, "'0xzz' is not a base address",
                   "PATH@0xBASE")
    one_line_error(cli("decode", f"{tmp_path}/none.raw@0xzz", "--gpa", "0"), 3, "no such file")


def test_gpa_beyond_a_base_0_raw_image_suggests_its_base():
    line = one_line_error(cli("decode", GUEST, "--gpa", "0xc0001ff1"), 3, "read from base 0",
                          "0x0-0x2fff", f"give its base as {GUEST}@0xBASE")
    assert "--allow-missing" not in line
    # with a base given, the usual hint
    one_line_error(cli("decode", f"{GUEST}@0xc0000000", "--gpa", "0xc0005000"), 3,
                   "--allow-missing")


# --- features: completion, tables, help, --gpa - and -@BASE ----------------------------------

@pytest.mark.parametrize("words,cword", [
    ("xenrs decode exa", 2),
    ("xenrs info exa", 2),
    ("xenrs diff examples/guest.raw exa", 3),
    ("xenrs scan x -o exa", 4),
    ("xenrs simulate --from-dump exa", 3),
])
def test_bash_completion_completes_file_names(words, cword):
    env = dict(os.environ, _XENRS_COMPLETE="bash_complete", COMP_WORDS=words,
               COMP_CWORD=str(cword))
    r = subprocess.run([*XENRS], capture_output=True, text=True, env=env, timeout=30)
    # "file" tells bash's completion script to complete file names (compgen -f)
    assert r.stdout.splitlines() == ["file,exa"], r


def test_scan_table_on_80_columns_cuts_no_value(many):
    hits = [json.loads(x) for x in run("scan", many, "--loose", "--format", "json").stdout.splitlines()]
    r = run("scan", many, "--loose", "--format", "table", env=dict(os.environ, COLUMNS="80"))
    text = r.stdout.decode()
    assert "…" not in text
    assert max(map(len, text.splitlines())) <= 80
    for h in hits[:50]:
        assert re.search(rf"^{h['gpa']}\s", text, re.M), h["gpa"]
        assert f"{h['state_entry_time'] / 1e9:,.3f} s" in text


def test_tables_fold_instead_of_cutting():
    from rich.console import Console

    from xenrs_cli.render.console import Table

    t = Table(box=None)
    t.add_column("gpa")
    t.add_row("0xb40fb1234567_0xb40fb1234567")
    con = Console(width=12, record=True, file=open(os.devnull, "w"))
    con.print(t)
    text = con.export_text()
    assert "…" not in text
    assert "".join(text.split()) == "gpa0xb40fb1234567_0xb40fb1234567"


def test_bare_xenrs_prints_its_help():
    r = run()
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.startswith("Usage: xenrs [OPTIONS] COMMAND [ARGS]...")
    assert "\nCommands:\n" in err and "\n  decode " in err and len(err.splitlines()) > 10
    assert r.stdout == b""


def test_gpa_stdin_reads_scan_csv_and_json(many):
    scanned = run("scan", many, "--loose", "--format", "json").stdout.splitlines()
    first = [json.loads(x)["gpa"] for x in scanned]
    for fmt, rows in (("csv", 5), ("json", 6)):  # the CSV's first line is its header
        r = shell(f"$X scan {many} --loose --format {fmt} 2>/dev/null | head -6 | "
                  f"$X decode {many} --gpa - --format json")
        assert r.returncode == 0, r.stderr
        assert [json.loads(x)["gpa"] for x in r.stdout.splitlines()] == first[:rows]


def test_gpa_stdin_csv_without_a_gpa_column_is_refused():
    one_line_error(cli("decode", GUEST, "--gpa", "-", input="a,b\n1,2\n"), 2,
                   "CSV without a \"gpa\" column")


def test_stdin_dump_takes_a_base():
    with open(GUEST, "rb") as f:
        r = run("decode", "-@0xc0000000", "--gpa", "0xc0001ff1", "--format", "json", stdin=f)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dump"] == "-@0xc0000000"
    with open(GUEST, "rb") as f:  # the base is honoured: GPA 0x1ff1 is not in the image now
        r = run("decode", "-@0xc0000000", "--gpa", "0x1ff1", stdin=f)
    assert r.returncode == 3


@pytest.mark.parametrize("args", [
    ["decode", "-@0xc0000000", "--gpa", "-"],
    ["diff", "-@0xc0000000", GUEST, "--gpa", "-"],
    ["diff", "-@0x0", "-@0x1000", "--gpa", "0"],
])
def test_stdin_with_a_base_is_still_stdin(args):
    one_line_error(cli(*args, input=b""), 2, "cannot both be '-'")


def test_spool_leaves_room_on_the_file_system():
    # 20 MiB tmpfs, 5 % reserved: a 30 MiB pipe stops while 1 MiB is still free
    r = _private_mount('mount -t tmpfs -o size=20m none "$M" || exit 99; '
                       'head -c 30000000 /dev/urandom | TMPDIR="$M" $X decode - --gpa 0; '
                       'echo "rc=$?"; df -k "$M" | tail -1')
    if r.returncode == 99 or "rc=" not in r.stdout:
        pytest.skip("cannot mount a tmpfs")
    assert "rc=3" in r.stdout, r
    assert r.stderr.splitlines() == [
        "xenrs: error: <stdin>: spooling the pipe would fill the temporary directory /mnt (5 % "
        "of it, at most 1 GiB, is left free): save the dump to a file and give its path, or "
        "set TMPDIR to a larger file system"]
    assert int(r.stdout.split()[-4]) == 0  # used: the unlinked spool went with the process
