"""Request and feedback events: parsing raw Kafka values into typed, validated objects.

This is on the hot path: one ``json.loads`` per event, no regexes, and one precomputed
coercer per declared feature. Every invalid event raises ``EventError`` with a reason
code of DESIGN.md; PII values are never quoted in error details.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import orjson

from schemas.config import PipelineConfig, RoleInputs
from schemas.errors import ConfigError, EventError, short_repr
from schemas.event_time import MAX_TS_MS, MIN_TS_MS, parse_event_time
from schemas.feature_values import COERCERS, NotCoercible, hashing
from schemas.pii import PII_KEY_ENV, PiiHasher

__all__ = ["Request", "Feedback", "EventParser", "parse_event_time", "MIN_TS_MS", "MAX_TS_MS",
           "MAX_EVENT_BYTES", "MAX_STRING_CHARS", "load_event_object"]

_MISSING = object()


@dataclass(slots=True)
class Request:
    """A model-server request: its key, event time (epoch ms) and coerced features."""
    request_id: str
    ts: int
    features: dict[str, Any]
    prediction: float | None
    model_version: str | None


@dataclass(slots=True)
class Feedback:
    """A feedback event; ``fields`` holds its other top-level keys."""
    request_id: str
    ts: int
    type: str
    value: float | None
    fields: dict[str, Any]


def _exact_number(raw: bytes, path: tuple[str, ...], parsed: float) -> Decimal | float:
    """The number at ``path`` exactly as the JSON wrote it (a float has ~16 digits: an
    epoch in seconds with a nanosecond fraction does not fit one)."""
    if not math.isfinite(parsed):
        return parsed
    try:
        value = _lookup(json.loads(raw, parse_float=Decimal), path)
    except (ValueError, RecursionError):
        return parsed
    return value if type(value) is Decimal else parsed


def _number(v: Any, field: str) -> float | None:
    """A JSON number (or null) as a finite float; anything else is bad_type."""
    kind = type(v)
    if v is None:
        return None
    if kind is float and v - v == 0.0:
        return v
    if kind is int:
        try:
            return float(v)
        except OverflowError:
            pass
    raise EventError("bad_type", f"{field}: {short_repr(v)} is not a finite number or null")


def _maybe_huge_int(obj: Any) -> bool:
    """Whether orjson may have read an integer beyond 64 bits (it makes those floats).

    A float that large is rare in real events; then ``json`` parses the record again.
    """
    for v in (obj.values() if type(obj) is dict else obj):
        t = type(v)
        if t is float:
            if not -9.2e18 < v < 9.2e18:
                return True
        elif (t is dict or t is list) and _maybe_huge_int(v):
            return True
    return False


#: Bounds that keep one bad event from costing unbounded memory: a message larger than
#: MAX_EVENT_BYTES, or a string (id, feature, type, version) longer than MAX_STRING_CHARS,
#: is dead-lettered as ``too_large`` before anything of it enters the join state.
MAX_EVENT_BYTES = 1 << 20
MAX_STRING_CHARS = 16_384


def _check_text(obj: Any) -> None:
    """Strings must be valid Unicode text (json accepts lone surrogates, UTF-8 cannot)."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise EventError("bad_type", "a string holds a lone surrogate (\\ud800-\\udfff), "
                                     "which is not valid Unicode text") from None


def _too_long(field: str, v: str) -> EventError:
    return EventError("too_large", f"{field}: a string of {len(v)} characters is over the "
                                   f"{MAX_STRING_CHARS} limit")


def load_event_object(raw: bytes) -> dict[str, Any]:
    """The JSON object of a raw event value, as ``json`` reads it (orjson where the two
    agree); EventError (``too_large`` or ``malformed_json``) when it is not one."""
    if raw is None:
        raise EventError("malformed_json", "empty value (tombstone); expected a JSON object")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventError("too_large", f"{len(raw)} bytes is over the {MAX_EVENT_BYTES} byte "
                                      "limit of one event")
    obj = None
    # Fast path: orjson. Where it would differ from json (NaN, 1e400, lone surrogates:
    # it raises; integers beyond 64 bits: it makes floats) json parses the record again.
    if type(raw) is bytes:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        else:
            try:
                if (type(obj) is dict or type(obj) is list) and _maybe_huge_int(obj):
                    obj = None
            except RecursionError:  # deeper than Python's stack: json decides
                obj = None
    if obj is None:
        try:
            text = raw if type(raw) is str else str(raw, "utf-8")
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise EventError("malformed_json", str(e)[:200]) from None
        try:
            _check_text(obj)  # orjson refused it: perhaps for a lone surrogate
        except RecursionError:
            raise EventError("malformed_json", "nested too deeply") from None
    if type(obj) is not dict:
        raise EventError("malformed_json", f"{type(obj).__name__} is not a JSON object")
    return obj


def _load_head(raw: bytes) -> dict[str, Any]:
    """``load_event_object`` for readers of the key and the time only: orjson's object as it is.

    ``load_event_object`` also scans the whole object for integers beyond 64 bits (orjson reads them
    as floats) and parses it again with json when it finds one. A valid key or time is
    never such a float, so a reader of those two goes back to ``load_event_object`` only when one
    of them is invalid (``EventParser._route``), to say why exactly as the parse does.
    """
    if type(raw) is bytes and len(raw) <= MAX_EVENT_BYTES:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(obj) is dict:
                return obj
    return load_event_object(raw)


def _lookup(obj: Any, segments: tuple[str, ...]) -> Any:
    """The value at a nested path, or None when any step is absent or not an object."""
    for name in segments:
        if type(obj) is not dict:
            return None
        obj = obj.get(name)
    return obj


def _getters(role: RoleInputs, names: tuple[str, ...]
             ) -> dict[str, tuple[str, Callable[[dict], Any]]]:
    """Per event field: (the path as the config wrote it, for errors; its getter)."""
    out = {}
    for name in names:
        path = role.path(name)
        segments = path.segments
        if len(segments) == 1:
            out[name] = (path.text, _top_level(segments[0]))
        else:
            out[name] = (path.text, lambda obj, segments=segments: _lookup(obj, segments))
    return out


def _top_level(name: str) -> Callable[[dict], Any]:
    def get(obj: dict) -> Any:
        return obj.get(name)
    return get


class EventParser:
    """Parses raw request and feedback values for one pipeline config.

    The config's ``inputs:`` mapping is applied here, before coercion and PII hashing:
    each field is read at its mapped path, and an absent required one is
    ``missing_field`` naming the path as the config wrote it.
    """

    def __init__(self, config: PipelineConfig, pii: PiiHasher | None) -> None:
        hashed = [f.name for f in config.features if f.pii == "hash"]
        if hashed and pii is None:
            raise ConfigError(f"features {', '.join(hashed)} have pii: hash but no PiiHasher "
                              f"was given; set {PII_KEY_ENV} and pass PiiHasher(key)")
        self.undeclared_features = 0
        key = config.join.key
        label = config.label
        self._outcome = label.value_field if label.kind == "regression" else None
        inputs = config.inputs
        self._req = _getters(inputs.requests, (key, "ts", "features", "prediction",
                                               "model_version"))
        self._fb = _getters(inputs.feedback, (key, "ts", "type", "value")
                            + ((self._outcome,) if self._outcome else ()))
        self._req_key, self._fb_key = self._req.pop(key), self._fb.pop(key)
        self._req_unit, self._fb_unit = inputs.requests.ts_unit, inputs.feedback.ts_unit
        self._req_ts_path = inputs.requests.path("ts").segments
        self._fb_ts_path = inputs.feedback.path("ts").segments
        self._features = tuple(
            (f.name, hashing(pii) if f.pii == "hash" and pii else COERCERS[f.type],
             f.pii is not None)
            for f in config.kept_features)
        self._dropped = tuple(f.name for f in config.features if f.pii == "drop")
        self._outcome_types = frozenset(label.feedback)

    @staticmethod
    def _head(obj: dict[str, Any], key: tuple, ts: tuple, unit: str, raw: bytes,
              ts_path: tuple[str, ...]) -> tuple[str, int]:
        name, get = key
        rid = get(obj)
        if rid is None:
            raise EventError("missing_field", f"{name} is missing")
        if type(rid) is not str or not rid:
            raise EventError("bad_type", f"{name}: {short_repr(rid)} is not a non-empty string")
        if len(rid) > MAX_STRING_CHARS:
            raise _too_long(name, rid)
        name, get = ts
        value = get(obj)
        if value is None:
            raise EventError("missing_field", f"{name} is missing")
        if type(value) is float and unit == "s":
            value = _exact_number(raw, ts_path, value)
        return rid, parse_event_time(value, name, unit)

    def route_request(self, raw: bytes) -> tuple[str, int]:
        """The join key and event time of a request value, for the repartition hop.

        Only what routing and the hop's watermark markers need: the key and the time
        are checked exactly as ``parse_request`` checks them (same reasons, same details),
        the rest of the event is not looked at (the join validates it). Raises
        ``EventError`` when the value has no usable key or time.
        """
        return self._route(raw, self._req_key, self._req["ts"], self._req_unit,
                           self._req_ts_path)

    def route_feedback(self, raw: bytes) -> tuple[str, int]:
        """The join key and event time of a feedback value (see ``route_request``)."""
        return self._route(raw, self._fb_key, self._fb["ts"], self._fb_unit, self._fb_ts_path)

    def _route(self, raw: bytes, key: tuple, ts: tuple, unit: str,
               ts_path: tuple[str, ...]) -> tuple[str, int]:
        try:
            return self._head(_load_head(raw), key, ts, unit, raw, ts_path)
        except EventError:
            # as the full parse says it: json decides where orjson may differ (an
            # integer beyond 64 bits read as a float)
            return self._head(load_event_object(raw), key, ts, unit, raw, ts_path)

    def parse_request(self, raw: bytes) -> Request:
        """Parse a request value; raises ``EventError`` when it is invalid."""
        obj = load_event_object(raw)
        fields = self._req
        rid, ts = self._head(obj, self._req_key, fields["ts"], self._req_unit, raw,
                             self._req_ts_path)
        where, get = fields["features"]
        feats = get(obj)
        if feats is None:
            feats = {}
        elif type(feats) is not dict:
            raise EventError("bad_type", f"{where}: {short_repr(feats)} is not a JSON object")
        out: dict[str, Any] = {}
        present = 0
        for name, coerce, secret in self._features:
            v = feats.get(name, _MISSING)
            if v is _MISSING:
                out[name] = None
                continue
            present += 1
            if type(v) is str and len(v) > MAX_STRING_CHARS:
                raise _too_long(f"{where}.{name}", v)
            try:
                out[name] = None if v is None else coerce(v)
            except NotCoercible as e:
                shown = f"a {type(v).__name__} value" if secret else short_repr(v)
                raise EventError("bad_type", f"{where}.{name}: {shown} is not {e.args[0]}"
                                 ) from None
        where, get = fields["prediction"]
        prediction = _number(get(obj), where)
        where, get = fields["model_version"]
        version = get(obj)
        if version is not None and type(version) is not str:
            raise EventError("bad_type", f"{where}: {short_repr(version)} is not a string "
                                         "or null")
        if version is not None and len(version) > MAX_STRING_CHARS:
            raise _too_long(where, version)
        if len(feats) > present:
            present += sum(1 for name in self._dropped if name in feats)
            self.undeclared_features += len(feats) - present
        return Request(rid, ts, out, prediction, version)

    def parse_feedback(self, raw: bytes) -> Feedback:
        """Parse a feedback value; raises ``EventError`` when it is invalid.

        For a regression label ``field:<name>``, feedback of a ``label.feedback`` type must
        carry that field as a finite number; it is stored as a float in ``fields``.
        """
        obj = load_event_object(raw)
        fields = self._fb
        rid, ts = self._head(obj, self._fb_key, fields["ts"], self._fb_unit, raw,
                             self._fb_ts_path)
        where, get = fields["type"]
        ftype = get(obj)
        if ftype is None:
            raise EventError("missing_field", f"{where} is missing")
        if type(ftype) is not str or not ftype:
            raise EventError("bad_type", f"{where}: {short_repr(ftype)} is not a non-empty string")
        if len(ftype) > MAX_STRING_CHARS:
            raise _too_long(where, ftype)
        where, get = fields["value"]
        value = _number(get(obj), where)
        out: dict[str, Any] = {}  # only the label's value field is kept (bounded state)
        name = self._outcome
        if name is not None and ftype in self._outcome_types:
            where, get = fields[name]
            outcome = get(obj)
            if outcome is None:
                raise EventError("missing_field", f"{where} (the label value of {ftype!r} "
                                                  "feedback) is missing")
            out[name] = _number(outcome, where)
        return Feedback(rid, ts, ftype, value, out)
