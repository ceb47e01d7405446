"""The exact torn-read checker of SPEC §5: can the guest accept a torn runstate snapshot?

The question is the one behind KVM commit 5ec3289b31ab ("the low bytes might be observable
before the _UPDATE bit is"): while one hypervisor update of the area runs (a trace of
:mod:`xenrs_cli.trace` records), can Linux's ``xen_get_runstate_snapshot_cpu_delta()`` accept
a copy whose fields match neither the record before the update nor the one after it?

Memory model (x86-TSO, SPEC §5): writer units become visible in some order that respects the
barrier groups (any order inside a group; a ``copy`` is one unit per byte, a ``store`` one unit
per cache line it touches); the reader's units (:mod:`xenrs_cli.readers`) happen in program
order; each reader unit sees, per byte, the most recently visible write (the before-image if
none). An execution is a visibility order plus the instants of the reader units.

Search (exact, not sampling). A depth-first search over executions, memoised on its state,
with three reductions that keep it small and lose no execution:

* Laziness. A writer unit only has to become visible just before the first reader unit that
  reads one of its bytes, or when a unit of a later group that is being made visible needs its
  group complete. Delaying a unit to that point changes no observation, so only these moves
  are explored: before reader unit *r*, make visible a unit that *r* reads, or a unit of the
  lowest incomplete group when a unit that *r* reads belongs to a later group.
* Dead units. A unit none of whose bytes is read again can never be observed; it is dropped
  from the state, and a whole group's dead units become visible in one move when the group
  must complete.
* Doomed states. R2 (and get64's second hi) must see exactly the bytes R1 saw; once a byte
  differs from R1's value and no invisible unit writes that value there, the state is cut.

Torn, per SPEC §5 rule 4: accepted, and the copied non-padding bytes equal neither the
before-image nor the final image (so some byte differs from each: the state tracks just those
two bits). Cause (rule 5): ``writer`` if the tear survives with every reader load atomic,
else ``reader``.

Minimal witness: among all torn executions, one in which the fewest writer units are visible
when the reader's last unit runs (the shortest prefix of the update that already fools the
reader); ties go to reading early and to units in trace order. Writer units that become
visible after the reader finished are not shown.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from operator import itemgetter

from xenrs_cli.layouts import Layout, LAYOUTS
from xenrs_cli.readers import CACHE_LINE, CHECK, COPY, SET, ReaderUnit, line_split, slots
from xenrs_cli.trace import Record, Reject, Write

INF = float("inf")


@dataclass(frozen=True, slots=True)
class WriterUnit:
    """One unit of the writer: what becomes visible at one instant (SPEC §5 rule 1)."""

    seq: int          # the trace record it comes from
    group: int
    kind: str         # store or copy
    offset: int       # struct offset of the first byte
    data: bytes
    field: str        # the fields this unit touches
    part: str         # "" (whole store), "line 0"/"line 1" (a store split at a line), or "byte"

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True, slots=True)
class Problem:
    """Everything the verdict depends on, and nothing else (so sweep can memoise on it)."""

    layout: str
    reader: str
    before: bytes
    final: bytes
    units: tuple[WriterUnit, ...]
    split: int | None          # struct offset of the cache-line boundary in the area

    @property
    def lay(self) -> Layout:
        return LAYOUTS[self.layout]


@dataclass(frozen=True, slots=True)
class Step:
    """One row of a witness timeline: a writer unit becoming visible, or a reader unit."""

    writer: WriterUnit | None
    reader: ReaderUnit | None
    seen: bytes | None       # the bytes a reader unit observed


@dataclass(frozen=True, slots=True)
class Witness:
    steps: tuple[Step, ...]
    r1: int                  # the validated state_entry_time (bit 63 included)
    r2: int
    copy: bytes              # the struct as C copied it (padding: what it held at that time)


@dataclass(frozen=True, slots=True)
class Verdict:
    torn: bool
    cause: str | None        # "writer", "reader" or None
    witness: Witness | None


def units_of(records: list[Record], gpa: int) -> tuple[WriterUnit, ...]:
    """The writer units of a trace (SPEC §5 rule 1), in trace order.

    ``group`` is renumbered over the groups that hold writes: an empty group orders nothing.
    """
    writes = [r for r in records if isinstance(r, Write)]
    groups = {g: i for i, g in enumerate(sorted({w.group for w in writes}))}
    out: list[WriterUnit] = []
    for w in writes:
        g = groups[w.group]
        if w.kind == "copy":
            # memcpy()'s store width and order are unspecified: every byte is its own unit.
            out += [WriterUnit(w.seq, g, "copy", w.offset + i, w.data[i:i + 1], w.field, "byte")
                    for i in range(w.len)]
            continue
        cut = -w.gpa % CACHE_LINE
        if 0 < cut < w.len:
            # A store across a line is not single-copy atomic on x86: two units, either order.
            out.append(WriterUnit(w.seq, g, "store", w.offset, w.data[:cut], w.field, "line 0"))
            out.append(WriterUnit(w.seq, g, "store", w.offset + cut, w.data[cut:], w.field,
                                  "line 1"))
        else:
            out.append(WriterUnit(w.seq, g, "store", w.offset, w.data, w.field, ""))
    return tuple(out)


def apply_units(image: bytes, units: tuple[WriterUnit, ...]) -> bytes:
    """The image after every unit, in trace (program) order."""
    buf = bytearray(image)
    for u in units:
        buf[u.offset:u.end] = u.data
    return bytes(buf)


def problem(layout: Layout, gpa: int, before: bytes, records: list[Record],
            reader: str) -> Problem:
    """The checker's input for one update of the area at ``gpa`` (a refusal has no problem)."""
    if any(isinstance(r, Reject) for r in records):
        raise ValueError("a refused registration has no race to check")
    if len(before) != layout.size:
        raise ValueError(f"before-image must be {layout.size} bytes")
    units = units_of(records, gpa)
    for u in units:
        if u.offset < 0 or u.end > layout.size:
            raise ValueError(f"write at struct offset {u.offset} leaves the {layout.name} area")
    return Problem(layout.name, reader, bytes(before), apply_units(before, units), units,
                   line_split(gpa, layout))


def check(p: Problem, witness: bool = True) -> Verdict:
    """The SPEC §5 verdict; with ``witness``, a minimal witness when torn."""
    if not is_torn(p, atomic=False):
        return Verdict(False, None, None)
    cause = "writer" if is_torn(p, atomic=True) else "reader"
    return Verdict(True, cause, minimal_witness(p) if witness else None)


def is_torn(p: Problem, atomic: bool = False) -> bool:
    return _Search(p, slots(p.lay, p.reader, p.split, atomic), minimal=False).run() < INF


def minimal_witness(p: Problem) -> Witness | None:
    s = _Search(p, slots(p.lay, p.reader, p.split), minimal=True)
    return s.witness() if s.run() < INF else None


@dataclass(frozen=True, slots=True)
class _Node:
    """A point in the reader's program: which units of the current load are done."""

    reads: tuple[tuple[ReaderUnit, int], ...]   # (unit that may run next, node after it)
    touch: int                                  # writer units touching those units' bytes
    live: int                                   # writer units touching a byte still to read
    proj: object                                # live bytes of an image, as a tuple
    keep_r1: bool                               # a CHECK unit is still to come
    may_db: bool                                # a byte still to copy can differ from before
    may_da: bool                                # ... from the final image


class _Search:
    """Depth-first search with memo over (reader node, live writer state, observations)."""

    def __init__(self, p: Problem, prog: tuple[tuple[ReaderUnit, ...], ...],
                 minimal: bool) -> None:
        lay = p.lay
        self.p, self.minimal = p, minimal
        self.units = p.units
        self.entry = lay.entry_offset
        self.flag = lay.flag_offset
        ngroups = 1 + max((u.group for u in self.units), default=-1)
        self.group_mask = [sum(1 << i for i, u in enumerate(self.units) if u.group == g)
                           for g in range(ngroups)]
        self.group_of = [u.group for u in self.units]
        self.writers_of: dict[int, list[tuple[int, int]]] = {}
        for i, u in enumerate(self.units):
            for j, v in enumerate(u.data):
                self.writers_of.setdefault(u.offset + j, []).append((i, v))
        self.nodes = self._nodes(prog)
        # Hot-loop copies of each unit: (offset, end, data), and the entry-time bytes it writes.
        self.spans = [(u.offset, u.end, u.data) for u in self.units]
        self.entry_bytes = [tuple(range(max(u.offset, self.entry), min(u.end, self.entry + 8)))
                            for u in self.units]
        # Groups whose units share no byte: every completion order gives the same image.
        self.disjoint = []
        for m in self.group_mask:
            spans = sorted((self.units[i].offset, self.units[i].end) for i in _bits(m))
            self.disjoint.append(all(a[1] <= b[0] for a, b in zip(spans, spans[1:])))
        pad = lay.field("padding") if lay.has_padding else None
        self.pad_end = {pad.offset - 1: pad.end} if pad else {}
        self.memo: dict[tuple, tuple[float, tuple | None]] = {}
        self.start = (0, 0, p.before, (-1,) * 8, False, False)

    def _nodes(self, prog) -> list[_Node]:
        """The reader's program as a small automaton: a load split at a line is two units in
        either order, so its slot has a node per subset of its units already done."""
        index: dict[tuple[int, frozenset], int] = {}
        order: list[tuple[int, frozenset]] = []
        for s, slot in enumerate(prog):
            for done in _subsets(len(slot)):
                index[(s, done)] = len(order)
                order.append((s, done))
        end = len(order)

        def after(s: int, done: frozenset) -> int:
            return index[(s, done)] if len(done) < len(prog[s]) else \
                (index[(s + 1, frozenset())] if s + 1 < len(prog) else end)

        later: list[set[int]] = [set() for _ in range(len(prog) + 1)]
        later_copy: list[set[int]] = [set() for _ in range(len(prog) + 1)]
        for s in range(len(prog) - 1, -1, -1):
            later[s] = later[s + 1] | {b for r in prog[s] for b in range(r.offset, r.end)}
            later_copy[s] = later_copy[s + 1] | {r.offset for r in prog[s] if r.role == COPY}
        last_check = max((s for s, slot in enumerate(prog) for r in slot if r.role == CHECK),
                         default=-1)
        nodes = []
        for s, done in order:
            todo = [r for k, r in enumerate(prog[s]) if k not in done]
            now = {b for r in todo for b in range(r.offset, r.end)}
            live_b = sorted(now | later[s + 1])
            copy_b = {r.offset for r in todo if r.role == COPY} | later_copy[s + 1]
            nodes.append(_Node(
                tuple((r, after(s, done | {k})) for k, r in enumerate(prog[s]) if k not in done),
                self._mask(now), self._mask(set(live_b)), _projector(live_b), s <= last_check,
                any(v != self.p.before[b] for b in copy_b for _, v in self.writers_of.get(b, ())),
                any(self.p.final[b] != v for b in copy_b
                    for v in [self.p.before[b]] + [v for _, v in self.writers_of.get(b, ())])))
        return nodes

    def _mask(self, byteset: set[int]) -> int:
        return sum(1 << i for i, u in enumerate(self.units)
                   if any(b in byteset for b in range(u.offset, u.end)))

    # -- the search -------------------------------------------------------------------------

    def run(self) -> float:
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10000))
        try:
            return self._best(*self.start)
        finally:
            sys.setrecursionlimit(limit)

    def _key(self, pos, vis, mem, r1, db, da):
        node = self.nodes[pos]
        live = node.live
        gmin = self._gmin(vis)
        key = (pos, vis & live, node.proj(mem), r1 if node.keep_r1 else None, db, da, gmin)
        if self.minimal and gmin < len(self.group_mask):
            # Invisible dead units of the frontier group cost a move each when it completes.
            key += ((~vis & self.group_mask[gmin] & ~live).bit_count(),)
        return key

    def _gmin(self, vis: int) -> int:
        for g, m in enumerate(self.group_mask):
            if vis & m != m:
                return g
        return len(self.group_mask)

    def _best(self, pos, vis, mem, r1, db, da) -> float:
        if pos == len(self.nodes):
            return 0 if db and da else INF
        node = self.nodes[pos]
        if not (db or node.may_db) or not (da or node.may_da):
            return INF  # no byte left to copy can make the snapshot torn
        key = self._key(pos, vis, mem, r1, db, da)
        hit = self.memo.get(key)
        if hit is not None:
            return hit[0]
        self.memo[key] = (INF, None)  # no cycles: every move advances pos or grows vis
        best: tuple[float, tuple | None] = (INF, None)
        for move, nxt, cost in self._moves(pos, vis, mem, r1, db, da):
            if cost >= best[0]:
                continue
            total = cost + self._best(*nxt)
            if total < best[0]:
                best = (total, (move,))
                if not self.minimal or total == 0:
                    break
        self.memo[key] = best
        return best[0]

    def _moves(self, pos, vis, mem, r1, db, da):
        node = self.nodes[pos]
        for k, (r, nxt) in enumerate(node.reads):
            seen = self._read(r, mem, r1, db, da)
            if seen is not None:
                yield ("read", k), (nxt, vis, mem, *seen), 0
        pending = node.touch & ~vis
        if not pending:
            return
        maxg = max(self.group_of[i] for i in _bits(pending))
        gmin = self._gmin(vis)
        for i in _bits(pending & self.group_mask[gmin]):
            start, end, data = self.spans[i]
            new = mem[:start] + data + mem[end:]
            nvis = vis | (1 << i)
            if not self._doomed(node, nvis, new, r1, self.entry_bytes[i]):
                yield ("write", i), (pos, nvis, new, r1, db, da), 1
        if gmin < maxg:
            # A unit the reader is about to read is in a later group: the frontier group
            # completes first, its remaining units in every order that can matter.
            rest = self.group_mask[gmin] & ~vis
            nvis = vis | rest
            idx = list(_bits(rest))
            if self.disjoint[gmin]:
                buf = bytearray(mem)
                for i in idx:
                    start, end, data = self.spans[i]
                    buf[start:end] = data
                images = [bytes(buf)]
            else:
                images = _completions(mem, [self.units[i] for i in idx])
            touched = {b for i in idx for b in self.entry_bytes[i]}
            for new in images:
                if not self._doomed(node, nvis, new, r1, touched):
                    yield (("group", node.proj(new)), (pos, nvis, new, r1, db, da),
                           rest.bit_count())

    def _read(self, r: ReaderUnit, mem, r1, db, da):
        """The observation of reader unit ``r``, or ``None`` if it cannot be accepted."""
        if r.role == COPY:
            b = r.offset
            return r1, db or mem[b] != self.p.before[b], da or mem[b] != self.p.final[b]
        if r.role == SET:
            if r.offset <= self.flag < r.end and mem[self.flag] & 0x80:
                return None  # (state_time & XEN_RUNSTATE_UPDATE): the reader retries
            new = list(r1)
            for b in range(r.offset, r.end):
                new[b - self.entry] = mem[b]
            return tuple(new), db, da
        for b in range(r.offset, r.end):  # CHECK: get64's h2 == h, or R2 == R1
            if mem[b] != r1[b - self.entry]:
                return None
        return r1, db, da

    def _doomed(self, node: _Node, vis, mem, r1, changed) -> bool:
        """R2 must see R1's bytes: cut a state where one of them can no longer come back."""
        if not node.keep_r1:
            return False
        for b in changed:  # the entry-time bytes just written
            want = r1[b - self.entry]
            if want < 0 or mem[b] == want:
                continue
            if not any(not vis >> i & 1 and v == want for i, v in self.writers_of[b]):
                return True
        return False

    # -- the witness ------------------------------------------------------------------------

    def witness(self) -> Witness | None:
        """Replay the memoised best moves from the start (call after :meth:`run`)."""
        state = self.start
        steps: list[Step] = []
        copy = bytearray(self.p.before)
        while state[0] < len(self.nodes):
            hit = self.memo.get(self._key(*state))
            if hit is None or hit[1] is None:
                return None
            want = hit[1][0]
            # Regenerate the move from this state: the memo entry may come from another path
            # that differs only in dead bytes.
            move, nxt = next((m, n) for m, n, _ in self._moves(*state)
                             if m == want)
            mem = state[2]
            if move[0] == "read":
                r = self.nodes[state[0]].reads[move[1]][0]
                steps.append(Step(None, r, mem[r.offset:r.end]))
                if r.phase == "C":
                    # C also copies the padding after this byte, which no unit of ours reads.
                    stop = self.pad_end.get(r.offset, r.offset + 1)
                    copy[r.offset:stop] = mem[r.offset:stop]
            else:
                idx = [move[1]] if move[0] == "write" else list(_bits(nxt[1] & ~state[1]))
                # (a completed group is listed in trace order; its real order is any that
                # yields the bytes the next reader unit sees)
                steps += [Step(self.units[i], None, None) for i in idx]
            state = nxt
        r1 = int.from_bytes(bytes(state[3]), "little")
        # Accepted: every CHECK unit, R2 included, saw exactly R1's bytes.
        return Witness(tuple(steps), r1, r1, bytes(copy))


def _completions(mem: bytes, units: list[WriterUnit]) -> list[bytes]:
    """The distinct images after ``units`` become visible in any order.

    Only units that share a byte can disagree, so only clusters of overlapping units are
    permuted (the models' groups have none; hand-written traces may).
    """
    clusters: list[list[WriterUnit]] = []
    for u in units:
        hit = [c for c in clusters if any(u.offset < v.end and v.offset < u.end for v in c)]
        merged = [u] + [v for c in hit for v in c]
        clusters = [c for c in clusters if c not in hit] + [merged]
    images = {bytes(mem)}
    for c in clusters:
        nxt = set()
        for img in images:
            for order in itertools.permutations(c):
                buf = bytearray(img)
                for v in order:
                    buf[v.offset:v.end] = v.data
                nxt.add(bytes(buf))
        images = nxt
    return sorted(images)


def _subsets(n: int) -> list[frozenset]:
    """The proper subsets of ``range(n)`` (n is 1 or 2), smallest first."""
    return [frozenset()] if n == 1 else [frozenset(), frozenset({0}), frozenset({1})]


def _projector(live: list[int]):
    if not live:
        return lambda m: ()
    if len(live) == 1:
        b = live[0]
        return lambda m: (m[b],)
    return itemgetter(*live)


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
