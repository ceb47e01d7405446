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
ACCOUNTING_DRIFT = "accounting_drift"
VERDICTS = (TIME_WENT_BACKWARDS, STEAL_WENT_BACKWARDS, FLAG_STUCK, STATE_UNCHANGED, INCONSISTENT,
            ACCOUNTING_DRIFT)
# What ``--strict`` treats as a regression (exit 1); ``state_unchanged`` is information.
REGRESSIONS = frozenset({TIME_WENT_BACKWARDS, STEAL_WENT_BACKWARDS, FLAG_STUCK, INCONSISTENT,
                         ACCOUNTING_DRIFT})


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
    * ``inconsistent``: either record has an unknown state or an accounting its decode's
      ``--hypervisor`` cannot leave (SPEC §7).
    * ``accounting_drift``: Δ``state_entry_time`` ≠ ΣΔ``time[]``. Every state change adds the
      same interval to the entry time and to one ``time[]`` (``kvm_xen_update_runstate()``,
      ``vcpu_runstate_change()``), so ``unaccounted`` — 0 on KVM, the vCPU's creation time on
      Xen — is constant for a vCPU's life; a change means the area was rewritten by something
      else (a restore that reset it, another vCPU's area registered there, a torn copy).
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
    if not (before.consistent and after.consistent and b.state_name != "unknown"
            and a.state_name != "unknown"):
        verdicts.append(INCONSISTENT)
    if b.unaccounted != a.unaccounted:
        verdicts.append(ACCOUNTING_DRIFT)
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



# ---------------------------------------------------------------------------------------------
# scan --later (SPEC §6): the same area in a later dump of the same guest

ADVANCED = "advanced"
UNCHANGED = "unchanged"
CHANGED_OTHERWISE = "inconsistent"
MISSING = "missing"


def later_verdict(before: Decoded, after: Decoded | None) -> tuple[str, dict[str, int] | None]:
    """What became of a hit in a later dump: ``(verdict, delta)``.

    ``advanced``: ``state_entry_time`` grew, no ``time[]`` shrank, and Δ``state_entry_time`` ==
    ΣΔ``time[]`` — the accounting of SPEC §7, which every hypervisor update keeps, so a static
    look-alike almost never does it by chance; ``unchanged``: the same bytes (an offline or idle
    vCPU, or a static look-alike); ``inconsistent``: changed any other way; ``missing``: the
    later dump does not hold the bytes (``after`` is ``None``; no delta).
    """
    if after is None:
        return MISSING, None
    rec = compare(before, after)
    if after.raw == before.raw:
        return UNCHANGED, rec.delta
    grew = rec.delta["state_entry_time"] > 0
    if (grew and ACCOUNTING_DRIFT not in rec.verdicts
            and TIME_WENT_BACKWARDS not in rec.verdicts):
        return ADVANCED, rec.delta
    return CHANGED_OTHERWISE, rec.delta
