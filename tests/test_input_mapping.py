"""Behaviour tables for the ``inputs:`` field mapping (/tmp/spec/inputs.md, DESIGN.md
"Inputs as real producers write them") through the production API:
``config_from_dict`` -> ``EventParser.parse_request`` / ``parse_feedback``.

The expected values are written out by hand from the spec.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Optional

import pytest

from schemas.config import config_from_dict
from schemas.errors import ConfigError, EventError
from schemas.events import EventParser
from schemas.pii import PiiHasher

KEY = b"k" * 32
T = 1_795_773_600_000           # 2026-11-27T10:00:00Z
T_S = 1_732_701_600             # 2024-11-27T10:00:00Z in epoch seconds
FEATURES = {"price": "float", "category": "str"}


def cfg_dict(requests: Optional[dict] = None, feedback: Optional[dict] = None, *,
             kind: str = "binary", value: str = "elapsed_seconds", key: str = "request_id",
             features: Optional[dict] = None, **inputs_extra: Any) -> dict:
    label: dict = ({"kind": "binary", "positive": ["click"]} if kind == "binary"
                   else {"kind": "regression", "feedback": ["exit"], "value": value})
    data: dict = {
        "pipeline": "t",
        "topics": {"requests": "t.requests", "feedback": "t.feedback", "labeled": "t.labeled",
                   "dead_letter": "t.dead-letter", "windows": "t.windows"},
        "join": {"key": key, "label_window": "30m", "allowed_lateness": "2m"},
        "label": label,
        "features": features if features is not None else dict(FEATURES),
        "dataset": {"path": "data/t", "window": "1h"},
        "model": {"path": "models/t",
                  "estimator": "sgd_classifier" if kind == "binary" else "sgd_regressor"},
    }
    inputs: dict = dict(inputs_extra)
    if requests is not None:
        inputs["requests"] = requests
    if feedback is not None:
        inputs["feedback"] = feedback
    if inputs:
        data["inputs"] = inputs
    return data


def parser(requests: Optional[dict] = None, feedback: Optional[dict] = None,
           pii: Optional[PiiHasher] = None, **kw: Any) -> EventParser:
    return EventParser(config_from_dict(cfg_dict(requests, feedback, **kw), environ={}), pii)


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def parse(role: str, p: EventParser, data: bytes):
    return p.parse_request(data) if role == "requests" else p.parse_feedback(data)


def error_of(role: str, p: EventParser, data: bytes) -> EventError:
    with pytest.raises(EventError) as e:
        parse(role, p, data)
    return e.value


# ------------------------------------------------------------------ nested paths

REQ_FIELDS = {"request_id": "meta.id", "ts": "@timestamp", "features": "payload.features",
              "prediction": "payload.score", "model_version": "model.version"}
FB_FIELDS = {"request_id": "trace.request_id", "ts": "@timestamp", "type": "event.action",
             "value": "event.duration"}


def test_request_nested_paths():
    p = parser({"fields": REQ_FIELDS})
    r = p.parse_request(raw({
        "meta": {"id": "r1", "other": 1}, "@timestamp": "2026-11-27T10:00:00Z",
        "payload": {"features": {"price": "2.5", "category": "x"}, "score": 0.25},
        "model": {"version": "v3"},
        # the unmapped names are not read once mapped
        "request_id": "wrong", "ts": 0, "features": {"price": 9}, "prediction": 0.9,
        "model_version": "wrong"}))
    assert (r.request_id, r.ts, r.features, r.prediction, r.model_version) == (
        "r1", T, {"price": 2.5, "category": "x"}, 0.25, "v3")


def test_feedback_nested_paths():
    p = parser(feedback={"fields": FB_FIELDS})
    f = p.parse_feedback(raw({"trace": {"request_id": "r1"}, "@timestamp": T + 5,
                              "event": {"action": "click", "duration": 1.5},
                              "request_id": "wrong", "ts": 0, "type": "view", "value": 9}))
    assert (f.request_id, f.ts, f.type, f.value) == ("r1", T + 5, "click", 1.5)


def test_partial_mapping_keeps_other_names():
    p = parser({"fields": {"ts": "time.event"}})
    r = p.parse_request(raw({"request_id": "r1", "time": {"event": T}, "features": {"price": 1},
                             "prediction": 0.5, "model_version": "v1"}))
    assert (r.request_id, r.ts, r.features["price"], r.prediction, r.model_version) == (
        "r1", T, 1.0, 0.5, "v1")


def test_join_key_with_its_own_name():
    p = parser({"fields": {"trace_id": "ctx.trace"}}, {"fields": {"trace_id": "t.id"}},
               key="trace_id")
    assert p.parse_request(raw({"ctx": {"trace": "x1"}, "ts": T})).request_id == "x1"
    assert p.parse_feedback(raw({"t": {"id": "x1"}, "ts": T, "type": "click"})).request_id == "x1"


def test_deep_path():
    p = parser({"fields": {"request_id": "a.b.c.d.e.f.g.h", "ts": "x.y"}})
    r = p.parse_request(raw({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": "deep"}}}}}}},
                             "x": {"y": T}}))
    assert r.request_id == "deep"


# ------------------------------------------------------------- missing required

@pytest.mark.parametrize("role,fields,extra,data,path", [
    # the join key
    ("requests", REQ_FIELDS, {}, {"@timestamp": T}, "meta.id"),
    ("requests", REQ_FIELDS, {}, {"meta": "r1", "@timestamp": T}, "meta.id"),    # not an object
    ("requests", REQ_FIELDS, {}, {"meta": {"id": None}, "@timestamp": T}, "meta.id"),  # null
    ("requests", REQ_FIELDS, {}, {"meta": None, "@timestamp": T}, "meta.id"),
    ("requests", REQ_FIELDS, {}, {"meta": [{"id": "r1"}], "@timestamp": T}, "meta.id"),
    ("requests", REQ_FIELDS, {}, {"meta.id": "r1", "@timestamp": T}, "meta.id"),  # not a.b
    ("feedback", FB_FIELDS, {}, {"@timestamp": T, "event": {"action": "click"}},
     "trace.request_id"),
    # ts
    ("requests", REQ_FIELDS, {}, {"meta": {"id": "r1"}, "ts": T}, "@timestamp"),
    ("requests", REQ_FIELDS, {}, {"meta": {"id": "r1"}, "@timestamp": None}, "@timestamp"),
    ("requests", {"ts": "a\\.b.c"}, {}, {"request_id": "r1", "a.b": {"d": T}}, "a\\.b.c"),
    ("requests", {"ts": "a\\.b.c"}, {}, {"request_id": "r1", "a": {"b": {"c": T}}}, "a\\.b.c"),
    ("feedback", FB_FIELDS, {}, {"trace": {"request_id": "r1"}, "event": {"action": "click"}},
     "@timestamp"),
    # feedback type
    ("feedback", FB_FIELDS, {}, {"trace": {"request_id": "r1"}, "@timestamp": T},
     "event.action"),
    ("feedback", FB_FIELDS, {}, {"trace": {"request_id": "r1"}, "@timestamp": T,
                                 "event": ["click"]}, "event.action"),
    ("feedback", FB_FIELDS, {}, {"trace": {"request_id": "r1"}, "@timestamp": T,
                                 "event": {"action": None}}, "event.action"),
    # the regression outcome of a label.feedback type
    ("feedback", {"secs": "m.secs"}, {"kind": "regression", "value": "field:secs"},
     {"request_id": "r1", "ts": T, "type": "exit", "secs": 3}, "m.secs"),
    ("feedback", {"secs": "m.secs"}, {"kind": "regression", "value": "field:secs"},
     {"request_id": "r1", "ts": T, "type": "exit", "m": {"secs": None}}, "m.secs"),
])
def test_missing_required_path(role, fields, extra, data, path):
    p = parser(**{role: {"fields": fields}}, **extra)
    e = error_of(role, p, raw(data))
    assert e.reason == "missing_field"
    assert path in e.detail, e.detail


@pytest.mark.parametrize("role,data,name", [
    ("requests", {"request_id": "r1"}, "ts"),
    ("requests", {"ts": T}, "request_id"),
    ("feedback", {"request_id": "r1", "ts": T}, "type"),
])
def test_missing_unmapped_field_named_as_today(role, data, name):
    # inputs present for the other role only: this role is unmapped
    other = "feedback" if role == "requests" else "requests"
    p = parser(**{other: {"fields": {"ts": "x.y"}}})
    e = error_of(role, p, raw(data))
    assert e.reason == "missing_field" and f"{name} is missing" in e.detail, e.detail


def test_outcome_path_only_required_for_label_feedback_types():
    p = parser(feedback={"fields": {"secs": "m.secs"}}, kind="regression", value="field:secs")
    f = p.parse_feedback(raw({"request_id": "r1", "ts": T, "type": "view"}))
    assert f.type == "view"
    f = p.parse_feedback(raw({"request_id": "r1", "ts": T, "type": "exit", "m": {"secs": 4}}))
    assert f.fields == {"secs": 4.0}


# ------------------------------------------------------------- absent optional

@pytest.mark.parametrize("data", [
    {"meta": {"id": "r1"}, "@timestamp": T},
    {"meta": {"id": "r1"}, "@timestamp": T, "payload": None, "model": None},
    {"meta": {"id": "r1"}, "@timestamp": T, "payload": {}, "model": {}},
    {"meta": {"id": "r1"}, "@timestamp": T, "payload": "x", "model": [1]},
    {"meta": {"id": "r1"}, "@timestamp": T, "model": {"version": None},
     "payload": {"features": None, "score": None}},
    {"meta": {"id": "r1"}, "@timestamp": T, "features": {"price": 1}, "prediction": 0.5,
     "model_version": "v1"},                       # unmapped names are not a fallback
])
def test_missing_optional_request_paths_are_none(data):
    r = parser({"fields": REQ_FIELDS}).parse_request(raw(data))
    assert (r.request_id, r.ts) == ("r1", T)
    assert r.features == {"price": None, "category": None}
    assert r.prediction is None and r.model_version is None


@pytest.mark.parametrize("event", [{"action": "click"}, {"action": "click", "duration": None}])
def test_missing_optional_feedback_value_is_none(event):
    f = parser(feedback={"fields": FB_FIELDS}).parse_feedback(
        raw({"trace": {"request_id": "r1"}, "@timestamp": T, "event": event}))
    assert f.value is None and f.type == "click"


@pytest.mark.parametrize("role,fields,data,path", [
    ("requests", REQ_FIELDS, {"meta": {"id": "r1"}, "@timestamp": T,
                              "payload": {"score": "high"}}, "payload.score"),
    ("requests", REQ_FIELDS, {"meta": {"id": "r1"}, "@timestamp": T,
                              "model": {"version": 3}}, "model.version"),
    ("requests", REQ_FIELDS, {"meta": {"id": 7}, "@timestamp": T}, "meta.id"),
    ("requests", REQ_FIELDS, {"meta": {"id": "r1"}, "@timestamp": T,
                              "payload": {"features": [1, 2]}}, "payload.features"),
    ("feedback", FB_FIELDS, {"trace": {"request_id": "r1"}, "@timestamp": T,
                             "event": {"action": 5}}, "event.action"),
    ("feedback", FB_FIELDS, {"trace": {"request_id": "r1"}, "@timestamp": T,
                             "event": {"action": "click", "duration": "long"}},
     "event.duration"),
])
def test_type_checks_apply_at_the_path(role, fields, data, path):
    e = error_of(role, parser(**{role: {"fields": fields}}), raw(data))
    assert e.reason == "bad_type"
    assert path in e.detail, e.detail


# ---------------------------------------------------------------------- escapes

@pytest.mark.parametrize("path,data", [
    ("a\\.b", {"a.b": "r1"}),
    ("labels.app\\.kubernetes\\.io/name", {"labels": {"app.kubernetes.io/name": "r1"}}),
    ("x\\.y\\.z", {"x.y.z": "r1", "x": {"y": {"z": "no"}}}),
    ("a\\\\b", {"a\\b": "r1"}),
    ("a\\\\.b", {"a\\": {"b": "r1"}}),
    ("a\\\\\\.b", {"a\\.b": "r1"}),
    ("\\.", {".": "r1"}),
    ("@timestamp.id", {"@timestamp": {"id": "r1"}}),
    ("ключ.ü é", {"ключ": {"ü é": "r1"}}),
])
def test_escaped_segments(path, data):
    p = parser({"fields": {"request_id": path}})
    assert p.parse_request(raw({"ts": T, **data})).request_id == "r1"


@pytest.mark.parametrize("path,data", [
    ("a.b", {"a.b": "r1"}),            # an unescaped dot walks into objects
    ("a\\.b", {"a": {"b": "r1"}}),     # an escaped one does not
    ("a\\\\b", {"ab": "r1"}),
    ("a\\\\b", {"a\\\\b": "r1"}),       # the key with two backslashes is another key
])
def test_escapes_are_not_ignored(path, data):
    e = error_of("requests", parser({"fields": {"request_id": path}}), raw({"ts": T, **data}))
    assert e.reason == "missing_field" and path in e.detail, e.detail


# ------------------------------------------------------------------ event times

@pytest.mark.parametrize("unit,text,ms", [
    (None, "1795773600000", T), (None, "-1", -1), (None, "1795773600000.0", T),
    ("ms", "1795773600123", T + 123), ("ms", "0", 0), ("ms", "-1", -1),
    ("ms", "1.795773600123e12", T + 123),
    ("s", str(T_S), T_S * 1000), ("s", "1732701600.123", T_S * 1000 + 123),
    ("s", "1732701600.1239", T_S * 1000 + 123), ("s", "1732701600.5", T_S * 1000 + 500),
    ("s", "1732701600.999999", T_S * 1000 + 999), ("s", "1732701600.0", T_S * 1000),
    # floor on the decimal as written, not on the nearest double
    ("s", "1732701600.123999999", T_S * 1000 + 123), ("s", "1732701600.9999999", T_S * 1000 + 999),
    ("s", "1795000000.258999999", 1_795_000_000_258), ("s", "0.0009999999999999999999", 0),
    ("s", "-0.0009999999999999999999", -1),
    ("s", "1.7327016001e9", T_S * 1000 + 100), ("s", "-1.5", -1500), ("s", "-1", -1000),
    ("s", "-0.0001", -1), ("s", "0.0009", 0), ("s", "0", 0),
    ("us", "1732701600123456", T_S * 1000 + 123), ("us", "1732701600123999", T_S * 1000 + 123),
    ("us", "1732701600000000", T_S * 1000), ("us", "-1", -1), ("us", "-1000", -1),
    ("us", "-1001", -2), ("us", "999", 0), ("us", "1732701600123000.0", T_S * 1000 + 123),
])
def test_numeric_times_by_unit(unit, text, ms):
    spec: dict = {"fields": {"ts": "@timestamp"}}
    if unit:
        spec["ts_unit"] = unit
    for role, p in (("requests", parser(spec)), ("feedback", parser(feedback=spec))):
        data = b'{"request_id": "r1", "type": "click", "@timestamp": %s}' % text.encode()
        assert parse(role, p, data).ts == ms, (role, text)


@pytest.mark.parametrize("text,ms", [
    ("2026-11-27T10:00:00Z", T), ("2026-11-27T10:00:00z", T),
    ("2026-11-27T10:00:00.5Z", T + 500), ("2026-11-27T10:00:00.123Z", T + 123),
    ("2026-11-27T10:00:00.123456Z", T + 123), ("2026-11-27T10:00:00.123456789Z", T + 123),
    ("2026-11-27T10:00:00.999999999Z", T + 999),
    ("2026-11-27T11:00:00+01:00", T), ("2026-11-27T11:00:00.250+01:00", T + 250),
    ("2026-11-27T04:30:00-05:30", T), ("2026-11-27T04:30:00.123456789-05:30", T + 123),
    ("2026-11-27T10:00:00+00:00", T), ("1969-12-31T23:59:59.999999999Z", -1),
])
@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_iso_times_ignore_ts_unit(text, ms, unit):
    p = parser({"fields": {"ts": "@timestamp"}, "ts_unit": unit},
               {"fields": {"ts": "event.at"}, "ts_unit": unit})
    assert p.parse_request(raw({"request_id": "r1", "@timestamp": text})).ts == ms
    assert p.parse_feedback(raw({"request_id": "r1", "type": "click",
                                 "event": {"at": text}})).ts == ms


@pytest.mark.parametrize("unit,text", [
    (u, t) for u in ("s", "ms", "us") for t in (
        '"2026-11-27T10:00:00"', '"2026-11-27T10:00:00.123"', '"2026-11-27T10:00:00.123456789"',
        '"2026-11-27"', '"1732701600"', "true", "false", "NaN", "Infinity", "-Infinity",
        '"yesterday"', "[1]", '{"s": 1}')
] + [
    ("ms", "1.5"), ("ms", "1795773600000.25"), ("us", "1.5"), ("us", "1732701600123456.5"),
    ("s", "253402300800"), ("s", "-62135596801"), ("s", "1e400"),
    ("ms", "253402300800000"), ("us", "253402300800000000"),
])
def test_bad_times(unit, text):
    p = parser({"fields": {"ts": "@timestamp"}, "ts_unit": unit})
    e = error_of("requests", p, b'{"request_id": "r1", "@timestamp": %s}' % text.encode())
    assert e.reason == "bad_timestamp", (e.reason, e.detail)


def test_ts_unit_applies_without_fields():
    p = parser({"ts_unit": "s"}, {"ts_unit": "us"})
    assert p.parse_request(raw({"request_id": "r1", "ts": T_S})).ts == T_S * 1000
    assert p.parse_feedback(raw({"request_id": "r1", "ts": T_S * 1_000_000,
                                 "type": "click"})).ts == T_S * 1000


def test_units_are_per_role():
    p = parser({"ts_unit": "s"})
    assert p.parse_request(raw({"request_id": "r1", "ts": T_S})).ts == T_S * 1000
    assert p.parse_feedback(raw({"request_id": "r1", "ts": T, "type": "click"})).ts == T


# ---------------------------------------------------------------- config errors

BAD_PATHS = ["", ".", "a..b", ".a", "a.", "a\\x", "a\\", "\\", "a\\.b\\", "a.\\n", "a\\ b", 5]


@pytest.mark.parametrize("role,key", [("requests", "request_id"), ("requests", "ts"),
                                      ("requests", "features"), ("feedback", "type"),
                                      ("feedback", "value")])
@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_fail_at_config_load(role, key, path):
    with pytest.raises(ConfigError) as e:
        config_from_dict(cfg_dict(**{role: {"fields": {key: path}}}), environ={})
    msg = str(e.value)
    assert f"inputs.{role}.fields.{key}" in msg, msg
    shown = ["''", '""'] if path == "" else [repr(path), str(path)]
    assert any(v in msg for v in shown), msg


@pytest.mark.parametrize("role,key,extra", [
    ("requests", "type", {}), ("requests", "value", {}), ("requests", "label", {}),
    ("requests", "payload", {}), ("feedback", "features", {}),
    ("feedback", "prediction", {}), ("feedback", "model_version", {}),
    ("feedback", "secs", {}),                                        # binary: no outcome field
    ("requests", "request_id", {"key": "trace_id"}),                 # not the join key's name
    ("feedback", "request_id", {"key": "trace_id"}),
    ("feedback", "minutes", {"kind": "regression", "value": "field:secs"}),
])
def test_unknown_field_keys_fail_at_config_load(role, key, extra):
    with pytest.raises(ConfigError) as e:
        config_from_dict(cfg_dict(**{role: {"fields": {key: "x.y"}}}, **extra), environ={})
    msg = str(e.value)
    assert f"inputs.{role}.fields.{key}" in msg or (f"inputs.{role}.fields" in msg
                                                    and key in msg), msg


@pytest.mark.parametrize("role", ["requests", "feedback"])
@pytest.mark.parametrize("unit", ["ns", "sec", "seconds", "MS", "", 1000, True])
def test_bad_ts_unit_fails_at_config_load(role, unit):
    with pytest.raises(ConfigError) as e:
        config_from_dict(cfg_dict(**{role: {"ts_unit": unit}}), environ={})
    msg = str(e.value)
    assert f"inputs.{role}.ts_unit" in msg and repr(unit) in msg, msg


@pytest.mark.parametrize("role,fields,extra", [
    ("requests", {"request_id": "a", "ts": "b", "features": "c", "prediction": "d",
                  "model_version": "e"}, {}),
    ("feedback", {"request_id": "a", "ts": "b", "type": "c", "value": "d"}, {}),
    ("feedback", {"secs": "m\\.s"}, {"kind": "regression", "value": "field:secs"}),
    ("feedback", {"value": "m.v"}, {"kind": "regression", "value": "field:value"}),
    ("requests", {"trace_id": "t.id"}, {"key": "trace_id"}),
])
@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_good_inputs_load(role, fields, extra, unit):
    config_from_dict(cfg_dict(**{role: {"fields": fields, "ts_unit": unit}}, **extra),
                     environ={})


def test_empty_and_absent_inputs_load():
    for inputs in ({}, {"requests": {}}, {"feedback": {"fields": {}}},
                   {"copartitioned": False}):
        data = cfg_dict()
        data["inputs"] = inputs
        config_from_dict(data, environ={})


# ---------------------------------------------------------- mapping before PII

def test_mapping_applies_before_pii_hashing():
    hasher = PiiHasher(KEY)
    features = {"email": {"type": "str", "pii": "hash"},
                "passport": {"type": "str", "pii": "drop"}, "n": "int"}
    p = parser({"fields": {"features": "ctx.user\\.data.features"}}, pii=hasher,
               features=features)
    r = p.parse_request(raw({
        "request_id": "r1", "ts": T,
        "features": {"email": "wrong@example.com", "n": 99},
        "ctx": {"user.data": {"features": {"email": "ann@example.com",
                                           "passport": "P1", "n": "7"}}}}))
    assert r.features == {"email": hasher.hash("ann@example.com"), "n": 7}
    assert "ann@example.com" not in repr(r) and "P1" not in repr(r)
    # absent at the path: null, not hashed
    r = p.parse_request(raw({"request_id": "r2", "ts": T, "features": {"email": "x@y"}}))
    assert r.features == {"email": None, "n": None}


# ----------------------------------------------------- dead letters keep the original

def test_dead_letter_keeps_original_bytes_and_position():
    from tests.join_cases import drive
    data = cfg_dict({"fields": {"request_id": "meta.id", "ts": "@timestamp"}})
    cfg = config_from_dict(data, environ={})
    ok = raw({"meta": {"id": "a"}, "@timestamp": T})
    bad = raw({"meta": {"idx": "b"}, "@timestamp": T})
    run = drive(cfg, [("requests", ok), ("requests", bad)])
    dead = [d for d in run.dead if d["reason"] == "missing_field"]
    assert len(dead) == 1, run.dead
    d = dead[0]
    assert "meta.id" in d["detail"]
    assert d["topic"] == "t.requests" and d["partition"] == 0 and d["offset"] == 1
    original = d["original"]
    assert (original if isinstance(original, bytes) else base64.b64decode(original)) == bad
