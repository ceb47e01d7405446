"""Decode one runstate area at a GPA of an address space, with the provenance of its bytes.

This is SPEC §3: the layout (given or inferred), the fields, the checks a triage engineer asks
first (mid-update flag, sum rule, unknown state), where the struct crosses a page, and the
``pieces`` that say where every byte came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xenrs_cli.accounting import DEFAULT_HYPERVISOR, accepted, explain
from xenrs_cli.address_space import AddressSpace, Piece, Status, check_present
from xenrs_cli.layouts import LAYOUT_64, LAYOUTS, PAGE_SIZE, Layout, RunstateInfo, decode

AUTO = "auto"
# SPEC §3: when both or neither layout is plausible, 64 is chosen.
PREFERRED = LAYOUT_64


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decoded runstate area. ``missing`` names fields that overlap non-present bytes."""

    gpa: int
    layout: Layout
    layout_inferred: bool
    raw: bytes
    pieces: tuple[Piece, ...]
    info: RunstateInfo
    missing: frozenset[str]
    warnings: tuple[str, ...]
    layout_warning: str | None = None  # why ``auto`` fell back to 64 (also in ``warnings``)
    hypervisor: str = DEFAULT_HYPERVISOR  # whose accounting counts as consistent (SPEC §7)

    @property
    def consistent(self) -> bool:
        """The accounting is one that :attr:`hypervisor` can leave (SPEC §7)."""
        return accepted(self.info.accounting, self.hypervisor)

    @property
    def split_at(self) -> int | None:
        """Struct offset of the first byte in the next 4 KiB page, or ``None``."""
        first = PAGE_SIZE - self.gpa % PAGE_SIZE
        return first if first < self.layout.size else None

    @property
    def flag_byte_gpa(self) -> int:
        return self.gpa + self.layout.flag_offset

    @property
    def findings(self) -> list[str]:
        """What ``--strict`` treats as a finding (exit 1)."""
        out = []
        if "state" not in self.missing and self.info.state_name == "unknown":
            out.append("unknown state")
        if "state_entry_time" not in self.missing and self.info.update_in_progress:
            out.append("update in progress")
        if not self.missing & _SUM_FIELDS and not self.consistent:
            out.append("inconsistent")
        return out


_SUM_FIELDS = frozenset({"state_entry_time", "time[0]", "time[1]", "time[2]", "time[3]"})


def _missing_fields(layout: Layout, pieces: list[Piece]) -> frozenset[str]:
    names: set[str] = set()
    for p in pieces:
        if p.status is not Status.PRESENT:
            names.update(layout.fields_touching(p.offset, p.offset + p.len))
    return frozenset(names)


def _read(space: AddressSpace, gpa: int, layout: Layout):
    data, pieces = space.read(gpa, layout.size)
    return data, pieces, _missing_fields(layout, pieces)


def _infer(space: AddressSpace, gpa: int) -> tuple[Layout, str | None, bool]:
    """SPEC §3 ``auto``: the one plausible layout (state 0..3, accounting not broken); 64 (with a
    warning) for both or neither. The flag says whether it is a guess (neither was plausible)."""
    plausible, complete = [], []
    for layout in LAYOUTS.values():
        data, pieces, missing = _read(space, gpa, layout)
        if missing:
            continue
        complete.append(layout)
        if decode(layout, data).plausible:
            plausible.append(layout)
    if len(plausible) == 1:
        return plausible[0], None, False
    if plausible:
        return (PREFERRED, "both layouts are plausible here; decoded as 64 (use --layout to "
                "choose)", False)
    # Neither: prefer 64, unless only compat's bytes are all in the dump.
    chosen = PREFERRED if PREFERRED in complete or not complete else complete[0]
    return chosen, (f"neither layout is plausible here (state 0..3 and times that add up as Xen "
                    f"or KVM account them); decoded as {chosen.name} (use --layout to "
                    "choose)"), True


def decode_at(space: AddressSpace, gpa: int, layout: str = AUTO,
              allow_missing: bool = False, hypervisor: str = DEFAULT_HYPERVISOR) -> Decoded:
    """Decode the runstate area at ``gpa``; ``hypervisor`` (``any``, ``kvm``, ``xen``) decides
    which accounting is consistent (SPEC §7).

    Without ``allow_missing``, a byte that is not ``present`` raises
    :class:`~xenrs_cli.errors.UnmappedAddressError` naming the range and its status.
    """
    layout_warning, guessed = None, False
    if layout == AUTO:
        chosen, layout_warning, guessed = _infer(space, gpa)
    else:
        chosen = LAYOUTS[layout]
    data, pieces, missing = _read(space, gpa, chosen)
    if missing and not allow_missing:
        check_present(pieces)
    info = decode(chosen, data)
    # When neither layout is plausible the 64-bit reading is a guess: what its bit 63 says
    # about an update in progress would be a claim about bytes that may not be that field.
    warnings = ([layout_warning] if layout_warning else []) + _record_warnings(
        info, missing, hypervisor, guessed)
    return Decoded(gpa, chosen, layout == AUTO, data, tuple(pieces), info, missing,
                   tuple(warnings), layout_warning, hypervisor)


def _record_warnings(info: RunstateInfo, missing: frozenset[str], hypervisor: str,
                     guessed: bool = False) -> list[str]:
    out = []
    if missing:
        out.append("not present in the dump, shown as null: " + ", ".join(sorted(missing)))
    if "state" not in missing and info.state_name == "unknown":
        out.append(f"unknown state {info.state} (RUNSTATE_* is 0..3)")
    if "state_entry_time" not in missing and info.update_in_progress and not guessed:
        out.append("XEN_RUNSTATE_UPDATE is set: the dump caught the hypervisor mid-update")
    if not missing & _SUM_FIELDS:
        text = explain(info.accounting, info, hypervisor)
        if text:
            out.append(text)
    return out


def hexaddr(value: int | None) -> str | None:
    return None if value is None else f"0x{value:x}"


def to_json_dict(d: Decoded, dump: str) -> dict[str, Any]:
    """The SPEC §3 record; fields overlapping missing bytes are ``None``."""
    info, miss = d.info, d.missing

    def known(*names: str) -> bool:
        return not miss.intersection(names)

    times = ("time[0]", "time[1]", "time[2]", "time[3]")
    time = {name: (info.time[i] if known(times[i]) else None)
            for i, name in enumerate(("running", "runnable", "blocked", "offline"))}
    sums_known = known("state_entry_time", *times)
    return {
        "dump": dump,
        "gpa": hexaddr(d.gpa),
        "layout": d.layout.name,
        "layout_inferred": d.layout_inferred,
        "size": d.layout.size,
        "state": info.state_name if known("state") else None,
        "state_code": info.state if known("state") else None,
        "state_entry_time": info.state_entry_time if known("state_entry_time") else None,
        "update_in_progress": info.update_in_progress if known("state_entry_time") else None,
        "time": time,
        "time_sum": info.time_sum if known(*times) else None,
        "unaccounted": info.unaccounted if sums_known else None,
        "accounting": info.accounting.value if sums_known else None,
        "consistent": d.consistent if sums_known else None,
        "steal": info.steal if known("time[1]", "time[3]") else None,
        "padding": (info.padding.hex() if known("padding") else None)
        if d.layout.has_padding else None,
        "crosses_page": d.split_at is not None,
        "split_at": d.split_at,
        "flag_byte_gpa": hexaddr(d.flag_byte_gpa),
        "pieces": [{"gpa": hexaddr(p.gpa), "offset": p.offset, "len": p.len,
                    "file_offset": p.file_offset, "status": p.status.value} for p in d.pieces],
        "raw": d.raw.hex(),
        "warnings": list(d.warnings),
    }
