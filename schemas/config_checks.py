"""Validators shared by the sections of the pipeline config.

Each check takes the value and its dotted field name, returns the value (or its parsed
form) and raises ``ConfigError`` that names the field, quotes the value and says how to
fix it; ``Section`` walks one mapping and rejects unknown keys. The factories
(``pattern``, ``choice``, ``number``, ``duration``) return such a check.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from schemas.errors import ConfigError

# a feature, join key or feedback field name
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")

_HOST_PORT = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}"
_BROKER_RE = re.compile(rf"^kafka://({_HOST_PORT}(?:,{_HOST_PORT})*)$")
_DURATION_PART_RE = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def fail(field: str, message: str) -> ConfigError:
    """The error for ``field`` (a dotted name): ``'<field>: <message>'``, to raise."""
    return ConfigError(f"{field}: {message}")


def parse_duration_ms(text: str | int, field: str) -> int:
    """Parse a duration ('500ms', '90s', '30m', '2h', '1d', '1h30m'; plain int = ms) to ms.

    Returns a non-negative int; callers check positivity where required.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise fail(field, f"{text!r} is negative; write a positive duration, e.g. 30m")
        return text
    if isinstance(text, str):
        compact = text.strip().replace(" ", "")
        parts = _DURATION_PART_RE.findall(compact)
        if parts and "".join(n + u for n, u in parts) == compact:
            return sum(int(n) * _UNIT_MS[u] for n, u in parts)
    raise fail(field, f"{text!r} is not a duration; write e.g. 30m or 2h "
                      "(units ms, s, m, h, d; whole numbers only)")


def validate_broker(value: Any, field: str = "broker") -> str:
    """Check a broker URL ``kafka://host:port[,host:port...]`` and return it."""
    m = _BROKER_RE.match(value) if isinstance(value, str) else None
    if m is None or not all(0 < int(hp.rsplit(":", 1)[1]) < 65536 for hp in m.group(1).split(",")):
        raise fail(field, f"{value!r} is not a broker url; write e.g. kafka://localhost:9092 "
                          "or kafka://host1:9092,host2:9092")
    return value


class Section:
    """A mapping being validated: tracks the dotted prefix and rejects unknown keys."""

    def __init__(self, data: Any, prefix: str, allowed: tuple[str, ...]) -> None:
        where = prefix or "config"
        if not isinstance(data, dict):
            raise fail(where, f"{data!r} is not a mapping; write {where} as 'key: value' lines")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"allowed keys are {', '.join(allowed)}")
        self.data, self.prefix = data, prefix

    def name(self, key: str) -> str:
        """The dotted field name of ``key`` in this section."""
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, check: Callable[[Any, str], Any], default: Any = ...) -> Any:
        """``check(value, field)`` of ``key``; ``default`` when absent (required without)."""
        value = self.data.get(key)
        if value is None:
            if default is ...:
                raise fail(self.name(key), "is required but missing; add it to the config")
            return default
        return check(value, self.name(key))

    def sub(self, key: str, allowed: tuple[str, ...]) -> Section:
        """The required sub-section ``key``, itself validated."""
        return Section(self.get(key, lambda v, f: v), self.name(key), allowed)


def non_empty_str(value: Any, field: str) -> str:
    """Check a non-empty string (a name or a path)."""
    if not isinstance(value, str) or not value.strip():
        raise fail(field, f"{value!r} is not a non-empty string; write a name or path")
    return value


def boolean(value: Any, field: str) -> bool:
    """Check a YAML boolean (true/false)."""
    if not isinstance(value, bool):
        raise fail(field, f"{value!r} is not a boolean; write true or false")
    return value


def pattern(regex: re.Pattern[str], hint: str) -> Callable[[Any, str], str]:
    """A check for a string name matching ``regex``; ``hint`` says what a valid one is."""
    def check(value: Any, field: str) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise fail(field, f"{value!r} is not a valid name; {hint}")
        return value
    return check


def choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    """A check for one of ``options``."""
    def check(value: Any, field: str) -> str:
        if value not in options:
            raise fail(field, f"{value!r} is not allowed; write one of {', '.join(options)}")
        return value
    return check


def positive_int(value: Any, field: str) -> int:
    """Check an int >= 1 (booleans are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(field, f"{value!r} is not a positive integer; write e.g. 4")
    return value


_SIZE_RE = re.compile(r"^([0-9]+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30,
               "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9}


def byte_size(value: Any, field: str) -> int:
    """Check a size in bytes: an int, or '256MiB', '128MB', '1GiB' (B, KiB, MiB, GiB, KB,
    MB, GB); at least 1 byte."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    m = _SIZE_RE.match(value.strip()) if isinstance(value, str) else None
    if m is None or int(m.group(1)) < 1:
        raise fail(field, f"{value!r} is not a size; write e.g. 256MiB or 134217728 (bytes)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def non_negative_int(value: Any, field: str) -> int:
    """Check an int >= 0 (booleans are not ints here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(field, f"{value!r} is not a whole number >= 0; write e.g. 2")
    return value


def number(lo: float, hi: float, example: str) -> Callable[[Any, str], float]:
    """A check for a number in ``[lo, hi]``, returned as float; ``example`` is a valid one."""
    def check(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not lo <= value <= hi:
            raise fail(field, f"{value!r} is not a number in [{lo:g}, {hi:g}]; write e.g. "
                              f"{example}")
        return float(value)
    return check


def duration(positive: bool) -> Callable[[Any, str], int]:
    """A check for a duration (see ``parse_duration_ms``) in ms; ``positive`` rejects zero."""
    def check(value: Any, field: str) -> int:
        ms = parse_duration_ms(value, field)
        if positive and ms == 0:
            raise fail(field, f"{value!r} is zero; write a positive duration, e.g. 30m")
        return ms
    return check


def name_list(value: Any, field: str) -> tuple[str, ...]:
    """Check a non-empty list of distinct non-empty strings; returns it as a tuple."""
    if not isinstance(value, list) or not value:
        raise fail(field, f"{value!r} is not a non-empty list; write e.g. [click]")
    for i, item in enumerate(value):
        non_empty_str(item, f"{field}[{i}]")
    if len(set(value)) != len(value):
        raise fail(field, f"{value!r} has duplicates; list each name once")
    return tuple(value)
