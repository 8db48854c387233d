"""Real-world shapes of the simulated events: what log shippers and model servers write.

``generate`` (``streams.dev.simulate``) writes the flat format of DESIGN.md "Events",
keyed by request id. ``reshape`` turns that into what a real producer would ship:

- ``dlabel``: unchanged, byte for byte, keyed by request id.
- ``ecs``: Elastic Common Schema, as Filebeat or Logstash (``codec => json``) ship it:
  ``@timestamp`` ISO-8601 with milliseconds and ``Z``, feedback under ``event`` and
  ``trace``, requests as a model server's inference logger writes them. Unkeyed.
- ``fluentd``: Fluentd's ``{"time", "tag", "record"}`` with ``time`` an EventTime in
  epoch seconds (a float with a fraction). Unkeyed.

Unkeyed records land on any partition, as Logstash and Fluentd send them unless told
otherwise; the worker's repartition hop (``inputs.copartitioned: false``) handles that.
A duplicate request is a shipper's retry: the same bytes as its original. (Two *different*
copies of one request sent unkeyed land on different partitions, where no order between
them exists, so which one is "first" would not be reproducible.)
``inputs_section`` gives the ``inputs:`` config section that reads a shape back, so a
reshaped event parses to the same request or feedback as the flat one. A malformed
event stays malformed: one that is not a JSON object keeps its bytes; otherwise its
fields move like a valid one's (a zone-less time stays as written, a missing id stays
missing, a NaN feature stays NaN).
"""
from __future__ import annotations

import dataclasses
import json
import zlib
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable

from schemas.errors import EventError
from schemas.events import parse_event_time
from streams.dev.simulate import SimEvent

if TYPE_CHECKING:
    from schemas.config import PipelineConfig

__all__ = ["FORMATS", "reshape", "reshape_event", "inputs_section", "mismatch"]

FORMATS = ("dlabel", "ecs", "fluentd")
ECS_VERSION = "8.11.0"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode
_KEY = "request_id"  # stands for the config's join key in the tables below

# event field -> path in the shape; ``ts`` first so it leads the JSON object
_PATHS: dict[str, dict[str, dict[str, str]]] = {
    "ecs": {
        "requests": {"ts": "@timestamp", _KEY: "id", "features": "payload.features",
                     "prediction": "payload.score", "model_version": "model.version"},
        "feedback": {"ts": "@timestamp", _KEY: "trace.request_id", "type": "event.action",
                     "value": "event.duration"},
    },
    "fluentd": {
        "requests": {"ts": "time", _KEY: "record.rid", "features": "record.features",
                     "prediction": "record.score", "model_version": "record.model"},
        "feedback": {"ts": "time", _KEY: "record.rid", "type": "record.kind",
                     "value": "record.value"},
    },
}
#: where any other feedback field (the regression outcome ``field:<name>``) goes
_EXTRA_PREFIX = {"ecs": "custom", "fluentd": "record"}
_TS_UNIT = {"ecs": "ms", "fluentd": "s"}


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _iso_ms(ms: int) -> str:
    """``2026-11-27T10:00:00.123Z``: what Logstash and Filebeat write as ``@timestamp``."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _seconds(ms: int) -> float:
    """Fluentd EventTime as JSON: epoch seconds with the milliseconds as the fraction."""
    return ms / 1000  # correctly rounded, so repr() is the exact decimal with <= 3 digits


_TS_FORMAT: dict[str, Callable[[int], Any]] = {"ecs": _iso_ms, "fluentd": _seconds}


def _escape(name: str) -> str:
    """A field name as one path segment (``\\.`` for a dot, ``\\\\`` for a backslash)."""
    return name.replace("\\", "\\\\").replace(".", "\\.")


def _split(path: str) -> list[str]:
    """The segments of a path written by ``_escape`` (the inverse of joining them)."""
    segments, current, chars = [], [], iter(path)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars))
        elif ch == ".":
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
    segments.append("".join(current))
    return segments


def _put(obj: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = _split(path)
    for seg in parents:
        obj = obj.setdefault(seg, {})
    obj[last] = value


def _role_paths(fmt: str, role: str, config: "PipelineConfig") -> dict[str, str]:
    """Event field (the join key under its configured name) -> path, for one role."""
    paths = {config.join.key if k == _KEY else k: p for k, p in _PATHS[fmt][role].items()}
    outcome = config.label.value_field
    if role == "feedback" and outcome:
        paths[outcome] = f"{_EXTRA_PREFIX[fmt]}.{_escape(outcome)}"
    return paths


def inputs_section(fmt: str, config: "PipelineConfig") -> dict[str, Any] | None:
    """The ``inputs:`` config section (as plain data) that reads format ``fmt`` back.

    None for ``dlabel``, which needs no mapping. Shapes are unkeyed, so
    ``copartitioned`` is false.
    """
    _check(fmt)
    if fmt == "dlabel":
        return None
    return {"copartitioned": False, **{
        role: {"fields": _role_paths(fmt, role, config), "ts_unit": _TS_UNIT[fmt]}
        for role in ("requests", "feedback")}}


def mismatch(fmt: str, config: "PipelineConfig") -> str | None:
    """Why ``config``'s ``inputs:`` cannot read format ``fmt`` (None when it can)."""
    want = inputs_section(fmt, config) or {}
    for role in ("requests", "feedback"):
        spec = getattr(config.inputs, role)
        want_role = want.get(role, {"fields": {}, "ts_unit": "ms"})
        names = set(want_role["fields"]) | set(dict(spec.fields))
        for name in sorted(names):
            expected = want_role["fields"].get(name, _escape(name))
            have = spec.path(name)
            if have.segments != tuple(_split(expected)):
                return (f"inputs.{role}.fields.{name} is {have.text!r}, the {fmt} shape "
                        f"writes {expected!r}")
        if fmt != "ecs" and spec.ts_unit != want_role["ts_unit"]:  # ecs times are ISO
            return (f"inputs.{role}.ts_unit is {spec.ts_unit!r}, the {fmt} shape writes "
                    f"{want_role['ts_unit']!r}")
    return None


def _head(fmt: str, role: str, flat: dict[str, Any]) -> dict[str, Any]:
    """What a real producer adds right after the time (Fluentd's tag)."""
    if fmt != "fluentd":
        return {}
    ftype = flat.get("type")
    if role == "requests":
        return {"tag": "model.inference"}
    return {"tag": f"app.{ftype}" if isinstance(ftype, str) else "app"}


def _tail(fmt: str, role: str, flat: dict[str, Any], key: str, raw: bytes) -> dict[str, Any]:
    """What a real producer adds after the event's own fields (ECS metadata)."""
    if fmt != "ecs":
        return {}
    tier = "model" if role == "requests" else "web"
    out: dict[str, Any] = {"ecs": {"version": ECS_VERSION},
                           "host": {"name": f"{tier}-{zlib.crc32(raw) % 3 + 1:02d}"}}
    if role == "feedback":
        out["message"] = f"{flat.get('type', 'event')} on request {flat.get(key) or 'unknown'}"
    else:
        out["event"] = {"dataset": "model.inference"}
    return out


def _shape_value(fmt: str, role: str, flat: dict[str, Any], config: "PipelineConfig",
                 raw: bytes) -> dict[str, Any]:
    """The flat event ``flat`` written in shape ``fmt`` (absent and null fields left out)."""
    paths = _role_paths(fmt, role, config)
    out: dict[str, Any] = {}
    ts = flat.get("ts")
    if ts is not None:
        try:
            ts = _TS_FORMAT[fmt](parse_event_time(ts))
        except EventError:
            pass  # malformed (no zone): stays as written, so it stays malformed
        _put(out, paths["ts"], ts)
    out.update(_head(fmt, role, flat))
    for name, v in flat.items():
        if name != "ts" and v is not None:
            _put(out, paths.get(name) or f"{_EXTRA_PREFIX[fmt]}.{_escape(name)}", v)
    out.update(_tail(fmt, role, flat, config.join.key, raw))
    return out


def reshape_event(ev: SimEvent, config: "PipelineConfig", fmt: str) -> SimEvent:
    """One simulated event in shape ``fmt``: same role, times and kind; new value and key.

    ``dlabel`` returns ``ev`` itself. Other shapes are unkeyed. A value that is not a
    JSON object (broken JSON, garbage bytes) keeps its bytes.
    """
    _check(fmt)
    if fmt == "dlabel":
        return ev
    try:
        flat = json.loads(ev.value)
    except (ValueError, UnicodeDecodeError):
        flat = None
    if type(flat) is not dict:
        return dataclasses.replace(ev, key=None)
    value = _encode(_shape_value(fmt, ev.role, flat, config, ev.value)).encode()
    return dataclasses.replace(ev, key=None, value=value)


def reshape(events: list[SimEvent], config: "PipelineConfig", fmt: str) -> list[SimEvent]:
    """``events`` (from ``generate``) in shape ``fmt``, in the same (arrival) order.

    ``dlabel`` returns the list unchanged; ``ecs`` and ``fluentd`` rewrite every value
    and drop the keys (see the module docstring).
    """
    _check(fmt)
    if fmt == "dlabel":
        return events
    out: list[SimEvent] = []
    originals: dict[bytes | None, bytes] = {}  # request id -> its reshaped original
    for ev in events:
        shaped = reshape_event(ev, config, fmt)
        if ev.kind == "request":
            originals[ev.key] = shaped.value
        elif ev.kind == "duplicate" and ev.key in originals:
            shaped = dataclasses.replace(shaped, value=originals[ev.key])  # a retry
        out.append(shaped)
    return out
