"""The two helpers every binary layout of xenrs goes through (pyelftools' ``struct_parse``).

* :func:`parse` reads one construct declaration at a file offset and turns a short or
  malformed read into :class:`BadDumpError` carrying that offset.
* :func:`compiled` turns a declaration of fixed-size fields into the equivalent stdlib
  ``struct.Struct``, for the hot loops (runstate records by the thousand, kdump page
  descriptors, flattened-stream records) where construct's parser costs 10–50 µs a call. The
  format comes from the declaration itself, so the two cannot disagree (tests check it).
"""

from __future__ import annotations

import struct as _struct

from construct import Array, Bytes, ConstructError, FormatField, Struct

from xenrs_cli.errors import BadDumpError


def parse(struct: Struct, buf, offset: int, what: str):
    """Parse ``struct`` at ``offset``; a short or malformed read is a :class:`BadDumpError`."""
    size = struct.sizeof()
    if offset < 0 or offset + size > len(buf):
        raise BadDumpError(f"truncated {what}: {size} bytes needed, the file has "
                           f"{max(0, len(buf) - offset)}", offset=offset)
    try:
        return struct.parse(bytes(buf[offset:offset + size]))
    except ConstructError as e:
        raise BadDumpError(f"corrupt {what}: {e}", offset=offset) from None


def compiled(struct: Struct) -> _struct.Struct:
    """The stdlib equivalent of ``struct`` (fields: integers, byte strings, integer arrays)."""
    order, codes = None, []
    for sub in struct.subcons:
        con = sub.subcon
        field = con.subcon if isinstance(con, Array) else con
        if isinstance(field, FormatField):
            order = order or field.fmtstr[0]
            if field.fmtstr[0] != order:
                raise TypeError(f"{sub.name}: mixed byte orders in one declaration")
            code = field.fmtstr[1:]
        elif isinstance(field, Bytes) and not isinstance(con, Array):
            code = f"{field.length}s"
        else:
            raise TypeError(f"no struct format for {sub.name}: {con!r}")
        codes.append(f"{con.count}{code}" if isinstance(con, Array) else code)
    out = _struct.Struct((order or "<") + "".join(codes))
    assert out.size == struct.sizeof(), sub.name
    return out
