"""A simulated runstate update: the scenario, its values, and the trace the model writes.

Sans-IO (SPEC §4; h11's design): a :class:`Scenario` (model, layout, GPA, update flag, event,
the record being written, the bytes in memory before) goes in, a list of
:mod:`xenrs_cli.trace` records comes out. The value helpers are the pure halves of the
``simulate`` and ``race`` options: state names, ``--time`` specs, KVM's ``RUNSTATE_DATA`` sum
rule, ``kvm_xen_update_runstate()``'s accounting of a transition, and SPEC §5's default
before-record.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenrs_cli.errors import UsageError
from xenrs_cli.layouts import (LAYOUTS, PAGE_SIZE, TIME_NAMES, U64_MASK, XEN_RUNSTATE_UPDATE,
                               Layout, RunState, RunstateInfo, encode)
from xenrs_cli.models import EVENTS, MODELS
from xenrs_cli.numbers import parse_number
from xenrs_cli.trace import Record

# The pre-fix selftest's RUNSTATE_ADDR (SHINFO_REGION_GPA + PAGE_SIZE + 0x20), SPEC §4's default.
DEFAULT_GPA = 0xc0001020
# The fixed selftest's page: RUNSTATE_ADDR = SHINFO_REGION_GPA + 2 * PAGE_SIZE - 15.
SPLIT_PAGE = 0xc0001000

# The values written when none are given: 5.2 s of a vCPU's life, running now (consistent).
DEFAULT_VALUES = RunstateInfo(state=RunState.running, state_entry_time_raw=5_200_000_000,
                              time=(4_000_000_000, 200_000_000, 1_000_000_000, 0))

# SPEC §5 default before-record: this much time is taken back from the state being left.
BEFORE_INTERVAL_NS = 1_000_000


def split_gpa(layout: Layout) -> int:
    """The KVM selftest's pathological placement: the flag byte is the first byte of the next
    page (0xc0001ff1 for 64, 0xc0001ff5 for compat)."""
    return SPLIT_PAGE + PAGE_SIZE - layout.flag_offset


@dataclass(frozen=True, slots=True)
class Scenario:
    """One update to simulate. ``after`` is the record being written (``state_entry_time``
    without ``XEN_RUNSTATE_UPDATE``); ``before`` is the ``layout``-sized image in memory before."""

    model: str
    layout: str
    gpa: int
    update_flag: bool
    event: str
    after: RunstateInfo
    before: bytes

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}")
        if self.event not in EVENTS:
            raise ValueError(f"unknown event {self.event!r}")
        if len(self.before) != LAYOUTS[self.layout].size:
            raise ValueError(f"before-image of {len(self.before)} bytes for layout {self.layout}")
        if self.after.state_entry_time_raw & XEN_RUNSTATE_UPDATE:
            raise ValueError("the values written carry XEN_RUNSTATE_UPDATE")

    @property
    def layout_obj(self) -> Layout:
        return LAYOUTS[self.layout]


def simulate(scenario: Scenario) -> list[Record]:
    """The ordered writes, barriers or refusal of ``scenario`` (see :mod:`xenrs_cli.models`)."""
    return MODELS[scenario.model](scenario.layout_obj, scenario.gpa, scenario.after,
                                  scenario.update_flag, scenario.event)


# --- values --------------------------------------------------------------------------------


def parse_state(text: str | int) -> int:
    """``running``/``runnable``/``blocked``/``offline`` or 0..3 (KVM: ``state >
    RUNSTATE_offline`` is ``-EINVAL``)."""
    if isinstance(text, int):
        code = text
    else:
        t = text.strip().lower()
        if t in RunState.__members__:
            return int(RunState[t])
        try:
            code = parse_number(t)
        except ValueError:
            raise UsageError(f"state {text!r} is not one of running, runnable, blocked, offline "
                             "or 0..3") from None
    if not 0 <= code <= 3:
        raise UsageError(f"state {text!r} is not one of running, runnable, blocked, offline or "
                         "0..3 (KVM refuses a state above RUNSTATE_offline with -EINVAL)")
    return code


def parse_u64(text: str, what: str) -> int:
    try:
        value = parse_number(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a non-negative number (0x hex or decimal, "
                         "'_' allowed)") from None
    if value > U64_MASK:
        raise UsageError(f"{what}: {text} does not fit in 64 bits")
    return value


def parse_time_spec(text: str) -> tuple[int, int, int, int]:
    """``running=N,runnable=N,blocked=N,offline=N`` → ``time[0..3]``.

    Keys may come in any order; a key left out is 0; a key given twice is an error.
    """
    values: dict[str, int] = {}
    for item in text.split(","):
        key, sep, num = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in TIME_NAMES:
            raise UsageError(f"--time: {item.strip()!r} is not NAME=N with NAME one of "
                             f"{', '.join(TIME_NAMES)}")
        if key in values:
            raise UsageError(f"--time: {key} given twice")
        values[key] = parse_u64(num, f"--time {key}")
    return tuple(values.get(name, 0) for name in TIME_NAMES)  # type: ignore[return-value]


def check_entry_time(entry: int, what: str = "--entry-time") -> None:
    if entry & XEN_RUNSTATE_UPDATE:
        raise UsageError(f"{what} 0x{entry:x} has bit 63 set: that is XEN_RUNSTATE_UPDATE, "
                         "which the model sets itself (give a time below 2^63)")


def check_sum_rule(entry: int, times: tuple[int, ...], allow_inconsistent: bool) -> None:
    """KVM ``KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA``: ``state_entry_time != time_running +
    time_runnable + time_blocked + time_offline`` (u64 arithmetic) → ``-EINVAL``."""
    total = sum(times) & U64_MASK
    if entry != total and not allow_inconsistent:
        raise UsageError(f"state_entry_time {entry} differs from the sum of time[] {total}, "
                         "which KVM's RUNSTATE_DATA refuses (-EINVAL); pass --allow-inconsistent "
                         "to simulate it anyway")


def make_values(state: int, entry_time: int | None, times: tuple[int, int, int, int],
                allow_inconsistent: bool = False) -> RunstateInfo:
    """The record to write; ``entry_time`` defaults to the sum of ``times``."""
    if entry_time is None:
        entry_time = sum(times) & U64_MASK
    check_entry_time(entry_time)
    check_sum_rule(entry_time, times, allow_inconsistent)
    return RunstateInfo(state, entry_time, times)


def account_transition(before: RunstateInfo, state: int, now: int, steal: int = 0,
                       allow_inconsistent: bool = False) -> RunstateInfo:
    """The record after a transition to ``state`` at kvmclock ``now``, accounted as
    ``arch/x86/kvm/xen.c:kvm_xen_update_runstate()`` does.

    The time since ``state_entry_time`` goes to the state being left; if that is running,
    ``steal`` (the growth of the task's ``run_delay``) is moved from running to runnable; the
    very first transition (entry time 0) books everything to offline.
    """
    old_entry = before.state_entry_time
    current = before.state
    if not 0 <= current <= 3:
        raise UsageError(f"--transition: the record before has state {current}, not 0..3, so "
                         "there is no time[] slot to account the interval to")
    if now < old_entry:
        raise UsageError(f"--now {now} is before the current state_entry_time {old_entry}")
    delta = now - old_entry
    times = list(before.time)
    # "if (unlikely(!vx->runstate_entry_time)) vx->current_runstate = RUNSTATE_offline;"
    if old_entry == 0:
        current = RunState.offline
    if current == RunState.running:
        if steal > delta:
            raise UsageError(f"--steal {steal} is more than the {delta} ns spent running since "
                             f"{old_entry}")
        delta -= steal
        times[RunState.runnable] = (times[RunState.runnable] + steal) & U64_MASK
    times[current] = (times[current] + delta) & U64_MASK
    check_entry_time(now, "--now")
    check_sum_rule(now, tuple(times), allow_inconsistent)
    return RunstateInfo(state, now, tuple(times))  # type: ignore[arg-type]


def default_before(layout: Layout, after: RunstateInfo) -> RunstateInfo:
    """SPEC §5's default record in memory before the update, derived from the one written.

    Rule: the state left is ``runnable`` when the new state is ``running``, else ``running``;
    it was entered :data:`BEFORE_INTERVAL_NS` (1 ms) before, so that interval is taken back from
    its ``time[]`` slot and from ``state_entry_time``. The interval is clamped to both, so the
    record stays non-negative and is consistent whenever ``after`` is. Padding is zero.
    """
    left = RunState.runnable if after.state == RunState.running else RunState.running
    entry = after.state_entry_time
    d = min(BEFORE_INTERVAL_NS, after.time[left], entry)
    times = list(after.time)
    times[left] -= d
    return RunstateInfo(int(left), entry - d, tuple(times),  # type: ignore[arg-type]
                        bytes(4) if layout.has_padding else None)


def default_before_image(layout: Layout, after: RunstateInfo) -> bytes:
    return encode(layout, default_before(layout, after))
