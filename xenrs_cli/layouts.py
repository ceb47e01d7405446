"""The two layouts of Xen's ``struct vcpu_runstate_info``, declared once.

Xen ``xen/include/public/vcpu.h`` defines ``int state; uint64_t state_entry_time; uint64_t
time[4];``. A 64-bit guest sees natural alignment (4 bytes of padding after ``state``, 48 bytes);
a 32-bit guest sees the i386 ABI, which Linux spells ``struct compat_vcpu_runstate_info
__attribute__((packed))`` (``arch/x86/kvm/xen.h``, 44 bytes). Linux's
``kvm_xen_update_runstate_guest()`` asserts both sizes with ``BUILD_BUG_ON``.

Every size and offset the rest of xenrs uses (struct size, ``state_entry_time`` offset, the
byte that holds ``XEN_RUNSTATE_UPDATE``, field spans) is derived from these declarations.
"""

from __future__ import annotations

import struct as _struct
from dataclasses import dataclass
from enum import IntEnum

from construct import Array, Bytes, Int32sl, Int64ul, Struct

from xenrs_cli.accounting import Accounting, unaccounted
from xenrs_cli.accounting import accounting as accounting_of
from xenrs_cli.binary import compiled

# Xen public/vcpu.h: "#define XEN_RUNSTATE_UPDATE (xen_mk_ullong(1) << 63)".
XEN_RUNSTATE_UPDATE = 1 << 63
U64_MASK = (1 << 64) - 1
PAGE_SIZE = 4096


class RunState(IntEnum):
    """``RUNSTATE_*`` from Xen public/vcpu.h; the index into ``time[]`` too."""

    running = 0
    runnable = 1
    blocked = 2
    offline = 3


TIME_NAMES = tuple(s.name for s in RunState)

RUNSTATE_64 = Struct(
    "state" / Int32sl,
    "padding" / Bytes(4),  # named, not Padding(): decode reports it and encode keeps it
    "state_entry_time" / Int64ul,
    "time" / Array(4, Int64ul),
)

RUNSTATE_COMPAT = Struct(
    "state" / Int32sl,
    "state_entry_time" / Int64ul,
    "time" / Array(4, Int64ul),
)


@dataclass(frozen=True, slots=True)
class Field:
    """One named byte span of a layout: ``time[1]`` is ``Field("time[1]", 24, 8)`` in 64."""

    name: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


def _fields(struct: Struct) -> tuple[Field, ...]:
    out: list[Field] = []
    offset = 0
    for sub in struct.subcons:
        size = sub.sizeof()
        if sub.name == "time":
            each = size // 4
            out += [Field(f"time[{i}]", offset + i * each, each) for i in range(4)]
        else:
            out.append(Field(sub.name, offset, size))
        offset += size
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Layout:
    """A runstate layout with every size and offset derived from its construct declaration.

    Build one with :func:`make_layout`; the derived numbers are plain attributes because the
    simulator, race checker and scanner read them in hot loops.
    """

    name: str
    struct: Struct
    fields: tuple[Field, ...]
    size: int
    entry_offset: int   # ``times_ofs`` in kvm_xen_update_runstate_guest()
    flag_offset: int    # the byte holding bit 63: last byte of state_entry_time (little-endian)
    times_offset: int   # time[0]
    has_padding: bool
    unpacker: _struct.Struct  # the declaration compiled to a stdlib format, for hot loops

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def fields_touching(self, start: int, end: int) -> list[str]:
        """Names of the fields that overlap struct bytes ``[start, end)``, in struct order."""
        return [f.name for f in self.fields if f.offset < end and start < f.end]


def make_layout(name: str, struct: Struct) -> Layout:
    fields = _fields(struct)
    by_name = {f.name: f for f in fields}
    entry = by_name["state_entry_time"]
    unpacker = compiled(struct)  # decode() and encode() use it; construct stays the declaration
    return Layout(name, struct, fields, struct.sizeof(), entry.offset, entry.end - 1,
                  by_name["time[0]"].offset, "padding" in by_name, unpacker)


LAYOUT_64 = make_layout("64", RUNSTATE_64)
LAYOUT_COMPAT = make_layout("compat", RUNSTATE_COMPAT)
LAYOUTS: dict[str, Layout] = {l.name: l for l in (LAYOUT_64, LAYOUT_COMPAT)}


def state_name(code: int) -> str:
    """``running`` … ``offline``, or ``unknown`` for any other ``state`` value."""
    return RunState(code).name if 0 <= code <= 3 else "unknown"


@dataclass(frozen=True, slots=True)
class RunstateInfo:
    """The values of one ``vcpu_runstate_info``, independent of layout.

    ``state_entry_time_raw`` keeps bit 63 (``XEN_RUNSTATE_UPDATE``); ``padding`` is the 4 bytes
    after ``state`` in the 64-bit layout (``None`` in compat).
    """

    state: int
    state_entry_time_raw: int
    time: tuple[int, int, int, int]
    padding: bytes | None = None

    @property
    def state_name(self) -> str:
        return state_name(self.state)

    @property
    def update_in_progress(self) -> bool:
        return bool(self.state_entry_time_raw & XEN_RUNSTATE_UPDATE)

    @property
    def state_entry_time(self) -> int:
        return self.state_entry_time_raw & ~XEN_RUNSTATE_UPDATE & U64_MASK

    @property
    def time_sum(self) -> int:
        # u64 arithmetic, as KVM's RUNSTATE_DATA check: the sum wraps modulo 2^64.
        return sum(self.time) & U64_MASK

    @property
    def exact(self) -> bool:
        """KVM's sum rule: the times sum to the entry time (mod 2^64, as its u64 check)."""
        return self.state_entry_time == self.time_sum

    @property
    def accounting(self) -> Accounting:
        """``exact``, ``offset`` or ``broken`` (:mod:`xenrs_cli.accounting`, SPEC §7)."""
        return accounting_of(self)

    @property
    def unaccounted(self) -> int:
        """``state_entry_time - time_sum``, signed."""
        return unaccounted(self)

    @property
    def steal(self) -> int:
        # Linux drivers/xen/time.c xen_steal_clock(): runnable + offline.
        return (self.time[RunState.runnable] + self.time[RunState.offline]) & U64_MASK

    @property
    def plausible(self) -> bool:
        """SPEC §3 ``auto``: a known state and an accounting that is not broken (flag bit
        ignored)."""
        return 0 <= self.state <= 3 and self.accounting is not Accounting.BROKEN


def decode(layout: Layout, data: bytes) -> RunstateInfo:
    """Decode exactly ``layout.size`` bytes."""
    if len(data) != layout.size:
        raise ValueError(f"{layout.name} runstate needs {layout.size} bytes, got {len(data)}")
    values = layout.unpacker.unpack(data)
    if layout.has_padding:
        state, padding, entry, *times = values
    else:
        (state, entry, *times), padding = values, None
    return RunstateInfo(state, entry, tuple(times), padding)


def encode(layout: Layout, info: RunstateInfo) -> bytes:
    """The exact bytes of ``info`` in ``layout`` (64-bit padding zero unless given)."""
    entry, times = info.state_entry_time_raw & U64_MASK, [t & U64_MASK for t in info.time]
    if layout.has_padding:
        padding = info.padding if info.padding is not None else bytes(4)
        return layout.unpacker.pack(info.state, padding, entry, *times)
    return layout.unpacker.pack(info.state, entry, *times)
