"""Kubernetes resource quantities as typed settings.

Memory sizes are compared across settings (Redis `maxmemory` against the container limit),
so they are parsed to bytes once, here, with the same suffixes Kubernetes accepts.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_MEMORY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]+)?)(?P<suffix>Ki|Mi|Gi|Ti|k|M|G|T)?$")
_CPU = re.compile(r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$")
_SUFFIX_BYTES = {
    None: 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}


def memory_bytes(quantity: str) -> int:
    """Return the number of bytes a Kubernetes memory quantity ("512Mi", "1G", "1048576") means."""
    match = _MEMORY.match(quantity)
    if match is None:
        msg = (
            f"{quantity!r} is not a memory quantity; "
            "allowed: a number with Ki, Mi, Gi, Ti, k, M, G or T"
        )
        raise ValueError(msg)
    return int(float(match["number"]) * _SUFFIX_BYTES[match["suffix"]])


def _check_memory(quantity: str) -> str:
    if memory_bytes(quantity) <= 0:
        msg = f"{quantity!r} must be more than zero bytes"
        raise ValueError(msg)
    return quantity


def _check_cpu(quantity: str) -> str:
    if not _CPU.match(quantity):
        msg = (
            f"{quantity!r} is not a CPU quantity; allowed: millicores like '250m' or cores like '1'"
        )
        raise ValueError(msg)
    return quantity


MemoryQuantity = Annotated[str, AfterValidator(_check_memory)]
CpuQuantity = Annotated[str, AfterValidator(_check_cpu)]
