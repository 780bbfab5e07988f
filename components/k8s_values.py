"""Kubernetes value types for the settings model, with the API server's own rules.

`pulumi up` creates objects one by one: a value the API server refuses fails the run half way,
after the namespace, Secrets and ConfigMaps already exist. So every setting that lands in a
Kubernetes field is checked here first, with the rule the API server applies (ported from
k8s.io/apimachinery pkg/util/validation and pkg/api/validate/content; each check names the
function it follows). Rules are applied with `re.fullmatch` and ASCII classes: Python's `$`
also matches before a trailing newline, which Go's does not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
"""Replicas, probe periods and thresholds, ports, Job limits, uids: int32 fields in the API."""

_DNS1123_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL, re.ASCII)
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*", re.ASCII)
_DNS1035_LABEL_RE = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?", re.ASCII)
_LABEL_NAME_RE = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", re.ASCII)
_ENV_VAR_NAME_RE = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*", re.ASCII)
DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_NAME_MAX = 63
LABEL_VALUE_MAX = 63


def number_problem(value: object) -> str | None:
    """Why a number cannot be a setting (NaN, infinite, outside int32), or None if it can.

    Every integer setting lands in an int32 API field or sits beside one (a grace period
    derived from it, a count compared with replicas); none needs more. Floats are bounded the
    same way because whole-second fields are derived from them (int(inf) is an OverflowError).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "is not a finite number; allowed: a finite number within the stated bounds"
    if value > INT32_MAX:
        return f"does not fit the int32 Kubernetes stores it in; allowed: at most {INT32_MAX}"
    if value < INT32_MIN:
        return f"does not fit the int32 Kubernetes stores it in; allowed: at least {INT32_MIN}"
    return None


def _fits(value: str, pattern: re.Pattern[str], max_length: int) -> bool:
    """Whether `value` is at most `max_length` characters and matches `pattern` whole."""
    return len(value) <= max_length and pattern.fullmatch(value) is not None


def _name_rule(pattern: re.Pattern[str], max_length: int, message: str) -> Callable[[str], str]:
    """Return a validator for one of apimachinery's name rules (one regexp, one length bound)."""

    def check(value: str) -> str:
        if not _fits(value, pattern, max_length):
            raise ValueError(message)
        return value

    return check


# IsDNS1123Label: namespaces and other names that must be one DNS label.
_dns_label = _name_rule(
    _DNS1123_LABEL_RE,
    DNS1123_LABEL_MAX,
    "is not a DNS-1123 label; allowed: at most 63 lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
)
# IsDNS1035Label: names that must also start with a letter (Service names are built on it).
_dns1035_label = _name_rule(
    _DNS1035_LABEL_RE,
    DNS1123_LABEL_MAX,
    "is not a DNS-1035 label; allowed: lowercase letters, digits and '-', starting "
    "with a letter and ending with a letter or digit",
)
# IsDNS1123Subdomain: object names (StorageClass, Secret, Issuer) and label key prefixes.
_dns_subdomain = _name_rule(
    _DNS1123_SUBDOMAIN_RE,
    DNS1123_SUBDOMAIN_MAX,
    "is not a DNS-1123 subdomain; allowed: at most 253 characters of lowercase letters, "
    "digits, '-' and '.', each dot-separated part starting and ending with a letter or digit",
)


def _label_key(value: str) -> str:
    """IsQualifiedName (content.IsLabelKey): label keys, node selector keys, toleration keys."""
    prefix, slash, name = value.rpartition("/")
    problems = []
    if slash and not _fits(prefix, _DNS1123_SUBDOMAIN_RE, DNS1123_SUBDOMAIN_MAX):
        problems.append("its prefix before '/' must be a DNS-1123 subdomain (e.g. example.com)")
    if not _fits(name, _LABEL_NAME_RE, LABEL_NAME_MAX):
        problems.append(
            "its name must be 1 to 63 letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit"
        )
    if problems:
        msg = f"is not a Kubernetes label key: {'; '.join(problems)}"
        raise ValueError(msg)
    return value


def _label_value(value: str) -> str:
    """IsValidLabelValue: label values, node selector values, toleration values."""
    if value and not _fits(value, _LABEL_NAME_RE, LABEL_VALUE_MAX):
        msg = (
            "is not a Kubernetes label value; allowed: empty, or at most 63 letters, digits, "
            "'-', '_' or '.', starting and ending with a letter or digit"
        )
        raise ValueError(msg)
    return value


def _env_var_name(value: str) -> str:
    """IsEnvVarName: the rule every Kubernetes version applies to `env[].name`.

    Kubernetes 1.32+ relaxes it (RelaxedEnvironmentVariableValidation, on by default: any
    printable ASCII but '='), but an older cluster (or one with the gate off) still refuses
    those names, and a shell cannot export them anyway; so the portable rule is enforced.
    """
    if not _ENV_VAR_NAME_RE.fullmatch(value) or value in (".", "..") or value.startswith(".."):
        msg = (
            "is not an environment variable name Kubernetes accepts; allowed: letters, digits, "
            "'_', '-' and '.', not starting with a digit or '..' (e.g. MY_SETTING)"
        )
        raise ValueError(msg)
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
"""A DNS-1123 label (namespace names)."""
Dns1035Label = Annotated[str, AfterValidator(_dns1035_label)]
"""A DNS-1035 label: starts with a letter, so Service names built on it are valid."""
DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain)]
"""A DNS-1123 subdomain (names of StorageClasses, Secrets, cert-manager issuers)."""
LabelKey = Annotated[str, AfterValidator(_label_key)]
"""A label key: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63 characters."""
LabelValue = Annotated[str, AfterValidator(_label_value)]
"""A label value: empty, or at most 63 characters of [-A-Za-z0-9_.] starting/ending alphanumeric."""
EnvVarName = Annotated[str, AfterValidator(_env_var_name)]
"""An environment variable name (the C-identifier-like rule all Kubernetes versions accept)."""
