"""Compare the runstate area at one GPA in two dumps taken in order (SPEC §6 ``diff``).

The questions behind it are the triage ones of research/anchors-tools.md §3.6: did steal go
backwards (Xen live migration clears the runstate times; Linux ``xen_steal_clock()`` then
decreases), is the hypervisor's update flag stuck, did the vCPU change state at all between
the dumps. Both sides are :class:`~xenrs_cli.decode.Decoded` records; nothing is re-decoded
here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xenrs_cli.decode import Decoded, hexaddr
from xenrs_cli.decode import to_json_dict as decoded_json
from xenrs_cli.layouts import TIME_NAMES

# SPEC §6 verdicts, in the order they are reported.
TIME_WENT_BACKWARDS = "time_went_backwards"
STEAL_WENT_BACKWARDS = "steal_went_backwards"
FLAG_STUCK = "flag_stuck"
STATE_UNCHANGED = "state_unchanged"
INCONSISTENT = "inconsistent"
VERDICTS = (TIME_WENT_BACKWARDS, STEAL_WENT_BACKWARDS, FLAG_STUCK, STATE_UNCHANGED, INCONSISTENT)
# What ``--strict`` treats as a regression (exit 1); ``state_unchanged`` is information.
REGRESSIONS = frozenset({TIME_WENT_BACKWARDS, STEAL_WENT_BACKWARDS, FLAG_STUCK, INCONSISTENT})


@dataclass(frozen=True, slots=True)
class RunstateDiff:
    """One GPA in two dumps: signed deltas (after − before) and verdicts."""

    gpa: int
    before: Decoded
    after: Decoded
    delta: dict[str, int]
    elapsed: int
    verdicts: tuple[str, ...]

    @property
    def regressions(self) -> list[str]:
        return [v for v in self.verdicts if v in REGRESSIONS]


def compare(before: Decoded, after: Decoded) -> RunstateDiff:
    """Deltas and verdicts of two decodes of the same GPA and layout.

    Verdicts (SPEC §6):

    * ``time_went_backwards``: ``state_entry_time`` or any ``time[]`` is smaller in the later
      dump. Every one of them only grows while a domain lives (``kvm_xen_update_runstate()``
      adds to them; Xen's ``vcpu_runstate_change()`` likewise), so a decrease means the area was
      reset (migration, restore, re-registration) or is not a runstate area.
    * ``steal_went_backwards``: ``runnable + offline`` decreased — what Linux's
      ``xen_steal_clock()`` would see; the ``-1253874204672.0%st`` of top after a restore.
    * ``flag_stuck``: ``XEN_RUNSTATE_UPDATE`` is set in both dumps. An update takes
      microseconds; two dumps minutes apart catching two different updates is not credible, so
      the flag was left set (and the guest's reader spins in
      ``xen_get_runstate_snapshot_cpu_delta()``).
    * ``state_unchanged``: same ``state`` and same ``state_entry_time``: no runstate change was
      accounted between the dumps (a vCPU stuck runnable, or a stale area nobody updates).
    * ``inconsistent``: either record breaks the sum rule or has an unknown state.
    """
    if before.layout is not after.layout:
        raise ValueError("compare() needs both records in one layout")
    b, a = before.info, after.info
    delta = {"state_entry_time": a.state_entry_time - b.state_entry_time}
    for i, name in enumerate(TIME_NAMES):
        delta[name] = a.time[i] - b.time[i]
    delta["steal"] = a.steal - b.steal
    verdicts = []
    if any(delta[k] < 0 for k in ("state_entry_time", *TIME_NAMES)):
        verdicts.append(TIME_WENT_BACKWARDS)
    if delta["steal"] < 0:
        verdicts.append(STEAL_WENT_BACKWARDS)
    if b.update_in_progress and a.update_in_progress:
        verdicts.append(FLAG_STUCK)
    if a.state == b.state and a.state_entry_time == b.state_entry_time:
        verdicts.append(STATE_UNCHANGED)
    if not (b.plausible and a.plausible):
        verdicts.append(INCONSISTENT)
    # Guest time the hypervisor booked into time[] between the two records' last state
    # changes (the state_entry_time delta when both are consistent). Time since the last
    # change is not booked yet, so this is not the wall time between the dumps.
    elapsed = a.time_sum - b.time_sum
    return RunstateDiff(before.gpa, before, after, delta, elapsed, tuple(verdicts))


def to_json_dict(d: RunstateDiff, dump1: str, dump2: str) -> dict[str, Any]:
    """SPEC §6 record: ``gpa``, ``layout``, ``before``, ``after``, ``delta``, ``verdicts``
    (plus ``elapsed`` and ``regression``)."""
    return {
        "gpa": hexaddr(d.gpa),
        "layout": d.before.layout.name,
        "before": decoded_json(d.before, dump1),
        "after": decoded_json(d.after, dump2),
        "delta": dict(d.delta),
        "elapsed": d.elapsed,
        "verdicts": list(d.verdicts),
        "regression": bool(d.regressions),
    }

