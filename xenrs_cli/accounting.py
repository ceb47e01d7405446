"""How a runstate record's times add up, and which hypervisor could have written them (SPEC §7).

Both hypervisors account a state change the same way — KVM ``kvm_xen_update_runstate()``, Xen
``vcpu_runstate_change()``: ``time[old] += now - state_entry_time; state_entry_time = now`` — so
``state_entry_time - sum(time[])`` never changes during a vCPU's life. They differ in where it
starts:

* KVM starts both at zero (the first transition books the interval since kvmclock 0 to offline,
  and ``KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA`` refuses times that do not sum to the entry time):
  the difference is 0, **exact**.
* Xen's ``vcpu_create()`` sets ``state_entry_time = NOW()`` with ``time[]`` zero: the difference
  is the vCPU's creation time in Xen system time, positive and constant, **offset**. Xen's idle
  vCPUs are created before its clock runs (entry time 0), so theirs are exact.
* Anything else — the sum ahead of the entry time, or one time larger than it — no hypervisor
  writes between updates: **broken**.

``--hypervisor`` names which of these count as *consistent*: ``kvm`` accepts exact only,
``xen`` and ``any`` accept exact and offset.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

U64_MASK = (1 << 64) - 1


class Times(Protocol):
    """What accounting needs of a record (``layouts.RunstateInfo``, which imports this module
    for its ``accounting`` property: a protocol, so that neither imports the other)."""

    @property
    def state_entry_time(self) -> int: ...

    @property
    def time(self) -> tuple[int, ...]: ...

    @property
    def time_sum(self) -> int: ...


class Accounting(StrEnum):
    EXACT = "exact"
    OFFSET = "offset"
    BROKEN = "broken"


HYPERVISORS: dict[str, frozenset[Accounting]] = {
    "any": frozenset({Accounting.EXACT, Accounting.OFFSET}),
    "xen": frozenset({Accounting.EXACT, Accounting.OFFSET}),
    "kvm": frozenset({Accounting.EXACT}),
}
DEFAULT_HYPERVISOR = "any"


def unaccounted(info: Times) -> int:
    """``state_entry_time - time_sum`` as a signed 64-bit integer (SPEC §3 ``unaccounted``)."""
    diff = (info.state_entry_time - info.time_sum) & U64_MASK
    return diff - (1 << 64) if diff >= 1 << 63 else diff


def accounting(info: Times) -> Accounting:
    """Exact when the times sum to the entry time modulo 2^64 (KVM's own u64 check); offset when
    every time is at most the entry time and their true sum is below it; else broken."""
    entry = info.state_entry_time
    if info.time_sum == entry:
        return Accounting.EXACT
    if all(t <= entry for t in info.time) and sum(info.time) < entry:
        return Accounting.OFFSET
    return Accounting.BROKEN


def accepted(kind: Accounting, hypervisor: str = DEFAULT_HYPERVISOR) -> bool:
    """Whether ``hypervisor`` (``any``, ``kvm`` or ``xen``) can leave a record so accounted."""
    return kind in HYPERVISORS[hypervisor]


def seconds(ns: int) -> str:
    """``1906087182`` → ``1.906 s``: how warnings say a nanosecond figure."""
    return f"{ns / 1e9:,.3f} s"


def explain(kind: Accounting, info: Times, hypervisor: str) -> str | None:
    """The warning ``decode`` gives for a record's accounting, or ``None`` for an exact one."""
    gap = unaccounted(info)
    if kind is Accounting.OFFSET:
        text = (f"state_entry_time is {gap} ns ({seconds(gap)}) ahead of sum(time[]): the "
                f"vCPU's creation time in Xen system time (Xen's vcpu_create() starts "
                f"state_entry_time there with time[] zero); accounting 'offset'")
        if accepted(kind, hypervisor):
            return text + ", as Xen writes it"
        return text + f", which KVM never writes (--hypervisor {hypervisor})"
    if kind is Accounting.BROKEN:
        if gap < 0:
            return (f"sum(time[]) is {-gap} ns ({seconds(-gap)}) ahead of state_entry_time: "
                    "neither Xen nor KVM leaves that between updates (accounting 'broken')")
        big = max(info.time)
        return (f"a time[] value ({big} ns) is larger than state_entry_time: neither Xen nor "
                "KVM leaves that between updates (accounting 'broken')")
    return None
