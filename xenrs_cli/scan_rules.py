"""What only a hypervisor-written runstate area looks like: the rules ``scan`` applies on top of
SPEC §6's (state 0..3, a nonzero entry time, an accounting ``--hypervisor`` accepts).

SPEC §6's rules alone accept far more than runstate areas once Xen's ``offset`` accounting is
allowed: any large number followed by four smaller ones passes. In the real Xen 4.17 whole-
machine dumps of ``tests/data/realxen`` (384 MiB each) they accept about 330,000 places at the
default alignments, 9 of them real. What passes is data of other shapes: user-space stack
pointers followed by heap pointers, x86 instructions, ACPI and PnP ID strings, tables of
``0xffffffff``, pairs of small 32-bit integers read as one 64-bit number, the scheduler's
``sched_entity`` (``on_rq``, ``exec_start``, ``sum_exec_runtime``, ...) and slab objects
repeated at a fixed stride. Each rule below rejects one such shape and cites why a hypervisor
cannot write it; ``scan --loose`` turns them all off, and the scan summary counts what each one
rejected.

Every rule is a plain predicate on a decoded record (:func:`failed_rule`); :func:`prefilter`
is the vectorised form of the cheap ones, applied in :mod:`xenrs_cli.scan_windows` before any
record is decoded (``tests/test_scan_rules.py`` checks that it never rejects what the
predicates accept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xenrs_cli.accounting import Accounting
from xenrs_cli.layouts import RunState, RunstateInfo

# Nanoseconds of uptime: 2^56 ns is 2.28 years. Xen's system time counts from the host's boot,
# KVM's kvmclock from the VM's creation; a larger entry time is a kernel pointer, a packed
# structure or text, not a clock. (In the real dumps this alone rejects ~265,000 places.)
MAX_ENTRY_TIME = 1 << 56
# The shortest total a state can accumulate once entered: a state change is a hypercall, a
# scheduler pass or a VM exit away from the next, microseconds at the least. Small integers
# (counts, flags, lengths) are what sit in those fields otherwise.
MIN_PERIOD = 1_000
# A false rejection rate per record: the texture rule's bound (see :func:`texture_p`).
TEXTURE_P = 1e-6


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its name in the summary, and the reason it gives."""

    name: str
    why: str


UPTIME = Rule("uptime", "state_entry_time above 2^56 ns (2.28 years of uptime)")
PADDING = Rule("padding", "64-bit padding not zero (Xen copies a zeroed struct vcpu's "
               "runstate, KVM writes zero padding; neither leaves anything else there)")
IDLE = Rule("no-time", "no time accounted at all (time[] all zero)")
LIFECYCLE = Rule("lifecycle", "times no vCPU life produces (every vCPU starts offline, Xen "
                 "vcpu_create(), KVM's first kvm_xen_update_runstate(); it blocks only after "
                 "running)")
PERIOD = Rule("period", "a time[] below 1 us (a count or flag, not a sum of state periods)")
DISTINCT = Rule("distinct", "two time[] values equal (two sums of different periods)")
TEXTURE = Rule("texture", "counters with the zero and 0xff bytes of packed integers or masks, "
               "not the random low bytes of nanosecond sums")
TEXT = Rule("text", "two or more counters are printable text")
# How far past the latest witness (an exact record over two or more states) an offset hit's
# entry time may lie: the witnesses must be no older than 3/4 of the machine's uptime.
CLOCK_FACTOR = 4

# Applied by Scanner._uncrowded() to a page's hits and Scanner._on_the_clock() to all of them,
# not to one record.
CROWD = Rule("crowd", "three or more places in one page at uneven strides (one area per vCPU, "
             "each in its own per-CPU structure, or an array at one stride)")
CLOCK = Rule("clock", f"an offset record whose entry time is more than {CLOCK_FACTOR} times "
             "the latest exact record's (the dump's clock had not run that far)")
RULES = (UPTIME, PADDING, IDLE, LIFECYCLE, PERIOD, DISTINCT, TEXTURE, TEXT, CROWD, CLOCK)


def lifecycle_ok(info: RunstateInfo, kind: Accounting) -> bool:
    """Whether the times are ones a vCPU's life can produce under its accounting.

    Both hypervisors start a vCPU offline and book the time before its first state change to
    ``offline``: Xen's ``vcpu_create()`` sets ``RUNSTATE_offline`` (entry time = creation, the
    ``offset``); KVM's ``kvm_xen_update_runstate()`` books the interval since kvmclock 0 to
    offline on the first transition (``runstate_entry_time == 0``). Xen's idle vCPUs start
    ``running`` at time 0 (``exact``, never blocked nor offline). Hence:

    * a single nonzero time is the creation state's, and the vCPU has left that state: offline
      with any other state (Xen: runnable, the only state a wake leads to; KVM: any). (Xen's
      idle vCPUs, created running, show a single running time only between their first and
      second context switch, in Xen's first moments: not worth the look-alikes it would let
      in, 0xffffffff-like tables of one value and zeros);
    * on Xen (``offset``), any history at all starts with offline time, and a vCPU that ran
      was runnable first: ``vcpu_wake()`` makes it runnable, the scheduler then running;
    * ``blocked`` time needs ``running`` time: a vCPU blocks itself (Xen ``vcpu_block()``).
    """
    t = info.time
    nonzero = [i for i in range(4) if t[i]]
    state = info.state
    if len(nonzero) == 1:
        (only,) = nonzero
        return only == RunState.offline and state != RunState.offline and (
            kind is Accounting.EXACT or state == RunState.runnable)
    if kind is Accounting.OFFSET and not t[RunState.offline]:
        return False
    if kind is Accounting.OFFSET and t[RunState.running] and not t[RunState.runnable]:
        return False
    return not (t[RunState.blocked] and not t[RunState.running])


def _marks(values: list[int]) -> tuple[int, int]:
    """``(n, k)``: of the ``n`` inner bytes of the values (below the top nonzero byte, above the
    lowest), ``k`` are 0x00 or 0xff."""
    n = k = 0
    for v in values:
        inner = v.to_bytes(8, "little").rstrip(b"\0")[1:-1]
        n += len(inner)
        k += sum(1 for b in inner if b in (0, 0xFF))
    return n, k


def _binomial_tail(n: int, k: int, p: float) -> float:
    return sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def texture_p(values: list[int]) -> float:
    """The chance that nanosecond counters show as many 0x00/0xff inner bytes as ``values``.

    A nanosecond sum's bytes below its top byte are uniform: each is 0x00 or 0xff with
    probability 2/256, so the count over ``n`` inner bytes is binomial. Packed 32-bit pairs
    (``0x0000000100000001``), masks (``0xffffffff``), multiples of 2^32 and shifted values are
    full of them. The lowest byte is left out: round decimal test values end in a zero byte.
    """
    n, k = _marks(values)
    return _binomial_tail(n, k, 2 / 256)


def textured(values: list[int]) -> bool:
    """Whether the values carry the texture of packed integers rather than of nanosecond sums:
    all of them together (:func:`texture_p`), or any one alone, below :data:`TEXTURE_P`; or one
    of at least 2^32 whose bits 8..31 are zero (a multiple of 2^32 up to its lowest byte: a
    32-bit pair with a small or zero low half, probability 2^-24 for a sum of nanoseconds)."""
    if texture_p(values) < TEXTURE_P:
        return True
    for v in values:
        if v >> 32 and not (v >> 8) & 0xFFFFFF:
            return True
        if texture_p([v]) < TEXTURE_P:
            return True
    return False


def _is_text(v: int) -> bool:
    b = v.to_bytes(8, "little").rstrip(b"\0")
    return len(b) >= 4 and all(0x20 <= c < 0x7F for c in b)


def failed_rule(info: RunstateInfo) -> Rule | None:
    """The first rule the record breaks, or ``None`` if a hypervisor could have written it.

    ``info`` has already passed SPEC §6's rules (so its accounting is exact or offset).
    """
    kind = info.accounting
    entry = info.state_entry_time
    if entry >= MAX_ENTRY_TIME:
        return UPTIME
    if info.padding is not None and info.padding != bytes(4):
        return PADDING
    times = [t for t in info.time if t]
    if not times:
        return IDLE
    if not lifecycle_ok(info, kind):
        return LIFECYCLE
    if min(times) < MIN_PERIOD:
        return PERIOD
    if len(set(times)) < len(times):
        return DISTINCT
    if textured([entry, *times]):
        return TEXTURE
    if sum(map(_is_text, [entry, *times])) >= 2:
        return TEXT
    return None


def prefilter(np, state, padding, entry, times, exact) -> list[tuple[Rule, object]]:
    """The vectorised form of the rules of :func:`failed_rule` that need no Python, in its
    order: ``(rule, mask of the candidates that break it)``. ``state`` and ``entry`` (flag bit
    cleared) are arrays, ``padding`` too or ``None`` for compat, ``times`` the four ``time[]``
    arrays, ``exact`` marks the exact ones (the others are offset). What is left to
    :func:`failed_rule`: the texture's binomial tail, distinct times, text."""
    run, wait, block, off = times
    nz = [t != 0 for t in times]
    count = nz[0].astype(np.uint8) + nz[1] + nz[2] + nz[3]
    short = np.zeros(entry.shape, dtype=bool)
    for t, n in zip(times, nz):
        short |= n & (t < np.uint64(MIN_PERIOD))
    offset = ~exact
    # lifecycle_ok(): a single time is offline's, in another state (runnable on Xen); Xen's
    # history starts offline and runs after a wake; blocking needs running
    single_ok = nz[RunState.offline] & (state != RunState.offline) & (
        exact | (state == RunState.runnable))
    life = (count == 1) & ~single_ok
    life |= offset & ~nz[RunState.offline]
    life |= offset & nz[RunState.running] & ~nz[RunState.runnable]
    life |= nz[RunState.blocked] & ~nz[RunState.running]
    # texture's multiple of 2^32 (up to the lowest byte)
    packed = np.zeros(entry.shape, dtype=bool)
    for v in (entry, *times):
        packed |= ((v >> np.uint64(32)) != 0) & (((v >> np.uint64(8)) & np.uint64(0xFFFFFF)) == 0)
    out = [(UPTIME, entry >= np.uint64(MAX_ENTRY_TIME))]
    if padding is not None:
        out.append((PADDING, padding != 0))
    out += [(IDLE, count == 0), (LIFECYCLE, life), (PERIOD, short), (TEXTURE, packed)]
    return out
