"""Property tests: random extents, holes, zero-filled tails and excluded pages, written by the
independent writer; at any GPA the reader's bytes and statuses equal a reference dictionary of
the image, pieces are maximal, and every plain file offset holds the bytes it claims."""

from __future__ import annotations

import importlib.util
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from dumpwriter import Kdump, Load, elf_core, flatten, kdump_file
from xenrs_cli.address_space import Status
from xenrs_cli.dumps import open_dump

PAGE = 4096
CODECS = [None, "zlib"] + (["lzo", "snappy", "zstd"] if importlib.util.find_spec("cramjam")
                           and importlib.util.find_spec("lzallright") else [])


def check_read(space, file_bytes: bytes, ref, gpa: int, size: int) -> None:
    """``ref(gpa) -> (status, byte)`` is the image's reference; compare one read against it."""
    data, pieces = space.read(gpa, size)
    assert len(data) == size and sum(p.len for p in pieces) == size
    expect = [ref(gpa + i) for i in range(size)]
    assert list(data) == [v if s is Status.PRESENT else 0 for s, v in expect]
    got = [p.status for p in pieces for _ in range(p.len)]
    assert got == [s for s, _ in expect]
    for p in pieces:
        assert p.gpa == gpa + p.offset
        assert p.gpa // PAGE == (p.gpa + p.len - 1) // PAGE  # never crosses a page
        if p.file_offset is not None:
            assert p.status is Status.PRESENT
            assert file_bytes[p.file_offset:p.file_offset + p.len] == \
                data[p.offset:p.offset + p.len]
    # maximal: neighbours in one page and one segment differ in status
    for a, b in zip(pieces, pieces[1:]):
        if a.gpa // PAGE == b.gpa // PAGE and space.segment_at(a.gpa) is space.segment_at(b.gpa):
            assert a.status is not b.status


@st.composite
def elf_images(draw):
    rng = random.Random(draw(st.integers(0, 2**32)))
    loads = []
    gpa = draw(st.integers(0, 4)) * PAGE
    for _ in range(draw(st.integers(1, 4))):
        gpa += draw(st.sampled_from([0, 0, 1, PAGE, 3 * PAGE]))
        filesz = draw(st.integers(0, 2 * PAGE + 100))
        memsz = filesz + draw(st.sampled_from([0, 0, 1, 500, PAGE]))
        if memsz == 0:
            continue
        loads.append(Load(gpa, rng.randbytes(filesz), memsz))
        gpa += memsz

    def ref(g: int) -> tuple[Status, int]:
        for ld in loads:
            if ld.paddr <= g < ld.paddr + ld.memsz:
                i = g - ld.paddr
                return (Status.PRESENT, ld.data[i]) if i < len(ld.data) else \
                    (Status.ZERO_FILLED, 0)
        return Status.ABSENT, 0

    return loads, ref, gpa


@settings(max_examples=40, deadline=None)
@given(elf_images(), st.booleans(), st.data())
def test_elf_reads_equal_the_reference(tmp_path_factory, image, elf64, data):
    loads, ref, end = image
    if not loads:
        return
    blob = elf_core(loads, elf64=elf64 or end >= 1 << 32)
    path = tmp_path_factory.mktemp("elf") / "vm.elf"
    path.write_bytes(blob)
    with open_dump(str(path)) as d:
        for _ in range(5):
            gpa = data.draw(st.integers(0, end + PAGE))
            size = data.draw(st.integers(1, 2 * PAGE + 50))
            check_read(d.space, blob, ref, gpa, size)


@st.composite
def kdump_images(draw):
    kinds = draw(st.lists(st.sampled_from(["absent", "excluded", "zero", "text", "random"]),
                          min_size=1, max_size=14))
    rng = random.Random(draw(st.integers(0, 2**32)))
    first = draw(st.integers(0, 3))
    pages, in_map, statuses = {}, [], {}
    for k, kind in enumerate(kinds):
        pfn = first + k
        if kind == "absent":
            continue
        if in_map and in_map[-1][1] == pfn:
            in_map[-1] = (in_map[-1][0], pfn + 1)
        else:
            in_map.append((pfn, pfn + 1))
        if kind == "excluded":
            statuses[pfn] = Status.EXCLUDED
            continue
        page = {"zero": bytes(PAGE), "random": rng.randbytes(PAGE),
                "text": (b"%d " % rng.randrange(10**6)) * 2000}[kind][:PAGE]
        pages[pfn] = page
        statuses[pfn] = Status.PRESENT
    k = Kdump(max_mapnr=first + len(kinds) + draw(st.integers(0, 3)), in_map=in_map,
              pages=pages, codec=draw(st.sampled_from(CODECS)),
              header64=draw(st.booleans()))

    def ref(g: int) -> tuple[Status, int]:
        status = statuses.get(g // PAGE, Status.ABSENT)
        return status, (pages[g // PAGE][g % PAGE] if status is Status.PRESENT else 0)

    return k, ref


@settings(max_examples=40, deadline=None)
@given(kdump_images(), st.booleans(), st.data())
def test_kdump_reads_equal_the_reference(tmp_path_factory, image, flat, data):
    k, ref = image
    blob = kdump_file(k)
    if flat:
        blob = flatten(blob, chunk=data.draw(st.sampled_from([1000, 4096, 7777])),
                       seed=data.draw(st.integers(0, 100)))
    path = tmp_path_factory.mktemp("kdump") / "vm.kdump"
    path.write_bytes(blob)
    end = k.max_mapnr * PAGE
    with open_dump(str(path)) as d:
        for _ in range(5):
            gpa = data.draw(st.integers(0, end))
            size = data.draw(st.integers(1, 2 * PAGE + 50))
            check_read(d.space, blob, ref, gpa, size)
        for seg in d.space.segments:  # the bulk path agrees with the reference too
            span = seg.read_span(0, seg.size)
            for i in range(0, seg.size, 61):
                status, value = ref(seg.gpa + i)
                assert span[i] == (value if status is Status.PRESENT else 0)
        # the runs of the whole space agree with the reference, byte by byte
        lo, hi = data.draw(st.integers(0, end)), end + PAGE
        covered = lo
        for run in d.space.runs(lo, hi):
            assert run.gpa == covered and run.size > 0
            for g in range(run.gpa, run.end, 97):
                assert ref(g)[0] is run.status
            covered = run.end
        assert covered == hi
