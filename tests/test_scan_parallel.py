"""``scan`` on every core: forked workers (``scan_parallel``) and the tasks they run
(``scan_find.plan``) give exactly what one process gives, whatever fails in a worker."""

from __future__ import annotations

import os
import random
import signal

import pytest

from xenrs_cli import scan_find, scan_parallel
from xenrs_cli.address_space import AddressSpace, LinearSegment, ZeroSegment
from xenrs_cli.errors import BadDumpError
from xenrs_cli.layouts import LAYOUT_64, LAYOUT_COMPAT, RunstateInfo, encode
from xenrs_cli.scan import ScanOptions, Scanner, hit_to_json_dict

PARENT = os.getpid()

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")


def children() -> set[int]:
    """This process's children, live or unreaped (Linux's /proc)."""
    out: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            out.update(int(pid) for pid in f.read().split())
    return out


@pytest.fixture
def no_workers_left():
    """Every worker a test starts is gone (and reaped) when it ends."""
    before = children()
    yield
    assert children() <= before


@needs_fork
@pytest.mark.parametrize("count", [0, 1, 2, 5, 37])
@pytest.mark.parametrize("processes", [1, 2, 3])
def test_results_in_task_order_from_the_children(count, processes, no_workers_left):
    results = list(scan_parallel.ordered(count, lambda k: (k * k, os.getpid()), processes))
    assert [r for r, _ in results] == [k * k for k in range(count)]
    pids = {pid for _, pid in results}
    if processes > 1 and count > 1:
        assert PARENT not in pids  # all run in workers
        assert len(pids) <= processes
    else:
        assert pids <= {PARENT}


@needs_fork
@pytest.mark.parametrize("how", ["raises", "exits", "killed"])
def test_a_failing_worker_leaves_its_task_to_this_process(how, no_workers_left):
    def work(k):
        if os.getpid() != PARENT and k in (3, 11):
            if how == "raises":
                raise BadDumpError("a corrupt page", offset=k)
            if how == "exits":
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        return k, os.getpid()

    results = list(scan_parallel.ordered(20, work, 2))
    assert [k for k, _ in results] == list(range(20))
    # the failed tasks were run here; every task after a failure was run somewhere
    assert results[3][1] == PARENT


@needs_fork
def test_an_error_that_happens_here_too_is_raised_here(no_workers_left):
    def work(k):
        if k == 4:
            raise BadDumpError("page of PFN 0x4: zlib decompression failed", offset=0x4000)
        return k

    with pytest.raises(BadDumpError) as e:
        list(scan_parallel.ordered(9, work, 2))
    assert e.value.offset == 0x4000


@needs_fork
def test_stopping_early_stops_the_workers(no_workers_left):
    gen = scan_parallel.ordered(1000, lambda k: k, 2)
    assert [next(gen), next(gen)] == [0, 1]
    gen.close()


def record(layout, seed: int) -> bytes:
    """A record every rule accepts (KVM's exact accounting over three states)."""
    rng = random.Random(seed)
    times = (rng.randrange(4_000_000_000, 9_000_000_000), rng.randrange(10**7, 10**9),
             rng.randrange(10**9, 10**10), 0)
    padding = b"\0" * 4 if layout is LAYOUT_64 else None
    return encode(layout, RunstateInfo(rng.choice((0, 1, 2)), sum(times), times, padding))


TASK = 64 << 10


def memory() -> AddressSpace:
    """1 MiB of random bytes in two segments with a zero-filled gap between them, and records
    around every task cut (every 64 KiB of present bytes): before it, across it (compat and
    64-bit), after it."""
    rng = random.Random(5)
    buf = bytearray(rng.randbytes(1 << 20))
    for c in range(TASK, 1 << 20, TASK):
        for at, layout in ((c - 104, LAYOUT_64), (c - 52, LAYOUT_COMPAT), (c - 8, LAYOUT_64),
                           (c + 48, LAYOUT_64)):
            buf[at:at + layout.size] = record(layout, at)
    half = 1 << 19
    return AddressSpace([LinearSegment(0x100000, half, bytes(buf[:half]), 0, "a"),
                         ZeroSegment(0x180000, 0x2000),
                         LinearSegment(0x182000, half, bytes(buf[half:]), 0, "b")])


def scan(space, monkeypatch, processes: int, **opts) -> tuple[list, dict]:
    monkeypatch.setattr(scan_parallel, "workers", lambda: processes)
    monkeypatch.setattr(scan_find, "TASK_BYTES", TASK)
    sc = Scanner(space, ScanOptions(chunk_size=8192, **opts))
    hits = [hit_to_json_dict(h, "m") for h in sc.hits()]
    return hits, {**sc.stats.to_json_dict(4096), "examples": sc.stats.rejected_examples}


@needs_fork
@pytest.mark.parametrize("opts", [{}, {"loose": True}, {"align": 1},
                                  {"loose": True, "align": 4, "hypervisor": "kvm"}])
def test_parallel_scan_equals_one_process(monkeypatch, opts, no_workers_left):
    space = memory()
    tasks, _ = scan_find.plan(space, space.segments[0].gpa, space.end, TASK)
    assert len(tasks) == 16
    one = scan(space, monkeypatch, 1, **opts)
    many = scan(space, monkeypatch, 3, **opts)
    assert one == many
    assert len(one[0]) >= 20 and one[1]["candidates"] > 0


def test_plan_tiles_the_range_by_present_bytes():
    space = memory()
    start, end = 0x1000, 0x2000000
    tasks, counted = scan_find.plan(space, start, end, 100_000)
    assert tasks[0][0] == start and tasks[-1][1] == end
    assert all(a < b for a, b in tasks)
    assert all(b == a2 for (_, b), (a2, _) in zip(tasks, tasks[1:]))
    assert counted == {"present": 1 << 20, "zero-filled": 0x2000, "excluded": 0,
                       "absent": end - start - (1 << 20) - 0x2000}
    # ten full tasks of present bytes and the rest
    assert len(tasks) == (1 << 20) // 100_000 + 1


@needs_fork
def test_a_dump_truncated_under_the_workers_ends_in_its_one_error(tmp_path, monkeypatch,
                                                                 no_workers_left):
    """Each worker's read comes up short; the parent runs the failed task itself and raises
    the readers' one-line error (a scan of the file in a real process: tests/test_hostile.py)."""
    from xenrs_cli.dumps import open_dump
    from xenrs_cli.errors import DumpChangedError

    path = tmp_path / "t.raw"
    path.write_bytes(os.urandom(12 << 20))
    monkeypatch.setattr(scan_parallel, "workers", lambda: 2)
    with open_dump(str(path)) as d:
        assert len(scan_find.plan(d.space, 0, d.space.end)[0]) == 3
        os.truncate(path, 1 << 20)
        with pytest.raises(DumpChangedError, match="the dump changed while being read"):
            for _ in Scanner(d.space, ScanOptions()).hits():
                pass


# The two ways a window is tested (scan_windows.entry_positions: gathering next to nonzero
# words, or comparing every field) count alike, so that the counts of a scan do not depend on
# which way its windows went (zero runs passed by, task cuts and window starts change that).


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("opts", [{}, {"loose": True}, {"align": 1}])
def test_dense_and_sparse_windows_count_alike(monkeypatch, seed, opts):
    from xenrs_cli import scan_windows
    from xenrs_cli.layouts import XEN_RUNSTATE_UPDATE

    rng = random.Random(seed)
    buf = bytearray(64 << 10)
    for _ in range(600):  # scattered words: entry times, flagged ones, small and huge values
        at = rng.randrange(0, len(buf) - 8)
        value = rng.choice([rng.randrange(1 << 30, 1 << 36), rng.randrange(1 << 56, 1 << 64),
                            rng.randrange(1, 1 << 30) | XEN_RUNSTATE_UPDATE,
                            rng.randrange(1 << 30, 1 << 36) | XEN_RUNSTATE_UPDATE])
        buf[at:at + 8] = value.to_bytes(8, "little")
    for at in range(1024, len(buf) - 64, 4096):
        buf[at:at + 48] = record(LAYOUT_64, at)
    space = AddressSpace([LinearSegment(0, len(buf), bytes(buf), 0, "m")])
    monkeypatch.setattr(scan_parallel, "workers", lambda: 1)
    results = []
    for dense in (0, 1 << 40):  # never / always the field-by-field comparison
        monkeypatch.setattr(scan_windows, "DENSE", dense)
        sc = Scanner(space, ScanOptions(chunk_size=8192, **opts))
        results.append(([hit_to_json_dict(h, "m") for h in sc.hits()],
                        sc.stats.candidates, sc.stats.rejected, sc.stats.rejected_examples))
    assert results[0] == results[1]
    assert results[0][1] > 0


@needs_fork
def test_workers_with_descriptors_above_1024(no_workers_left):
    """A dump of many raw files holds many descriptors: the workers' pipes come above 1024,
    where ``select`` cannot go."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"at most {hard} open files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = []
    try:
        fd = os.open(os.devnull, os.O_RDONLY)
        held.append(fd)
        while held[-1] < 1100:
            held.append(os.dup(fd))
        assert list(scan_parallel.ordered(7, lambda k: -k, 2)) == [-k for k in range(7)]
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
