"""Read Pulumi.yaml and a stack file into the config strings the Pulumi CLI hands a program.

`render`, `settings` and `pulumi up` must never disagree about a value, so this module follows
the Pulumi CLI's own reading, not PyYAML's defaults. Matched against pulumi/pulumi (v3 SDK):

- sdk/go/common/encoding/marshal.go: stack files and Pulumi.yaml are read with gopkg.in/yaml.v3
  (v3.0.1), which resolves plain scalars with YAML 1.2 core rules (its resolve.go): only
  true/True/TRUE and false/False/FALSE are booleans (`yes`, `on`, `no` stay text); `~`, `null`
  and an empty value are null; integers go through Go's strconv.ParseInt base 0 after dropping
  `_` (`0x1F` is 31, `012` is octal 10, `0o17`, `0b101`); `1e9` is a float; `.inf` and `.nan`
  are floats; `2001-12-14` is a timestamp. Duplicate keys are an error (yaml.v3 decode.go).
- sdk/go/common/workspace/loaders.go (LoadProjectStackBytes): the file is decoded, keys
  without a namespace get the project's, and any mapping with a non-text key is refused
  (project.go SimplifyMarshalledValue).
- sdk/go/common/resource/config/object.go and value.go (Value.UnmarshalYAML, MarshalString,
  unmarshalObject): a top-level text reaches the program as-is, a boolean or number as Go's JSON
  text of the decoded value (`0x1F` becomes "31", `1e9` "1000000000"), a timestamp as Go's
  time.Time.String(), an object or list as compact JSON with sorted keys in which numbers
  outside int64 become float64; NaN and infinities cannot be encoded and fail the CLI; a
  top-level null becomes "" (loaders.go checkForEmptyConfig). `{secure: <text>}` anywhere
  makes the whole key a secret.
- pkg/workspace/config.go (mergeConfig, createConfigValue): Pulumi.yaml `config:` entries with
  a `value` or `default` apply when the stack file does not set the key.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from brokerctl.errors import EXIT_USAGE, CommandError

INT64 = (-(2**63), 2**63 - 1)
UINT64_MAX = 2**64 - 1
_PLAIN = "!celery-redis/plain"
"""Tag this loader gives untagged plain scalars, so they are resolved as yaml.v3 resolves them."""
_TAG = "tag:yaml.org,2002:"


class StackFileError(CommandError):
    """A stack file the Pulumi CLI would refuse: exit 2, naming the file, key and value."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


@dataclass(frozen=True)
class GoTime:
    """A YAML timestamp as the CLI hands it over: the text of Go's time.Time.String()."""

    text: str


@dataclass
class ProgramConfig:
    """Config as the program receives it: `namespace:name` to text, and which keys are secret."""

    values: dict[str, str] = field(default_factory=dict)
    secret_keys: list[str] = field(default_factory=list)


class _Loader(yaml.SafeLoader):
    """PyYAML's parser and composer; scalar resolution is ours (yaml.v3's), not YAML 1.1's."""

    def resolve(self, kind: type, value: str | None, implicit: tuple[bool, bool]) -> str:
        """Mark untagged plain scalars; quoted and block scalars are text, as in yaml.v3."""
        if kind is yaml.ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


# --- yaml.v3 resolve.go ----------------------------------------------------------------------

_NULLS = {"", "~", "null", "Null", "NULL"}
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_SPECIAL_FLOATS = {
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
_GO_FLOAT_AFTER_DOT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?\Z")
_GO_INT_BASE0 = re.compile(
    r"(?P<sign>[-+]?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|0[oO](?P<oct>[0-7]+)|0[bB](?P<bin>[01]+)"
    r"|(?P<legacy_oct>0[0-7]*)|(?P<dec>[1-9][0-9]*))\Z"
)
_TIMESTAMP = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{1,2})-(?P<d>[0-9]{1,2})"
    r"(?:(?P<sep>[Tt ])(?P<h>[0-9]{1,2}):(?P<mi>[0-9]{1,2}):(?P<s>[0-9]{1,2})"
    r"(?:[.,](?P<frac>[0-9]+))?(?P<zone>Z|[-+][0-9]{2}:[0-9]{2})?)?\Z"
)


def _go_parse_int(text: str) -> int | None:
    """Go's strconv.ParseInt(text, 0, 64), falling back to ParseUint, as yaml.v3 tries them."""
    match = _GO_INT_BASE0.match(text)
    if not match:
        return None
    digits, base = next(
        (match[name], base)
        for name, base in (("hex", 16), ("oct", 8), ("bin", 2), ("legacy_oct", 8), ("dec", 10))
        if match[name] is not None
    )
    value = int(digits, base)
    if match["sign"] == "-":
        value = -value
        return value if value >= INT64[0] else None
    if value <= INT64[1]:
        return value
    # ParseUint takes no sign at all.
    return value if value <= UINT64_MAX and not match["sign"] else None


def _go_parse_float(text: str) -> float | None:
    """Go's strconv.ParseFloat for the forms yaml.v3 lets through; overflow is an error."""
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isinf(value) else value


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _go_timestamp(text: str) -> GoTime | None:
    """yaml.v3 parseTimestamp (Go time.Parse layouts), as the text of Go's time.Time.String().

    A date, or a date and time without zone, is UTC. An explicit offset keeps Go's fabricated
    zone ("-0500 -0500"); Go names the zone after the machine's local zone when their offsets
    agree, which no stack file should depend on.
    """
    match = _TIMESTAMP.match(text)
    if not match:
        return None
    year, month, day = int(match["y"]), int(match["mo"]), int(match["d"])
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        return None
    hour = minute = second = nanos = 0
    zone = " +0000 UTC"
    if match["sep"]:
        # "2006-1-2T15:4:5.999999999Z07:00" needs a zone; "2006-1-2 15:4:5.999999999" takes none.
        if (match["sep"] in "Tt") != (match["zone"] is not None):
            return None
        hour, minute, second = int(match["h"]), int(match["mi"]), int(match["s"])
        if hour > 23 or minute > 59 or second > 59:
            return None
        if match["frac"]:
            nanos = int(match["frac"][:9].ljust(9, "0"))
        offset = match["zone"]
        if offset and offset != "Z":
            hh, mm = int(offset[1:3]), int(offset[4:6])
            if hh > 24 or mm > 60:
                return None
            if hh or mm:
                zone = f" {offset[0]}{hh:02d}{mm:02d}" * 2
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return GoTime(
        f"{year:04d}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"
    )


def go_resolve(text: str) -> Any:
    """Resolve an untagged plain scalar exactly as yaml.v3's resolve() does (YAML 1.2 core)."""
    if not text:
        return None
    hint = text[0]
    if hint in "yYnNtTfFoO~":
        if text in _NULLS:
            return None
        return _BOOLS.get(text, text)
    if hint == ".":
        if text in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[text]
        value = _go_parse_float(text) if _GO_FLOAT_AFTER_DOT.match(text) else None
        return text if value is None else value
    if hint in "+-":
        if text in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[text]
    elif not hint.isdigit() or not hint.isascii():
        return text
    timestamp = _go_timestamp(text)
    if timestamp is not None:
        return timestamp
    plain = text.replace("_", "")
    number = _go_parse_int(plain)
    if number is not None:
        return number
    if _YAML_STYLE_FLOAT.match(plain):
        value = _go_parse_float(plain)
        if value is not None:
            return value
    return text


def _explicit(tag: str, text: str, where: str) -> Any:
    """Decode a scalar with an explicit standard tag (`!!int 12`): the tag must fit (yaml.v3)."""
    short = tag.removeprefix(_TAG)
    if short == "str":
        return text
    if short == "binary":
        return base64.b64decode(text.encode(), validate=False).decode(errors="replace")
    resolved = go_resolve(text)
    kinds: dict[str, Callable[[Any], bool]] = {
        "null": lambda v: v is None,
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, float),
        "timestamp": lambda v: isinstance(v, GoTime),
    }
    if short not in kinds:
        return text  # yaml.v3 keeps an unknown tag's scalar as its text
    if short == "float" and kinds["int"](resolved):
        return float(resolved)
    if not kinds[short](resolved):
        message = f"{where}: cannot read `{text}` as !!{short}; allowed: a value of that type"
        raise StackFileError(message)
    return resolved


# --- decoding a node tree as yaml.v3 decodes into `any` -----------------------------------------


class _Decoder:
    """Walk PyYAML's node tree with yaml.v3's rules; collect every duplicate key in one pass."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.duplicates: list[str] = []
        self._active: set[int] = set()

    def where(self, node: yaml.Node) -> str:
        return f"{self.file}: line {node.start_mark.line + 1}"

    def decode(self, node: yaml.Node) -> Any:
        if id(node) in self._active:
            message = f"{self.where(node)}: an alias refers to itself; allowed: none"
            raise StackFileError(message)
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node)
            if isinstance(node, yaml.SequenceNode):
                return [self.decode(item) for item in node.value]
            if node.tag == _PLAIN:
                value = go_resolve(node.value)
            elif node.tag.startswith(_TAG):
                value = _explicit(node.tag, node.value, self.where(node))
            else:
                value = node.value
            # The CLI decodes the file, writes it back as YAML and decodes it again
            # (LoadProjectStackBytes): Go writes -0.0 as "-0", which reads back as the integer 0.
            if isinstance(value, float) and value == 0 and math.copysign(1, value) < 0:
                return 0
            return value
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[str, yaml.Node] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                first = seen.setdefault(key_node.value, key_node)
                if first is not key_node:
                    self.duplicates.append(
                        f"{self.where(key_node)}: key {key_node.value!r} is already set at line "
                        f"{first.start_mark.line + 1}; allowed: each key once (the Pulumi CLI "
                        "refuses a duplicate key)"
                    )
        result: dict[Any, Any] = {}
        merges: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.value == "<<"
                and (key_node.tag in (_PLAIN, f"{_TAG}merge"))
            ):
                merges.extend(
                    value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                )
                continue
            key = self.decode(key_node)
            if isinstance(key, dict | list):
                message = f"{self.where(key_node)}: a mapping or list as a key; allowed: text"
                raise StackFileError(message)
            result[key] = self.decode(value_node)
        for merge in merges:  # explicit keys win, then earlier merged mappings
            merged = self.decode(merge)
            if not isinstance(merged, dict):
                message = f"{self.where(merge)}: `<<` merges a non-mapping; allowed: a mapping"
                raise StackFileError(message)
            for key, value in merged.items():
                result.setdefault(key, value)
        return result


def _text_keys_only(value: Any, file: str, path: str) -> None:
    """Refuse what SimplifyMarshalledValue refuses: any mapping key that is not text."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                shown = go_text(key) if key is not None else "null"
                message = (
                    f"{file}: {path or 'top level'}: key {shown} is not text; allowed: "
                    "text keys only (quote it)"
                )
                raise StackFileError(message)
            _text_keys_only(item, file, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _text_keys_only(item, file, f"{path}[{index}]")


def load_document(path: Path, shown: str) -> Any:
    """Decode a Pulumi YAML file as the CLI does; StackFileError (exit 2) for what it refuses."""
    text = path.read_bytes().removeprefix(b"\xef\xbb\xbf").decode(errors="replace")
    decoder = _Decoder(shown)
    try:
        # yaml.v3 Unmarshal reads the first document only.
        node = next(iter(yaml.compose_all(text, Loader=_Loader)), None)
        document = None if node is None else decoder.decode(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        message = f"{shown}:{where} {problem}; allowed: a YAML mapping"
        raise StackFileError(message) from None
    if decoder.duplicates:
        raise StackFileError("\n".join(decoder.duplicates))
    _text_keys_only(document, shown, "")
    return document


# --- what the program receives ------------------------------------------------------------------


def go_json_float(value: float, where: str) -> str:
    """Go's encoding/json text of a float64 (ES6 style: exponent below 1e-6 and from 1e21)."""
    if math.isnan(value) or math.isinf(value):
        message = (
            f"{where}: the Pulumi CLI cannot store {go_text(value)} (json: unsupported value); "
            "allowed: a finite number"
        )
        raise StackFileError(message)
    if value == 0:
        return "-0" if math.copysign(1, value) < 0 else "0"
    exact = Decimal(repr(value)).normalize()
    if 1e-6 <= abs(value) < 1e21:
        return format(exact, "f")
    sign, digits, exponent = exact.as_tuple()
    exponent = int(exponent)  # finite here, so never Decimal's 'n' or 'F'
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    power = exponent + len(digits) - 1
    text = f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    return re.sub(r"e-0(\d)$", r"e-\1", text)


def go_text(value: Any) -> str:
    """Print a scalar as Go's JSON does (a float JSON refuses as YAML wrote it, for messages)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_json_float(value, "")
    if isinstance(value, GoTime):
        return value.text
    return str(value)


def _go_json(value: Any, where: str) -> str:
    """Go's json.Marshal of a decoded config object after the CLI's decrypt step.

    Keys sorted, no spaces, `<`, `>`, `&` escaped, integers outside int64 turned to float64
    (object.UnmarshalJSON reads numbers with json.Number.Int64, else Float64).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value) if INT64[0] <= value <= INT64[1] else go_json_float(float(value), where)
    if isinstance(value, float):
        return go_json_float(value, where)
    if isinstance(value, GoTime):
        value = value.text
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        for char in "<>&\u2028\u2029":
            text = text.replace(char, f"\\u{ord(char):04x}")
        return text
    if isinstance(value, list):
        return "[" + ",".join(_go_json(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    items = (f"{_go_json(k, where)}:{_go_json(value[k], f'{where}.{k}')}" for k in sorted(value))
    return "{" + ",".join(items) + "}"


def _is_secure(value: Any) -> bool:
    """object.go isSecureValue: a mapping whose only key is `secure`, holding text."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("secure"), str)


def _conceal(value: Any, stand_in: Callable[[str], str], path: str) -> tuple[Any, bool]:
    """Replace every `{secure: ...}` with a stand-in; say whether there was one."""
    if _is_secure(value):
        return stand_in(path), True
    if isinstance(value, dict):
        pairs = {k: _conceal(v, stand_in, f"{path}.{k}") for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
    if isinstance(value, list):
        pairs_list = [_conceal(v, stand_in, f"{path}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in pairs_list], any(s for _, s in pairs_list)
    return value, False


def program_text(value: Any, where: str) -> str:
    """Return the text a program receives for one decoded top-level value (secrets concealed)."""
    if value is None:
        return ""  # loaders.go checkForEmptyConfig: an empty value is "" (for now)
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return go_json_float(value, where)
    if isinstance(value, bool | int | GoTime):
        return go_text(value)
    return _go_json(value, where)


def config_key(raw: str, project: str, where: str) -> str:
    """config.ParseKey: `name` gets the project namespace; `ns:config:name` is the old form."""
    parts = raw.split(":")
    if len(parts) == 1:
        return f"{project}:{raw}"
    if len(parts) == 2:
        return raw
    if len(parts) == 3 and parts[1] == "config":
        return f"{parts[0]}:{parts[2]}"
    message = (
        f"{where}: {raw!r} is not a config key the Pulumi CLI accepts; allowed: "
        f"<namespace>:<name>, such as {project}:broker"
    )
    raise StackFileError(message)


def read_program_config(
    project_file: Path,
    stack_file: Path,
    shown: Callable[[Path], str],
    stand_in: Callable[[str], str],
) -> ProgramConfig:
    """Project and stack config, as the CLI hands them to the program; secrets become stand-ins.

    `stand_in(name)` gives the text a secure value is replaced with (`name` is the key's name,
    with the path inside the object for a secret nested in one).
    """
    project_doc = load_document(project_file, shown(project_file))
    if not isinstance(project_doc, dict) or not isinstance(project_doc.get("name"), str):
        message = f"{shown(project_file)}: no project name; allowed: a mapping with `name:`"
        raise StackFileError(message)
    project = project_doc["name"]
    stack_doc = load_document(stack_file, shown(stack_file))
    if stack_doc is None:
        stack_doc = {}
    if not isinstance(stack_doc, dict):
        kind = type(stack_doc).__name__
        message = f"{shown(stack_file)}: top level is {kind}; allowed: a mapping"
        raise StackFileError(message)
    entries = stack_doc.get("config") or {}
    if not isinstance(entries, dict):
        message = f"{shown(stack_file)}: config is not a mapping; allowed: key: value pairs"
        raise StackFileError(message)

    result = ProgramConfig()
    for raw_key, value in entries.items():
        key = config_key(raw_key, project, shown(stack_file))
        where = f"{shown(stack_file)}: {key}"
        name = key.partition(":")[2]
        concealed, secret = _conceal(value, lambda path, name=name: stand_in(name + path), "")
        result.values[key] = program_text(concealed, where)
        if secret:
            result.secret_keys.append(key)

    for raw_key, spec in (project_doc.get("config") or {}).items():
        key = config_key(raw_key, project, shown(project_file))
        if key in result.values:
            continue  # the stack's own value wins over the project's value or default
        if not isinstance(spec, dict):
            # RewriteShorthandConfigValues: a bare value is a default (own namespace) or a value.
            spec = {"default": spec}
        # createConfigValue: a non-null `default` wins over `value`.
        chosen = spec.get("default") if spec.get("default") is not None else spec.get("value")
        if chosen is None:
            continue
        result.values[key] = program_text(chosen, f"{shown(project_file)}: {key}")
    return result
