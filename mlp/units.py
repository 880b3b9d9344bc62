"""Byte counts: parsing a size a person typed, and showing one in GiB."""

from __future__ import annotations

import re

GIB = 2**30

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str, name: str = "memory") -> int:
    """'24GiB' -> 25769803776, '80GB' -> 80000000000, '1048576' -> 1048576.

    GB means 10**9 and GiB 2**30, as on a GPU's data sheet and in nvidia-smi respectively.
    """
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{name} must be a byte count or a size such as 24GiB, 80GB or 512MiB; got {text!r}"
        )
    size_bytes = int(float(match.group(1)) * _UNITS[unit])
    if size_bytes <= 0:
        raise ValueError(f"{name} must be more than 0 bytes, got {text!r}")
    return size_bytes


def format_gib(size_bytes: int | float, digits: int = 2) -> str:
    """Bytes as '1.50 GiB' (2**30 bytes to the GiB)."""
    return f"{size_bytes / GIB:.{digits}f} GiB"


def format_bytes(size_bytes: int | float) -> str:
    """Bytes in the largest binary unit that keeps the figure at least 1, labelled."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(size_bytes) >= scale:
            return f"{size_bytes / scale:.2f} {unit}"
    return f"{int(size_bytes)} B"
