"""``xenrs race``'s report: run the checker on a scenario and explain its verdict.

:mod:`xenrs_cli.race` answers torn or not, with a minimal witness; this module turns that into
what a kernel engineer reads: the scenario and verdict (:class:`RaceReport`), the witness as a
timeline, where each field of the accepted copy came from, which fields are torn, the JSON of
SPEC §5, and the ``--before`` record.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenrs_cli.layouts import Layout
from xenrs_cli.race import Problem, Verdict, Witness, check, problem
from xenrs_cli.trace import Reject


@dataclass(frozen=True, slots=True)
class RaceReport:
    """``xenrs race``'s answer for one scenario: refused, or a verdict on its problem."""

    model: str
    layout: str
    gpa: int
    reader: str
    update_flag: bool
    event: str
    refused: Reject | None
    problem: Problem | None
    verdict: Verdict | None

    @property
    def finding(self) -> bool:
        return self.refused is not None or bool(self.verdict and self.verdict.torn)


def race(scenario, reader: str | None = None) -> RaceReport:
    """Simulate ``scenario`` (a :class:`xenrs_cli.simulate.Scenario`) and check it."""
    from xenrs_cli.readers import default_reader
    from xenrs_cli.simulate import simulate

    layout = scenario.layout_obj
    reader = reader or default_reader(layout)
    records = simulate(scenario)
    refused = next((r for r in records if isinstance(r, Reject)), None)
    p = v = None
    if refused is None:
        p = problem(layout, scenario.gpa, scenario.before, records, reader)
        v = check(p)
    return RaceReport(scenario.model, layout.name, scenario.gpa, reader, scenario.update_flag,
                      scenario.event, refused, p, v)


def parse_before(text: str, layout: Layout):
    """``--before state=..,entry=..,running=..,runnable=..,blocked=..,offline=..``.

    Keys in any order; a time left out is 0, ``entry`` defaults to the sum of the times
    (a consistent record), ``state`` to running. Bit 63 is refused: the record before an
    update is not itself mid-update.
    """
    from xenrs_cli.errors import UsageError
    from xenrs_cli.layouts import TIME_NAMES, U64_MASK, XEN_RUNSTATE_UPDATE, RunstateInfo
    from xenrs_cli.simulate import parse_state, parse_u64

    values: dict[str, str] = {}
    for item in text.split(","):
        key, sep, val = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("state", "entry", *TIME_NAMES):
            raise UsageError(f"--before: {item.strip()!r} is not KEY=VALUE with KEY one of "
                             f"state, entry, {', '.join(TIME_NAMES)}")
        if key in values:
            raise UsageError(f"--before: {key} given twice")
        values[key] = val.strip()
    times = tuple(parse_u64(values[n], f"--before {n}") if n in values else 0
                  for n in TIME_NAMES)
    entry = parse_u64(values["entry"], "--before entry") if "entry" in values else \
        sum(times) & U64_MASK
    if entry & XEN_RUNSTATE_UPDATE:
        raise UsageError(f"--before entry 0x{entry:x} has bit 63 (XEN_RUNSTATE_UPDATE) set; "
                         "give the record as it is between updates")
    try:
        state = parse_state(values.get("state", "running"))
    except UsageError as e:
        raise UsageError(f"--before: {e}") from None
    return RunstateInfo(state, entry, times, bytes(4) if layout.has_padding else None)


def timeline(w: Witness) -> list[dict]:
    """The witness as rows: consecutive reader units of one phase over adjacent bytes, and
    consecutive bytes of one copy record, are merged into one row each."""
    rows: list[dict] = []
    for s in w.steps:
        last = rows[-1] if rows else None
        if s.writer is not None:
            u = s.writer
            if (last and last["actor"] == "writer" and u.part == "byte" and
                    last["part"] == "byte" and last["seq"] == u.seq and
                    last["offset"] + last["len"] == u.offset):
                last["len"] += 1
                last["data"] += u.data.hex()
                continue
            rows.append({"step": len(rows), "actor": "writer", "seq": u.seq, "group": u.group,
                         "kind": u.kind, "part": u.part, "offset": u.offset,
                         "len": len(u.data), "data": u.data.hex(), "field": u.field})
        else:
            r = s.reader
            if (last and last["actor"] == "reader" and r.phase == "C" and
                    last["phase"] == "C" and last["offset"] + last["len"] == r.offset):
                last["len"] += r.size
                last["seen"] += s.seen.hex()
                last["unit"] = f"C[{last['offset']}..{r.end - 1}]"
                continue
            rows.append({"step": len(rows), "actor": "reader", "unit": r.label,
                         "phase": r.phase, "offset": r.offset, "len": r.size,
                         "seen": s.seen.hex()})
    return rows


def field_sources(p: Problem, w: Witness) -> dict[str, str]:
    """Per field of the copy: ``before``, ``after``, ``both`` (the update left it unchanged)
    or ``neither`` (a mix of the two, or a value only seen mid-update)."""
    out = {}
    for f in p.lay.fields:
        if f.name == "padding":
            continue
        got = w.copy[f.offset:f.end]
        b, a = got == p.before[f.offset:f.end], got == p.final[f.offset:f.end]
        out[f.name] = "both" if a and b else "before" if b else "after" if a else "neither"
    return out


def torn_fields(p: Problem, w: Witness) -> list[str]:
    """The fields that do not belong to the record whose ``state_entry_time`` the reader
    validated (R1): a field of the other record, or of neither."""
    e = p.lay.entry_offset
    sources = field_sources(p, w)
    refs = [side for side, img in (("before", p.before), ("after", p.final))
            if int.from_bytes(img[e:e + 8], "little") == w.r1]
    if not refs:  # R1 itself is a value neither record has: the entry time is torn too
        return [n for n, s in sources.items() if s != "both"]
    return min(([n for n, s in sources.items() if s not in (ref, "both")] for ref in refs),
               key=len)


def report_json(rep: RaceReport) -> dict:
    """SPEC §5's ``race`` record."""
    v = rep.verdict
    out = {"model": rep.model, "layout": rep.layout, "gpa": f"0x{rep.gpa:x}",
           "reader": rep.reader, "update_flag": rep.update_flag, "event": rep.event,
           "refused": rep.refused is not None, "torn": bool(v and v.torn),
           "cause": v.cause if v else None, "witness": None}
    if v is not None and v.witness is not None:
        out["witness"] = witness_json(rep.problem, v.witness)
    return out


def witness_json(p: Problem, w: Witness) -> dict:
    from xenrs_cli.layouts import decode

    info = decode(p.lay, w.copy)
    return {
        "timeline": timeline(w),
        "r1": w.r1, "r2": w.r2,
        "copy": {"state": info.state_name, "state_code": info.state,
                 "state_entry_time": info.state_entry_time,
                 "update_in_progress": info.update_in_progress,
                 "time": dict(zip(("running", "runnable", "blocked", "offline"), info.time)),
                 "raw": w.copy.hex()},
        "before": p.before.hex(), "after": p.final.hex(),
        "fields": field_sources(p, w),
        "torn_fields": torn_fields(p, w),
    }
