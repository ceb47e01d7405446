"""The two binary helpers: compiled declarations agree with construct; parse errors carry offsets."""

from __future__ import annotations

import pytest
from construct import Array, Bytes, CString, Int8ub, Int16sb, Int32ul, Int64sb, Int64ul, Struct
from hypothesis import given
from hypothesis import strategies as st

from xenrs_cli.binary import compiled, parse
from xenrs_cli.dumps.flattened import RECORD
from xenrs_cli.dumps.kdump import PAGE_DESC
from xenrs_cli.errors import BadDumpError

BIG = Struct("a" / Int8ub, "b" / Int16sb, "c" / Bytes(3), "d" / Array(2, Int64sb))


@given(a=st.integers(0, 255), b=st.integers(-(1 << 15), (1 << 15) - 1),
       c=st.binary(min_size=3, max_size=3),
       d=st.lists(st.integers(-(1 << 63), (1 << 63) - 1), min_size=2, max_size=2))
def test_compiled_big_endian_equals_construct(a, b, c, d):
    packed = compiled(BIG).pack(a, b, c, *d)
    assert packed == BIG.build(dict(a=a, b=b, c=c, d=d))
    assert compiled(BIG).unpack(packed) == (a, b, c, *d)


@pytest.mark.parametrize("decl", [PAGE_DESC, RECORD], ids=["kdump page_desc", "flattened record"])
def test_dump_declarations_compile_to_their_size(decl):
    assert compiled(decl).size == decl.sizeof()
    raw = bytes(range(decl.sizeof()))
    assert list(compiled(decl).unpack(raw)) == [v for k, v in decl.parse(raw).items()
                                                 if not k.startswith("_")]


def test_unsupported_and_mixed_declarations_are_refused():
    with pytest.raises(TypeError):
        compiled(Struct("s" / CString("ascii")))
    with pytest.raises(TypeError):
        compiled(Struct("x" / Int32ul, "y" / Int64sb))


def test_parse_reports_truncation_with_the_offset():
    with pytest.raises(BadDumpError) as e:
        parse(Struct("x" / Int64ul), b"\0" * 10, 4, "test header")
    assert e.value.offset == 4 and "truncated test header" in str(e.value)
