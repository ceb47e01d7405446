"""Parsing of the numbers users type: ``0xc000_1ff1``, ``4096``, ``1_000_000`` (SPEC §1)."""

from __future__ import annotations

from xenrs_cli.address_space import GPA_LIMIT


def parse_number(text: str) -> int:
    """A non-negative integer in hex (``0x``) or decimal, ``_`` allowed; ``ValueError`` else."""
    t = text.strip()
    if not t or t.startswith(("-", "+")) or t.startswith("_") or t.endswith("_") or "__" in t:
        raise ValueError(text)
    body = t[2:] if t[:2].lower() == "0x" else t
    if not body or body.startswith("_"):
        raise ValueError(text)
    return int(t.replace("_", ""), 16 if body is not t else 10)


def parse_gpa(text: str) -> int:
    """A guest-physical address: a number below 2^52."""
    value = parse_number(text)
    if value >= GPA_LIMIT:
        raise ValueError(f"{text} is not below 2^52")
    return value
