"""Kubernetes resource quantities as typed settings, parsed exactly as the API server parses them.

Memory sizes are compared across settings (Redis `maxmemory` against the container limit, a
CPU limit against its request), so they are parsed once, here. The grammar is a port of
`ParseQuantity` and `parseQuantityString` in k8s.io/apimachinery pkg/api/resource/quantity.go
(suffixes from `newSuffixer` in suffix.go): a quantity the model accepts is one the API server
accepts, so `pulumi up` never stops half way, after the namespace and Secrets exist, on a
`resources` value. Values are exact fractions, never floats: "1.1Gi" is not 1181116006.4 bytes
plus float noise.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

# parseQuantityString: optional sign, digits, optional "." and digits, then a suffix made of
# the letters eEinumkKMGTP, an optional sign and digits; nothing else. Whitespace is refused
# ("512Mi\n", " 1Gi"): ParseQuantity never trims (only a JSON decoder in front of it does, and
# the provider, `kubectl` and the rendered YAML do not all go through that one).
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<whole>[0-9]*)(?:\.(?P<fraction>[0-9]*))?"
    r"(?P<suffix>[eEinumkKMGTP]*[-+]?[0-9]*)",
    re.ASCII,
)
# suffix.go, newSuffixer: decimal SI, binary SI; "e<int>" / "E<int>" is a decimal exponent.
_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_EXPONENT = re.compile(r"[eE](?P<exponent>[-+]?[0-9]+)", re.ASCII)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
"""Largest byte count (Quantity.Value) or millicore count (MilliValue) Kubernetes represents."""
_HUGE_MAGNITUDE = 40  # 10**40 is far past INT64_MAX; 10**-40 far below a nano
MAX_QUANTITY_CHARS = 64
_NANO = Fraction(1, 10**9)

ALLOWED = (
    "allowed: a number with an optional suffix, exactly as Kubernetes writes quantities: "
    "binary Ki Mi Gi Ti Pi Ei, decimal n u m k M G T P E, or an exponent e<n> "
    "(e.g. '512Mi', '1.5Gi', '1e9', '250m'); no spaces"
)


def parse_quantity(text: str) -> Fraction:
    """Return the exact value of a Kubernetes quantity; ValueError if the API server refuses it.

    Follows apimachinery's ParseQuantity: the number keeps its precision (no float), is
    rounded up to nano units as Kubernetes rounds it, and an exponent must fit an int32
    (Kubernetes truncates a larger one silently, so `1e4294967296` would mean 1). Longer than
    MAX_QUANTITY_CHARS is refused too: Kubernetes would take it, but no size needs it.
    """
    match = _QUANTITY.fullmatch(text) if 0 < len(text) <= MAX_QUANTITY_CHARS else None
    if match is None:
        msg = f"{text!r} is not a Kubernetes quantity; {ALLOWED}"
        raise ValueError(msg)
    suffix = match["suffix"]
    if suffix in _DECIMAL_SI:
        base, power = 10, _DECIMAL_SI[suffix]
    elif suffix in _BINARY_SI:
        base, power = 2, _BINARY_SI[suffix]
    elif (exponent := _EXPONENT.fullmatch(suffix)) is not None:
        base, power = 10, int(exponent["exponent"])
        if not _INT32_MIN <= power <= _INT32_MAX:
            msg = f"{text!r}: the exponent {power} is outside what Kubernetes reads; {ALLOWED}"
            raise ValueError(msg)
    else:
        msg = f"{text!r} has an unknown suffix {suffix!r}; {ALLOWED}"
        raise ValueError(msg)
    fraction = match["fraction"] or ""
    digits = int((match["whole"] or "") + fraction or "0")
    if digits == 0:
        return Fraction(0)
    sign = -1 if match["sign"] == "-" else 1
    # Decimal magnitude of the value, to keep `1e2000000000` from being computed exactly.
    magnitude = len(str(digits)) - len(fraction) + (power if base == 10 else 0)
    if magnitude > _HUGE_MAGNITUDE:
        return sign * Fraction(INT64_MAX + 1)  # past every bound a setting allows
    if magnitude < -_HUGE_MAGNITUDE:
        return sign * _NANO  # Kubernetes rounds every non-zero value up to 1n
    value = Fraction(digits, 10 ** len(fraction)) * Fraction(base) ** power
    # ParseQuantity rounds up (away from zero) to nano units: "0.1n" is 1n.
    return sign * Fraction(math.ceil(value / _NANO)) * _NANO


def _number_as_text(value: object) -> object:
    """Accept a YAML number where a quantity is expected, as Kubernetes does (`memory: 1e9`).

    Infinity and NaN are not quantities; they are refused here with the same message as any
    other bad quantity, instead of surfacing later as an OverflowError.
    """
    if isinstance(value, bool):
        return value  # left to the str check: `true` is not a quantity
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{value!r} is not a finite number; {ALLOWED}"
            raise ValueError(msg)
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def memory_bytes(quantity: str) -> int:
    """Return the bytes a Kubernetes memory quantity means ("512Mi", "1G", "1e9", "1.5Gi").

    Rounded up to a whole byte, as Kubernetes' Quantity.Value rounds.
    """
    return math.ceil(parse_quantity(quantity))


def cpu_millicores(quantity: str) -> int:
    """Return the millicores a Kubernetes CPU quantity means ("250m" is 250, "1.5" is 1500).

    Rounded up, as Kubernetes' Quantity.MilliValue rounds.
    """
    return math.ceil(parse_quantity(quantity) * 1000)


def _check_memory(quantity: str) -> str:
    value = parse_quantity(quantity)
    if value <= 0:
        msg = f"{quantity!r} must be more than zero bytes; {ALLOWED}"
        raise ValueError(msg)
    if math.ceil(value) > INT64_MAX:
        msg = f"{quantity!r} is more bytes than Kubernetes can represent; allowed: up to 8Ei - 1"
        raise ValueError(msg)
    return quantity


def _check_cpu(quantity: str) -> str:
    value = parse_quantity(quantity)
    if value < 0:
        msg = f"{quantity!r} is negative; allowed: 0 or more cores, e.g. '250m' or '1'"
        raise ValueError(msg)
    if math.ceil(value * 1000) > INT64_MAX:
        msg = f"{quantity!r} is more CPU than Kubernetes can represent in millicores"
        raise ValueError(msg)
    return quantity


MemoryQuantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_memory)]
"""A memory or storage size: a Kubernetes quantity of more than zero bytes."""
CpuQuantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_cpu)]
"""A CPU amount: a non-negative Kubernetes quantity, in cores ("250m" is a quarter core)."""
