"""Numbered tasks run on every core by forked processes, their results taken in task order.

Why processes: reading a kdump is a decompression per page, and testing a window is a dozen
numpy passes; both release the GIL, but only between short stretches of Python that need it.
On the real Xen dom0 dump two threads decompressing the same pages took longer than one (each
hand-over of the GIL costs a futex wake-up, tens of microseconds in a VM, for 15 µs of zlib).
Processes share nothing but the dump's file and what ``fork()`` copied, so they scale.

:func:`ordered` forks one worker per core and hands out task numbers as workers finish
(a task's cost varies a hundredfold: zero pages against compressed ones), a pipe each way per
worker; this process only hands out, collects (a pickle per result, only ever from its own
child) and yields in order, a bounded number of tasks ahead. A worker that fails in any way —
an error in the dump, a signal, memory — leaves the tasks it held to this process, which runs
them itself: a bad dump raises its one clear error here, where the command line reports it,
and a worker never writes to the terminal.

Not Linux, one core, or fewer than two tasks: everything runs here, in order.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import struct
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from xenrs_cli import cores

MAX_WORKERS = 8
_PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: a child's results fit in the pipe, so it goes on at once
F_SETPIPE_SZ = 1031  # linux/fcntl.h (fcntl.F_SETPIPE_SZ from Python 3.10, not on every OS)


def workers() -> int:
    """How many processes :func:`ordered` would use: one per core on Linux. Elsewhere one:
    macOS's system libraries are not safe to use in a forked child that does not exec (Python's
    own ``multiprocessing`` spawns there), and Windows has no ``fork()``."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return 1
    return min(MAX_WORKERS, cores.available())


def ordered(count: int, work: Callable[[int], Any], processes: int) -> Iterator[Any]:
    """``work(k)`` for ``k`` in ``range(count)``, in order, on up to ``processes`` processes."""
    processes = min(processes, count)
    if processes < 2:
        for k in range(count):
            yield work(k)
        return
    children: list[_Child] = []
    try:
        with cores.shared(1):
            for _ in range(processes):
                children.append(_Child.start(children, work))
        issued, ready = 0, {}
        for k in range(count):
            # Each child holds at most DEPTH tasks (one running, the next waiting in its
            # pipe), and none runs further than LOOKAHEAD tasks per process past the one
            # awaited here, so that the results held here stay bounded.
            limit = min(count, k + LOOKAHEAD * processes)
            for c in children:
                while c.alive and len(c.tasks) < DEPTH and issued < limit:
                    if c.give(issued):
                        issued += 1
                    else:
                        c.fail(ready)
                if issued == count:
                    c.done()  # the end of its tasks: it exits when it has run them
            while k not in ready:
                live = [c for c in children if c.alive and c.tasks]
                if k >= issued or not live:  # no child has it: it is done here
                    ready[k] = _MISSING
                    break
                readable = _readable([c.fd for c in live])
                for c in live:
                    if c.fd in readable:
                        c.receive(ready)
            result = ready.pop(k)
            yield work(k) if result is _MISSING else result
    finally:
        for child in children:
            child.stop()


def _readable(fds: list[int]) -> set[int]:
    """Which of ``fds`` can be read (data or the end of the pipe), waiting for one: ``poll``,
    not ``select``, whose descriptors must be below 1024 (a dump of many raw files is many
    open files)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll()}


DEPTH = 2  # tasks given to a child at a time
LOOKAHEAD = 2  # tasks per process issued past the one awaited
_MISSING = object()
_TASK = struct.Struct("<q")
_RESULT = struct.Struct("<BqQ")  # kind, task, length of the pickle that follows
_DONE, _FAILED = 1, 2


class _Child:
    """One forked worker: the pipe it takes task numbers from, the pipe it reports on, and
    the tasks it was given and has not reported on (in order)."""

    def __init__(self, pid: int, fd: int, task_fd: int) -> None:
        self.pid, self.fd, self.task_fd, self.alive = pid, fd, task_fd, True
        self.tasks: deque[int] = deque()

    @classmethod
    def start(cls, others: list[_Child], work: Callable[[int], Any]) -> _Child:
        tasks_r, tasks_w = os.pipe()
        r, w = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(w, F_SETPIPE_SZ, _PIPE_SIZE)
        except (ImportError, OSError):
            pass  # the default 64 KiB: a child with more results waits for them to be read
        with warnings.catch_warnings():
            # Python 3.12 warns about fork() beside other threads (a progress bar's): the child
            # only reads the dump and writes its pipe, it takes no lock those threads hold.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns
            for fd in [r, tasks_w] + [fd for o in others for fd in (o.fd, o.task_fd)]:
                if fd >= 0:
                    os.close(fd)  # so that a pipe ends when the process it belongs to does
            _serve(tasks_r, w, work)
        os.close(w)
        os.close(tasks_r)
        return cls(pid, r, tasks_w)

    def give(self, task: int) -> bool:
        """Send it a task number; ``False`` if it is gone."""
        try:
            _write_all(self.task_fd, _TASK.pack(task))
        except BrokenPipeError:
            return False
        self.tasks.append(task)
        return True

    def done(self) -> None:
        if self.task_fd >= 0:
            os.close(self.task_fd)
            self.task_fd = -1

    def receive(self, ready: dict[int, Any]) -> None:
        """Read one report: a result (into ``ready``), or a failure or the end of the pipe,
        after which each task it held is ``_MISSING`` in ``ready`` (this process runs it)."""
        head = _read_exactly(self.fd, _RESULT.size)
        kind, task, length = _RESULT.unpack(head) if head else (_FAILED, -1, 0)
        body = _read_exactly(self.fd, length) if kind == _DONE else None
        if body is None or not self.tasks or task != self.tasks[0]:
            self.fail(ready)
            return
        ready[self.tasks.popleft()] = pickle.loads(body)

    def fail(self, ready: dict[int, Any]) -> None:
        for task in self.tasks:
            ready[task] = _MISSING
        self.tasks.clear()
        self.alive = False
        self.done()

    def stop(self) -> None:
        self.done()
        os.close(self.fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


def _serve(tasks: int, fd: int, work: Callable[[int], Any]) -> None:
    """A child's life: run each task whose number comes down ``tasks`` and write its result
    to ``fd``; at the first failure say so and exit; exit at the end of ``tasks``. Always
    ``os._exit``: no ``atexit``, no flushing of the parent's buffered output, no traceback on
    the terminal."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)  # not the parent's handlers (its temp files)
        while True:
            raw = _read_exactly(tasks, _TASK.size)
            if raw is None:
                break
            (k,) = _TASK.unpack(raw)
            try:
                body = pickle.dumps(work(k), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException:
                _write_all(fd, _RESULT.pack(_FAILED, k, 0))
                break
            _write_all(fd, _RESULT.pack(_DONE, k, len(body)) + body)
    except BaseException:
        pass
    finally:
        os._exit(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes, or ``None`` at the end of the pipe (the child is gone)."""
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
