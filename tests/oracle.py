"""The offline point-in-time join of DESIGN.md ("Labels: the oracle"), written from the
design documents alone.

Independent of production by construction: this module imports nothing from
``schemas``, ``streams`` or ``jobs``. It reads the pipeline YAML (or the same as a
dict) itself, parses the events itself (JSON, event times, feature coercion, PII
hashing) and applies the label rules to all events at once, in arrival order:

- valid requests R: the first valid request with a given key wins, later ones are
  duplicates; invalid events are excluded;
- binary: ``label(r) = 1`` iff some valid feedback ``f`` has ``f.key == r.key``,
  ``f.type in label.positive`` and ``r.ts <= f.ts < r.ts + label_window``; then
  ``label_ts`` may be the time of any such ``f`` (a frozenset of acceptable values);
  otherwise ``label = 0`` and ``label_ts = r.ts + label_window``;
- regression: among such ``f`` with ``f.type in label.feedback``, the one with the
  smallest ``f.ts`` gives the value (``elapsed_seconds`` = ``(f.ts - r.ts) / 1000`` or
  ``field:<name>`` of the feedback); with none the request is unlabeled and absent.

The expected example holds every column of the labeled topic's JSON: ``request_id``,
``request_ts``, ``window_start`` (request time floored to ``dataset.window``),
``label``, ``label_ts``, ``prediction``, ``model_version``, ``label_delay_ms``
(``label_ts - request_ts`` when feedback decided the label, null for a negative),
``label_version``, ``sample_weight``, then each kept feature in config order
(``pii: hash`` as the hex HMAC-SHA256, ``pii: drop`` absent).

Issue 14's rules, from its text and the README:
- ``label.negative_sample_rate`` r (binary): a negative is in the output only if the
  first 8 bytes of BLAKE2b (digest size 8) of its UTF-8 request id, read big-endian,
  are below ``r * 2**64``; it then carries ``sample_weight`` ``1 / r``; everything else
  ``1.0``.
- corrections: ``late_feedback`` are events that arrive after their request's label was
  final (the caller knows when). Each one, in arrival order, that would change the label
  (binary: a positive in the window of a negative; regression: an in-window outcome
  earlier than the label's, or the first one) changes it, and the version goes up by
  one (an unlabeled request's first label is version 1). Sampled-out negatives count as
  version 1.

Where DESIGN.md is silent the choices are written down next to the code (``_Choice``
comments) so a disagreement with production can be judged against them.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

__all__ = ["expected_examples", "assert_examples_match", "latest_versions", "read_dataset_examples",
           "is_valid_event", "OracleConfig", "parse_config", "parse_duration_ms", "parse_event_time",
           "InvalidEvent"]

BASE_COLUMNS = ("request_id", "request_ts", "window_start", "label", "label_ts",
                "prediction", "model_version", "label_delay_ms", "label_version",
                "sample_weight")

# README "Dead letters": an event over 1 MiB or a string over 16,384 characters is
# too_large (invalid).
MAX_EVENT_BYTES = 1 << 20
MAX_STRING_CHARS = 16_384

# _Choice: event times are instants that ISO-8601 (4-digit years) can write:
# 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z, for strings and epoch ms alike.
MIN_TS_MS = -62_135_596_800_000
MAX_TS_MS = 253_402_300_799_999
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

FEATURE_TYPES = ("int", "float", "str", "bool")


class InvalidEvent(Exception):
    """An event the oracle excludes (DESIGN: it goes to the dead-letter topic)."""


# --------------------------------------------------------------------------- config

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration_ms(text: Any) -> int:
    """``500ms``, ``90s``, ``30m``, ``2h``, ``1d`` and sums like ``1h30m`` -> milliseconds."""
    if not isinstance(text, str):
        raise ValueError(f"duration {text!r} is not a string like 30m")
    s = text.strip()
    pos, total = 0, 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise ValueError(f"{text!r} is not a duration like 30m, 2h, 90s, 500ms")
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError("empty duration")
    return total


@dataclass(frozen=True)
class Feature:
    name: str
    type: str
    pii: Optional[str]  # None | "hash" | "drop"


@dataclass(frozen=True)
class OracleConfig:
    """What the oracle reads of a pipeline config."""
    key: str
    label_window_ms: int
    kind: str                        # binary | regression
    positive: frozenset
    feedback_types: frozenset
    value: Optional[str]             # elapsed_seconds | field:<name> (regression)
    features: tuple[Feature, ...]
    dataset_window_ms: int
    # inputs: canonical field name (the join key's name for the key) -> path segments
    request_fields: dict = field(default_factory=dict)
    feedback_fields: dict = field(default_factory=dict)
    request_ts_unit: str = "ms"      # unit of numeric event times: s | ms | us
    feedback_ts_unit: str = "ms"
    negative_sample_rate: float = 1.0

    @property
    def kept(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.pii != "drop")


INPUT_ROLES = ("requests", "feedback")
TS_UNITS = ("s", "ms", "us")


def split_path(path: Any, where: str = "path") -> tuple[str, ...]:
    """An ``inputs`` field path as its segments (spec of ``inputs:`` rule 2): ``.``
    separates segments, ``\\.`` is a literal dot and ``\\\\`` a literal backslash inside
    a segment. An empty path, an empty segment, any other escape or a trailing lone
    backslash is a ValueError naming ``where`` and the value."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: {path!r} is not a non-empty path string")
    parts: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(path):
        c = path[i]
        if c == "\\":
            if i + 1 >= len(path):
                raise ValueError(f"{where}: {path!r} ends in a lone backslash")
            nxt = path[i + 1]
            if nxt not in ".\\":
                raise ValueError(f"{where}: {path!r} has the unknown escape \\{nxt}")
            cur.append(nxt)
            i += 2
            continue
        if c == ".":
            if not cur:
                raise ValueError(f"{where}: {path!r} has an empty segment")
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if not cur:
        raise ValueError(f"{where}: {path!r} has an empty segment")
    parts.append("".join(cur))
    return tuple(parts)


_split_path = split_path  # the former private name


def _inputs(data: Mapping, key: str, kind: str, value: Optional[str]
            ) -> tuple[dict, str, dict, str]:
    """The ``inputs:`` section (absent: every field unmapped, ts_unit ms)."""
    inputs = data.get("inputs") or {}
    if not isinstance(inputs, Mapping):
        raise ValueError(f"inputs: {inputs!r} is not a mapping")
    outcome = (value[len("field:"):] if kind == "regression" and value
               and value.startswith("field:") else None)
    allowed = {"requests": {key, "ts", "features", "prediction", "model_version"},
               "feedback": {key, "ts", "type", "value"} | ({outcome} if outcome else set())}
    out: list = []
    for role in INPUT_ROLES:
        spec = inputs.get(role) or {}
        if not isinstance(spec, Mapping):
            raise ValueError(f"inputs.{role}: {spec!r} is not a mapping")
        fields = spec.get("fields") or {}
        if not isinstance(fields, Mapping):
            raise ValueError(f"inputs.{role}.fields: {fields!r} is not a mapping")
        paths = {}
        for name, path in fields.items():
            where = f"inputs.{role}.fields.{name}"
            if name not in allowed[role]:
                raise ValueError(f"{where}: unknown field {name!r} "
                                 f"(one of {sorted(allowed[role])})")
            paths[name] = split_path(path, where)
        unit = spec.get("ts_unit", "ms")
        if unit not in TS_UNITS:
            raise ValueError(f"inputs.{role}.ts_unit: {unit!r} is not one of s, ms, us")
        out += [paths, unit]
    return out[0], out[1], out[2], out[3]


def parse_config(config: Any) -> OracleConfig:
    """Read a pipeline config: a YAML path (str or Path) or the same content as a dict."""
    if isinstance(config, OracleConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        data = yaml.safe_load(Path(config).read_text())
    elif isinstance(config, Mapping):
        data = config
    else:
        raise TypeError(f"config must be a YAML path or a dict, not {type(config).__name__} "
                        "(the oracle does not read production config objects)")
    join = data["join"]
    label = data["label"]
    kind = label["kind"]
    if kind not in ("binary", "regression"):
        raise ValueError(f"label.kind {kind!r}")
    features = []
    for name, spec in data["features"].items():
        if isinstance(spec, str):
            ftype, pii = spec, None
        else:
            ftype, pii = spec["type"], spec.get("pii")
        if ftype not in FEATURE_TYPES or pii not in (None, "hash", "drop"):
            raise ValueError(f"feature {name}: type {ftype!r} pii {pii!r}")
        features.append(Feature(str(name), ftype, pii))
    value = label.get("value") if kind == "regression" else None
    if kind == "regression" and not (value == "elapsed_seconds"
                                     or (isinstance(value, str) and value.startswith("field:"))):
        raise ValueError(f"label.value {value!r}")
    key = join.get("key", "request_id")
    rf, ru, ff, fu = _inputs(data, key, kind, value)
    return OracleConfig(
        key=key,
        label_window_ms=parse_duration_ms(join["label_window"]),
        kind=kind,
        positive=frozenset(label.get("positive") or ()) if kind == "binary" else frozenset(),
        feedback_types=frozenset(label.get("feedback") or ()) if kind == "regression" else frozenset(),
        value=value,
        features=tuple(features),
        dataset_window_ms=parse_duration_ms(data["dataset"]["window"]),
        request_fields=rf, feedback_fields=ff, request_ts_unit=ru, feedback_ts_unit=fu,
        negative_sample_rate=float(label.get("negative_sample_rate", 1)))


# ------------------------------------------------------------------------ event time

# ISO-8601 date and time of day with a zone: calendar (2026-11-27), ordinal (2026-331) or
# week (2026-W48-5) dates, extended or basic format; the time to the hour, minute or
# second with a decimal fraction of its last part; Z or an offset +hh[:mm].
# (The space separator of RFC 3339 is accepted too.)
_ISO = re.compile(
    r"(?P<y>\d{4})-?(?:(?P<mo>\d{2})-?(?P<d>\d{2})|W(?P<w>\d{2})-?(?P<wd>\d)|(?P<od>\d{3}))"
    r"[Tt ](?P<h>\d{2})(?::?(?P<mi>\d{2})(?::?(?P<s>\d{2}))?)?(?:[.,](?P<frac>\d+))?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)", re.ASCII)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _iso_day(m: re.Match) -> int:
    """Days since 1970-01-01 of the matched calendar, ordinal or week date."""
    y = int(m["y"])
    if m["mo"]:
        mo, d = int(m["mo"]), int(m["d"])
        if not (1 <= mo <= 12 and 1 <= d <= (29 if mo == 2 and _leap(y) else _DAYS_IN_MONTH[mo - 1])):
            raise InvalidEvent(f"{m.string!r}: no such date")
        return _days_from_civil(y, mo, d)
    if m["od"]:
        od = int(m["od"])
        if not 1 <= od <= (366 if _leap(y) else 365):
            raise InvalidEvent(f"{m.string!r}: no such day of the year")
        return _days_from_civil(y, 1, 1) + od - 1
    w, wd = int(m["w"]), int(m["wd"])
    jan4 = _days_from_civil(y, 1, 4)
    week1_monday = jan4 - (jan4 + 3) % 7        # 1970-01-01 was a Thursday
    next_week1_monday = (lambda j: j - (j + 3) % 7)(_days_from_civil(y + 1, 1, 4))
    if not (1 <= wd <= 7 and 1 <= w <= (next_week1_monday - week1_monday) // 7):
        raise InvalidEvent(f"{m.string!r}: no such week date")
    return week1_monday + (w - 1) * 7 + wd - 1


def _parse_iso(value: str) -> int:
    m = _ISO.fullmatch(value)
    if not m:
        raise InvalidEvent(f"ts {value[:60]!r} is not ISO-8601 with a zone")
    day = _iso_day(m)
    hh, mi, ss = int(m["h"]), int(m["mi"] or 0), int(m["s"] or 0)
    if hh > 23 or mi > 59 or ss > 59:
        raise InvalidEvent(f"ts {value!r}: no such time of day")
    frac_ms = 0
    if m["frac"]:  # a fraction of the last part given, floored to ms
        unit = 1000 if m["s"] else 60_000 if m["mi"] else 3_600_000
        frac_ms = int(m["frac"]) * unit // 10 ** len(m["frac"])
    offset_min = 0
    if not m["z"]:
        oh, om = int(m["oh"]), int(m["om"] or 0)
        if oh > 23 or om > 59:
            raise InvalidEvent(f"ts {value!r} has a bad zone offset")
        offset_min = (oh * 60 + om) * (1 if m["sign"] == "+" else -1)
    return ((day * 86_400 + hh * 3600 + mi * 60 + ss) * 1000 + frac_ms - offset_min * 60_000)


class JsonFloat(float):
    """A JSON number with a fraction or exponent, remembering the text it was written as
    (``inputs.ts_unit: s`` converts "the decimal as written", not the nearest double)."""
    text: str

    def __new__(cls, text: str) -> "JsonFloat":
        obj = super().__new__(cls, text)
        obj.text = text
        return obj


def _decimal(value: Any) -> Decimal:
    """The exact decimal of a JSON number: as written for a parsed one, else its repr."""
    if isinstance(value, JsonFloat):
        return Decimal(value.text)
    return Decimal(value) if isinstance(value, int) else Decimal(repr(float(value)))


_LEGACY_UNITS = {1: "ms", 1000: "s", Decimal("0.001"): "us"}


def parse_event_time(value: Any, unit: Any = "ms") -> int:
    """An event time as epoch ms: ISO-8601 with a zone (``Z``, ``+01:00``; fractional
    seconds floored to ms) or a number of the ``inputs.<role>.ts_unit``:
    ``ms`` (default) integer (or integral float) epoch ms; ``s`` any finite epoch
    seconds, ``floor(seconds * 1000)`` on the decimal as written; ``us`` integer (or
    integral) epoch microseconds, ``floor(us / 1000)``. Raises InvalidEvent."""
    if not isinstance(unit, str):
        unit = _LEGACY_UNITS[unit]
    if unit not in TS_UNITS:
        raise ValueError(f"ts_unit {unit!r}")
    if isinstance(value, bool):
        raise InvalidEvent(f"ts {value!r} is a bool")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidEvent(f"ts {value!r} is not finite")
        if unit == "ms":
            # _Choice: a JSON number with a zero fraction (1.0, 1e3) is an integer, as in
            # JSON Schema; 1.5 is not.
            if isinstance(value, float) and value != int(value):
                raise InvalidEvent(f"ts {value!r} is a fraction of a millisecond")
            ms = int(value)
        else:
            d = _decimal(value)
            if abs(d) > 10 ** 20:
                raise InvalidEvent(f"ts {value!r} is out of range")
            with localcontext() as ctx:
                ctx.prec = 100 + len(str(d))   # exact: no rounding before the floor
                if unit == "s":
                    ms = math.floor(d * 1000)
                else:
                    if d != d.to_integral_value():
                        raise InvalidEvent(f"ts {value!r} is a fraction of a microsecond")
                    ms = math.floor(d / 1000)
    elif isinstance(value, str):
        ms = _parse_iso(value)
    else:
        raise InvalidEvent(f"ts {value!r} is neither an ISO-8601 string nor a number")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise InvalidEvent(f"ts {value!r} is outside years 1-9999")
    return ms


# ----------------------------------------------------------------------- event JSON

def _load(raw: Any) -> dict:
    if raw is None:
        raise InvalidEvent("tombstone")
    raw = bytes(raw)
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent("over 1 MiB")
    try:
        text = raw.decode("utf-8")  # strict: JSON on the wire is UTF-8, no BOM
        obj = json.loads(text, parse_float=JsonFloat)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise InvalidEvent(f"malformed JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not a JSON object")
    _check_text(obj)
    return obj


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_text(obj: Any) -> None:
    """Every string (keys too) must be Unicode text: a lone surrogate is not."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _has_surrogate(v):
                raise InvalidEvent("a string holds a lone surrogate")
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _walk(obj: dict, path: tuple[str, ...]) -> Any:
    """The value at ``path``; None when absent: at each segment the current value must be
    a JSON object holding that key (a present null is absent too)."""
    cur: Any = obj
    for part in path:
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _get(obj: dict, name: str, paths: dict) -> Any:
    """A field by its canonical name, at its ``inputs`` path if mapped; None if absent."""
    return _walk(obj, paths.get(name, (name,)))


def _short_str(name: str, v: Any) -> None:
    if isinstance(v, str) and len(v) > MAX_STRING_CHARS:
        raise InvalidEvent(f"{name}: string over {MAX_STRING_CHARS} characters")


def _key(obj: dict, cfg: OracleConfig, paths: dict) -> str:
    rid = _get(obj, cfg.key, paths)
    if rid is None:
        raise InvalidEvent("request id missing")
    if not isinstance(rid, str):
        raise InvalidEvent(f"request id {rid!r} is not a string")
    _short_str("request_id", rid)
    return rid


def _ts(obj: dict, paths: dict, unit: Any) -> int:
    ts = _get(obj, "ts", paths)
    if ts is None:
        raise InvalidEvent("ts missing")
    return parse_event_time(ts, unit)


def _finite_number(v: Any, what: str) -> Optional[float]:
    """A JSON number as a finite float, or None for null; anything else is invalid."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidEvent(f"{what} {v!r} is not a number")
    try:
        x = float(v)
    except OverflowError:
        raise InvalidEvent(f"{what} is out of float range") from None
    if not math.isfinite(x):
        raise InvalidEvent(f"{what} is not finite")
    return x


_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _text_number(s: str, what: str) -> Decimal:
    if not _NUMBER_TEXT.fullmatch(s):
        raise InvalidEvent(f"{what} {s[:40]!r} is not a number")
    d = Decimal(s)
    if d and not -400 < d.adjusted() < 400:  # far outside float and int64 either way
        raise InvalidEvent(f"{what} {s[:40]!r} is out of range")
    return d


def _coerce(v: Any, ftype: str, name: str) -> Any:
    """DESIGN "Events": a feature value coerced to its declared type. ``""``/null -> None."""
    if v is None or v == "":
        return None
    _short_str(f"features.{name}", v)
    if isinstance(v, float) and not math.isfinite(v):
        raise InvalidEvent(f"features.{name} is NaN or infinite")
    if ftype == "float":
        if isinstance(v, bool):
            raise InvalidEvent(f"features.{name}: bool is not a float")
        if isinstance(v, (int, float)):
            return _finite_number(v, f"features.{name}")
        if isinstance(v, str):
            d = _text_number(v, f"features.{name}")
            x = float(d)
            if not math.isfinite(x):
                raise InvalidEvent(f"features.{name} overflows a float")
            return x
        raise InvalidEvent(f"features.{name}: {type(v).__name__} is not a float")
    if ftype == "int":
        # _Choice: a whole number in any form (7, 7.0, "7", "7.0") is that int; int64 range.
        if isinstance(v, bool):
            raise InvalidEvent(f"features.{name}: bool is not an int")
        if isinstance(v, int):
            x = v
        elif isinstance(v, float):
            if v != int(v):
                raise InvalidEvent(f"features.{name}: {v!r} is not whole")
            x = int(v)
        elif isinstance(v, str):
            d = _text_number(v, f"features.{name}")
            if d != d.to_integral_value():
                raise InvalidEvent(f"features.{name}: {v!r} is not whole")
            x = int(d)
        else:
            raise InvalidEvent(f"features.{name}: {type(v).__name__} is not an int")
        if not INT64_MIN <= x <= INT64_MAX:
            raise InvalidEvent(f"features.{name}: outside int64")
        return x
    if ftype == "bool":
        # _Choice: true/false, 0/1 and the strings "true"/"false"/"1"/"0" (any case).
        if isinstance(v, bool):
            return v
        if isinstance(v, int) and v in (0, 1):
            return v == 1
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0"):
            return v.lower() in ("true", "1")
        raise InvalidEvent(f"features.{name}: {v!r} is not a bool")
    # str. _Choice: a number is written as Python's str() of the JSON number; a bool,
    # an object or an array is not a string.
    if isinstance(v, str):
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidEvent(f"features.{name}: {type(v).__name__} is not a string")
    return str(v)


def _pii_hash(key: bytes, value: Any) -> str:
    """Hex HMAC-SHA256 under ``key`` of the UTF-8 bytes of the value as a string."""
    text = value if isinstance(value, str) else (
        ("true" if value else "false") if isinstance(value, bool) else str(value))
    return hmac.new(key, text.encode("utf-8"), "sha256").hexdigest()


@dataclass
class _Request:
    request_id: str
    ts: int
    prediction: Optional[float]
    model_version: Optional[str]
    features: dict


@dataclass
class _Feedback:
    request_id: str
    ts: int
    type: str
    outcome: Any  # the regression value field (raw), or None


def parse_request(raw: bytes, cfg: OracleConfig, pii_key: Optional[bytes]) -> _Request:
    obj = _load(raw)
    paths = cfg.request_fields
    rid = _key(obj, cfg, paths)
    ts = _ts(obj, paths, cfg.request_ts_unit)
    feats = _get(obj, "features", paths)
    if feats is None:
        feats = {}
    if not isinstance(feats, dict):
        raise InvalidEvent("features is not an object")
    out = {}
    for f in cfg.kept:
        v = _coerce(feats.get(f.name), f.type, f.name)
        if f.pii == "hash" and v is not None:
            if not pii_key:
                raise ValueError(f"feature {f.name} has pii: hash; pass pii_key")
            v = _pii_hash(pii_key, v)
        out[f.name] = v
    prediction = _finite_number(_get(obj, "prediction", paths), "prediction")
    version = _get(obj, "model_version", paths)
    if version is not None and not isinstance(version, str):
        raise InvalidEvent("model_version is not a string")
    _short_str("model_version", version)
    return _Request(rid, ts, prediction, version, out)


def parse_feedback(raw: bytes, cfg: OracleConfig) -> _Feedback:
    obj = _load(raw)
    paths = cfg.feedback_fields
    rid = _key(obj, cfg, paths)
    ts = _ts(obj, paths, cfg.feedback_ts_unit)
    ftype = _get(obj, "type", paths)
    if ftype is None:
        raise InvalidEvent("type missing")
    if not isinstance(ftype, str):
        raise InvalidEvent("type is not a string")
    _short_str("type", ftype)
    value = _finite_number(_get(obj, "value", paths), "value")
    outcome = None
    if cfg.value is not None and cfg.value.startswith("field:"):
        name = cfg.value[len("field:"):]
        outcome = value if name == "value" else _get(obj, name, paths)
        # inputs rule 4: the outcome field of feedback of a label.feedback type is
        # required (absent: missing_field). _Choice: present but not a finite number, the
        # feedback carries no outcome (see _outcome), which labels the same as invalid.
        if outcome is None and ftype in cfg.feedback_types:
            raise InvalidEvent(f"{name} (the label value) is missing")
    return _Feedback(rid, ts, ftype, outcome)


def is_valid_event(config, role: str, raw: bytes, pii_key: bytes | None = None) -> bool:
    """Whether the oracle takes ``raw`` as a valid event of ``role`` (requests|feedback)
    on its own (a valid request may still be a duplicate)."""
    cfg = parse_config(config)
    if isinstance(pii_key, str):
        pii_key = pii_key.encode("utf-8")
    try:
        if role == "requests":
            parse_request(raw, cfg, pii_key)
        elif role == "feedback":
            parse_feedback(raw, cfg)
        else:
            raise ValueError(f"role {role!r}: requests or feedback")
    except InvalidEvent:
        return False
    return True


# ------------------------------------------------------------------------- the join

def _outcome(cfg: OracleConfig, r: _Request, f: _Feedback) -> Optional[float]:
    if cfg.value == "elapsed_seconds":
        return (f.ts - r.ts) / 1000.0
    v = f.outcome
    # _Choice: feedback without a finite number in the value field carries no outcome.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        x = float(v)
    except OverflowError:
        return None
    return x if math.isfinite(x) else None


def _sampled_in(rid: str, rate: float) -> bool:
    if rate >= 1:
        return True
    h = hashlib.blake2b(rid.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(h, "big") < rate * 2.0 ** 64


def _minus(ts, r_ts: int):
    """``ts - r_ts`` for a time or a frozenset of acceptable times."""
    if isinstance(ts, frozenset):
        return frozenset(t - r_ts for t in ts)
    return ts - r_ts


def expected_examples(config, requests, feedback, pii_key: bytes | None = None,
                      late_feedback=()) -> dict[str, dict]:
    """config: path to a pipeline YAML or the same as a dict. requests/feedback: raw bytes
    of each topic's events in arrival order; late_feedback: raw feedback that arrived
    after its request's label was final (corrections), in arrival order.

    Returns request_id -> the expected labeled example, every column as the labeled
    topic's JSON decodes it (request_id, request_ts, window_start, label, label_ts,
    prediction, model_version, then each kept feature). A binary positive's label_ts may
    be the time of any in-window positive feedback: there it is a frozenset of acceptable
    values (so is a regression label when feedback tied for earliest carries different
    values). Unlabeled regression requests are absent.
    """
    cfg = parse_config(config)
    if isinstance(pii_key, str):
        pii_key = pii_key.encode("utf-8")
    reqs: dict[str, _Request] = {}
    for raw in requests:
        try:
            r = parse_request(raw, cfg, pii_key)
        except InvalidEvent:
            continue
        reqs.setdefault(r.request_id, r)  # the first valid request wins
    by_id: dict[str, list[_Feedback]] = {}
    for raw in feedback:
        try:
            f = parse_feedback(raw, cfg)
        except InvalidEvent:
            continue
        by_id.setdefault(f.request_id, []).append(f)

    late: dict[str, list[_Feedback]] = {}
    for raw in late_feedback:
        try:
            f = parse_feedback(raw, cfg)
        except InvalidEvent:
            continue
        late.setdefault(f.request_id, []).append(f)

    window = cfg.label_window_ms
    rate = cfg.negative_sample_rate if cfg.kind == "binary" else 1.0
    out: dict[str, dict] = {}
    for rid, r in reqs.items():
        in_window = [f for f in by_id.get(rid, ()) if r.ts <= f.ts < r.ts + window]
        version = 1
        if cfg.kind == "binary":
            pos = frozenset(f.ts for f in in_window if f.type in cfg.positive)
            label, label_ts = (1, pos) if pos else (0, r.ts + window)
            for f in late.get(rid, ()):
                if label == 0 and f.type in cfg.positive and r.ts <= f.ts < r.ts + window:
                    label, label_ts, version = 1, f.ts, version + 1
            if label == 0 and not _sampled_in(rid, rate):
                continue  # sampled out
            delay = _minus(label_ts, r.ts) if label == 1 else None
            weight = 1.0 / rate if label == 0 else 1.0
        else:
            cands = [(f.ts, o) for f in in_window if f.type in cfg.feedback_types
                     for o in (_outcome(cfg, r, f),) if o is not None]
            label = label_ts = None
            if cands:
                label_ts = min(ts for ts, _ in cands)
                values = frozenset(o for ts, o in cands if ts == label_ts)
                label = next(iter(values)) if len(values) == 1 else values
            for f in late.get(rid, ()):
                o = _outcome(cfg, r, f) if f.type in cfg.feedback_types else None
                if o is None or not r.ts <= f.ts < r.ts + window:
                    continue
                if label is None or f.ts < label_ts:
                    version = version + 1 if label is not None else 1
                    label, label_ts = o, f.ts
            if label is None:
                continue  # unlabeled: not in the dataset
            delay, weight = label_ts - r.ts, 1.0
        example = {
            "request_id": rid,
            "request_ts": r.ts,
            "window_start": r.ts - r.ts % cfg.dataset_window_ms,
            "label": label,
            "label_ts": label_ts,
            "prediction": r.prediction,
            "model_version": r.model_version,
            "label_delay_ms": delay,
            "label_version": version,
            "sample_weight": weight,
        }
        example.update(r.features)
        out[rid] = example
    return out


def latest_versions(rows) -> list[dict]:
    """Of labeled examples (from the topic, where a correction follows its first label),
    each request's highest ``label_version`` (what a reader of the current data sees)."""
    best: dict[Any, dict] = {}
    for row in rows:
        rid = row.get("request_id")
        if rid not in best or row.get("label_version", 1) > best[rid].get("label_version", 1):
            best[rid] = row
    return list(best.values())


# ------------------------------------------------------------------- the comparison

REL_TOL = 1e-9
ABS_TOL = 1e-9


def _equal(exp: Any, got: Any) -> bool:
    if isinstance(exp, frozenset):
        return any(_equal(e, got) for e in exp)
    if exp is None or got is None:
        return exp is None and got is None
    if isinstance(exp, bool) or isinstance(got, bool):
        return isinstance(exp, bool) and isinstance(got, bool) and exp == got
    if isinstance(exp, int):
        return isinstance(got, int) and exp == got  # an int column must stay an int
    if isinstance(exp, float):
        return (isinstance(got, (int, float)) and math.isfinite(got)
                and math.isclose(exp, got, rel_tol=REL_TOL, abs_tol=ABS_TOL))
    return type(exp) is type(got) and exp == got


def _show(v: Any) -> str:
    if isinstance(v, frozenset):
        items = sorted(v, key=repr)
        return "one of {" + ", ".join(map(repr, items[:5])) + (", ..." if len(items) > 5 else "") + "}"
    return repr(v)


def assert_examples_match(expected: dict[str, dict], actual) -> None:
    """actual: iterable of labeled examples (dicts as decoded from the labeled topic JSON,
    or rows from read_dataset_examples); a dict ``{request_id: example}`` is taken by
    its values.

    Fails (with a readable message naming request ids and fields) unless every expected
    request appears exactly once, nothing else appears, every example has exactly the
    expected columns and every field is equal (ints exactly and still ints, floats with
    a tight tolerance, frozensets by membership).
    """
    if isinstance(actual, Mapping):
        actual = actual.values()
    rows = list(actual)
    counts = Counter(row.get("request_id") for row in rows)
    problems: list[str] = []
    missing = sorted(set(expected) - set(counts))
    extra = sorted((k for k in counts if k not in expected), key=repr)
    repeated = sorted((k for k, n in counts.items() if n > 1 and k in expected), key=repr)
    if missing:
        problems.append(f"{len(missing)} expected request(s) missing, e.g. {missing[:10]}")
    if extra:
        problems.append(f"{len(extra)} unexpected request(s), e.g. {extra[:10]}")
    if repeated:
        problems.append(f"{len(repeated)} request(s) appear more than once, e.g. "
                        f"{[(k, counts[k]) for k in repeated[:10]]}")
    field_diffs: list[str] = []
    n_bad = 0
    for row in rows:
        rid = row.get("request_id")
        exp = expected.get(rid)
        if exp is None:
            continue
        diffs = []
        exp_cols, got_cols = list(exp), list(row)
        absent = [c for c in exp_cols if c not in row]
        added = [c for c in got_cols if c not in exp]
        if absent:
            diffs.append(f"columns missing {absent}")
        if added:
            diffs.append(f"unexpected columns {added}")
        for col in exp_cols:
            if col in row and not _equal(exp[col], row[col]):
                diffs.append(f"{col}: got {row[col]!r}, expected {_show(exp[col])}")
        if diffs:
            n_bad += 1
            if len(field_diffs) < 15:
                field_diffs.append(f"  {rid!r}: " + "; ".join(diffs))
    if n_bad:
        problems.append(f"{n_bad} request(s) with wrong fields:\n" + "\n".join(field_diffs))
    assert not problems, (f"labeled examples differ from the oracle ({len(expected)} expected, "
                          f"{len(rows)} actual):\n" + "\n".join(problems))


# ---------------------------------------------------------------- reading a dataset

def _hidden(name: str) -> bool:
    return name.startswith(("_", "."))


_TS_FACTOR_TO_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000), "ns": (1, 1_000_000)}


def _column_values(col) -> list:
    import pyarrow as pa
    import pyarrow.compute as pc
    t = col.type
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
        t = col.type
    if pa.types.is_timestamp(t):
        mul, div = _TS_FACTOR_TO_MS[t.unit]
        ints = col.cast(pa.int64()).to_pylist()
        return [None if v is None else (v * mul) // div for v in ints]
    if pa.types.is_large_string(t):
        col = pc.cast(col, pa.string())
    return col.to_pylist()


def read_dataset_examples(path) -> list[dict]:
    """Every row of the Parquet dataset under path (written by the sink), normalised to
    the labeled topic's JSON form (timestamps as epoch-ms ints, etc.), read with pyarrow;
    hidden files and directories (names starting with _ or .) are ignored."""
    import pyarrow.parquet as pq
    root = Path(path)
    rows: list[dict] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for name in sorted(filenames):
            if _hidden(name) or not name.endswith(".parquet"):
                continue
            table = pq.read_table(os.path.join(dirpath, name), partitioning=None)
            columns = {c: _column_values(table.column(c)) for c in table.column_names}
            for i in range(table.num_rows):
                rows.append({c: vals[i] for c, vals in columns.items()})
    return rows
