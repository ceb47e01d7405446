"""Several raw images as one dump: ``low.raw@0,high.raw@0x100000000``.

crash takes a guest's memory as ``FILE@ADDR`` pairs joined by commas (its ``ramdump`` support:
one file per physical range, e.g. the RAM below and above a 4 GiB hole saved separately with
QEMU ``pmemsave``). Each image becomes a segment at its base; the images must not overlap, and
the one :class:`Dump` closes every file when it is closed.
"""

from __future__ import annotations

from xenrs_cli.address_space import AddressSpace
from xenrs_cli.dumps import Dump, split_base
from xenrs_cli.dumps import raw
from xenrs_cli.errors import UsageError
from xenrs_cli.files import MappedFileGroup, open_readonly


def parse_list(spec: str) -> list[tuple[str, int]]:
    """``a@0x0,b@0x100000000`` → [(a, 0), (b, 0x100000000)]; every image needs its base."""
    out = []
    for part in spec.split(","):
        if not part:
            raise UsageError(f"{spec!r}: an empty image in the list (FILE@ADDR pairs joined by "
                             "commas, e.g. low.raw@0,high.raw@0x100000000)")
        path, base = split_base(part)
        if base is None:
            raise UsageError(f"{part!r}: each image of a list needs its base (FILE@ADDR, e.g. "
                             "low.raw@0,high.raw@0x100000000)")
        if path == "-":
            raise UsageError("standard input cannot be one image of a list: give paths")
        out.append((path, base))
    return out


def open_images(spec: str, fmt: str = "auto") -> Dump:
    if fmt not in ("auto", "raw"):
        raise UsageError(f"{spec!r} is a list of raw images (FILE@ADDR,...): --dump-format "
                         f"{fmt} does not apply")
    parts = parse_list(spec)
    dumps: list[Dump] = []
    try:
        for path, base in parts:
            mapped = open_readonly(path)
            try:
                dumps.append(raw.load(mapped, base))
            except BaseException:
                mapped.close()
                raise
        ordered = sorted(dumps, key=lambda d: d.details["base"])
        for a, b in zip(ordered, ordered[1:]):
            a_end = a.details["base"] + a.details["size"]
            if b.details["base"] < a_end:
                raise UsageError(
                    f"images overlap: {a.name} (GPA 0x{a.details['base']:x}-0x{a_end - 1:x}) and "
                    f"{b.name} (GPA 0x{b.details['base']:x}-"
                    f"0x{b.details['base'] + b.details['size'] - 1:x}); give each its own range")
        segs = []
        for d in ordered:
            [seg] = d.space.segments
            seg.detail = f"raw image {d.name}"
            segs.append(seg)
        group = MappedFileGroup([d.file for d in dumps])
        images = [{"path": d.name, "base": f"0x{d.details['base']:x}", "size": d.details["size"]}
                  for d in dumps]
        return Dump(spec, "raw", AddressSpace(segs), group, f"{len(dumps)} images",
                    {"images": images})
    except BaseException:
        for d in dumps:
            d.close()
        raise
