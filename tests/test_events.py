"""Behaviour tables for schemas.events and schemas.records."""
from __future__ import annotations

import base64
import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from schemas.config import PipelineConfig, config_from_dict, load_config
from schemas.errors import ConfigError, EventError
from schemas.events import (
    MAX_TS_MS, MIN_TS_MS, EventParser, Feedback, Request, parse_event_time)
from schemas.pii import PiiHasher
from schemas.records import (
    LABEL_QUALITY_COLUMNS, LABELED_BASE_COLUMNS, DeadLetter, decode_dead_letter, encode_labeled,
    labeled_example)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KEY = b"test-key-0123456789abcdef"


def make_config(features: dict, **label: object) -> PipelineConfig:
    data = {
        "pipeline": "t",
        "topics": {"requests": "r", "feedback": "f", "labeled": "l", "dead_letter": "d",
                   "windows": "w"},
        "join": {"label_window": "30m"},
        "label": label or {"kind": "binary", "positive": ["click"]},
        "features": features,
        "dataset": {"path": "data/t", "window": "1h"},
        "model": {"path": "models/t"},
    }
    return config_from_dict(data, environ={})


def request(features: object = None, **top: object) -> bytes:
    obj: dict = {"request_id": "r1", "ts": 1_000}
    if features is not None:
        obj["features"] = features
    obj.update(top)
    return json.dumps(obj).encode()


@pytest.fixture(scope="module")
def ctr() -> PipelineConfig:
    return load_config(EXAMPLES / "ctr.yaml", environ={})


@pytest.fixture(scope="module")
def airport() -> PipelineConfig:
    return load_config(EXAMPLES / "airport.yaml", environ={})


# --- event time -----------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    (0, 0),
    (1_700_000_000_123, 1_700_000_000_123),
    (-1, -1),
    (1_700_000_000_000.0, 1_700_000_000_000),
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T00:00:00z", 0),
    ("2026-11-27T10:00:00Z", 1_795_773_600_000),
    ("2026-11-27T11:00:00+01:00", 1_795_773_600_000),
    ("2026-11-27T05:30:00-04:30", 1_795_773_600_000),
    ("2026-11-27T10:00:00.123Z", 1_795_773_600_123),
    ("2026-11-27T10:00:00.123999+00:00", 1_795_773_600_123),  # sub-ms truncated
    ("1969-12-31T23:59:59.999500Z", -1),  # floored, not rounded towards zero
    ("0001-01-01T00:00:00Z", MIN_TS_MS),
    ("9999-12-31T23:59:59.999Z", MAX_TS_MS),
])
def test_parse_event_time(value, expected):
    assert parse_event_time(value) == expected


@pytest.mark.parametrize("value", [
    "2026-11-27T10:00:00",            # no zone
    "2026-11-27",                     # date only, no zone
    "2026-11-27 10:00",               # no zone
    "yesterday", "", "Z", "1700000000000", "2026-13-01T00:00:00Z",
    True, False, None, 1.5, float("nan"), float("inf"), [1], {"ms": 1},
    MAX_TS_MS + 1, MIN_TS_MS - 1, "0001-01-01T00:00:00+01:00",
])
def test_parse_event_time_rejects(value):
    with pytest.raises(EventError) as e:
        parse_event_time(value, "ts")
    assert e.value.reason == "bad_timestamp"
    assert e.value.detail.startswith("ts: ")


def test_zone_less_time_says_add_zone():
    with pytest.raises(EventError, match="has no zone; add Z or an offset"):
        parse_event_time("2026-11-27T10:00:00")


@given(ms=st.integers(min_value=MIN_TS_MS + 86_400_000, max_value=MAX_TS_MS - 86_400_000),
       offset_minutes=st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1))
def test_event_time_round_trips_through_iso(ms, offset_minutes):
    tz = timezone(timedelta(minutes=offset_minutes))
    dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    text = dt.astimezone(tz).isoformat(timespec="milliseconds")
    assert parse_event_time(text) == ms
    assert parse_event_time(ms) == ms


# --- feature coercion -----------------------------------------------------------------

FLOAT_OK = [(0, 0.0), ("0", 0.0), ("0.0", 0.0), (0.0, 0.0), (2.5, 2.5), ("2.5", 2.5),
            (" 3 ", 3.0), (7, 7.0), ("1e3", 1000.0), (-1, -1.0), ("", None), (None, None)]
INT_OK = [(3, 3), ("3", 3), (3.0, 3), ("3.0", 3), ("-4", -4), (0, 0), ("0", 0),
          ("1e3", 1000), (2**63 - 1, 2**63 - 1), ("", None), (None, None)]
BOOL_OK = [(True, True), (False, False), ("true", True), ("false", False), ("TRUE", True),
           (1, True), (0, False), ("1", True), ("0", False), ("", None), (None, None)]
STR_OK = [("a", "a"), (" a ", " a "), (3, "3"), (2.5, "2.5"), ("", None), (None, None)]


@pytest.mark.parametrize("ftype, raw, expected",
                         [("float", r, e) for r, e in FLOAT_OK]
                         + [("int", r, e) for r, e in INT_OK]
                         + [("bool", r, e) for r, e in BOOL_OK]
                         + [("str", r, e) for r, e in STR_OK])
def test_feature_coercion(ftype, raw, expected):
    parser = EventParser(make_config({"x": ftype}), None)
    req = parser.parse_request(request({"x": raw}))
    assert req.features == {"x": expected}
    assert type(req.features["x"]) is type(expected)


FLOAT_BAD = [float("nan"), float("inf"), float("-inf"), "nan", "NaN", "inf", "-Infinity",
             "1e999", "abc", "1_000", True, False, [1.0], {"v": 1}, 10**400, " "]
INT_BAD = [3.5, "3.5", "abc", float("nan"), float("inf"), "inf", "nan", True, 2**63, -(2**63) - 1,
           1e300, "1_0", [3], {"v": 3}]
BOOL_BAD = [2, -1, "yes", "no", "maybe", 0.5, 1.0, float("nan"), [True], {"v": True}]
STR_BAD = [True, False, float("nan"), float("inf"), ["a"], {"a": 1}]


@pytest.mark.parametrize("ftype, raw",
                         [("float", r) for r in FLOAT_BAD] + [("int", r) for r in INT_BAD]
                         + [("bool", r) for r in BOOL_BAD] + [("str", r) for r in STR_BAD])
def test_feature_coercion_rejects(ftype, raw):
    parser = EventParser(make_config({"x": ftype}), None)
    with pytest.raises(EventError) as e:
        parser.parse_request(request({"x": raw}))
    assert e.value.reason == "bad_type"
    assert e.value.detail.startswith("features.x: ")


def test_nan_literal_in_json_is_bad_type():
    parser = EventParser(make_config({"x": "float"}), None)
    with pytest.raises(EventError) as e:
        parser.parse_request(b'{"request_id":"r","ts":1,"features":{"x":NaN}}')
    assert e.value.reason == "bad_type"


def test_features_in_config_order_missing_is_none_and_undeclared_counted():
    parser = EventParser(make_config({"b": "int", "a": "float", "c": "str"}), None)
    req = parser.parse_request(request({"a": "1.5", "zz": 1, "yy": 2}))
    assert list(req.features) == ["b", "a", "c"]
    assert req.features == {"b": None, "a": 1.5, "c": None}
    assert parser.undeclared_features == 2
    parser.parse_request(request({"b": 1, "a": 1, "c": "x", "extra": True}))
    assert parser.undeclared_features == 3
    parser.parse_request(request({"b": 1}))
    assert parser.undeclared_features == 3


@pytest.mark.parametrize("features", [None, {}])
def test_missing_features_are_all_none(features):
    parser = EventParser(make_config({"a": "int", "b": "str"}), None)
    raw = request() if features is None else request(features)
    assert parser.parse_request(raw).features == {"a": None, "b": None}


def test_features_null_is_all_none():
    parser = EventParser(make_config({"a": "int"}), None)
    raw = b'{"request_id": "r", "ts": 1, "features": null}'
    assert parser.parse_request(raw).features == {"a": None}


# --- requests -------------------------------------------------------------------------

def test_parse_ctr_request(ctr):
    hasher = PiiHasher(KEY)
    parser = EventParser(ctr, hasher)
    raw = json.dumps({"request_id": "abc", "ts": "2026-11-27T10:00:00Z",
                      "features": {"hour": "10", "category": "shoes", "price": "0",
                                   "user_email": "ann@example.com"},
                      "prediction": 0.25, "model_version": "v3"}).encode()
    req = parser.parse_request(raw)
    assert req == Request("abc", 1_795_773_600_000,
                          {"hour": 10, "category": "shoes", "price": 0.0,
                           "user_email": hasher.hash("ann@example.com")}, 0.25, "v3")
    assert "ann@example.com" not in repr(req)


def test_dropped_pii_never_in_request(airport):
    parser = EventParser(airport, None)
    req = parser.parse_request(request({"checkpoint": "A", "hour": 7, "passengers_in_line": "12",
                                        "fast_track": "false", "passport_id": "X123"}))
    assert req.features == {"checkpoint": "A", "hour": 7, "passengers_in_line": 12,
                            "fast_track": False}
    assert "X123" not in repr(req)
    assert parser.undeclared_features == 0


def test_hashed_pii_none_stays_none_and_bad_value_not_quoted(ctr):
    parser = EventParser(ctr, PiiHasher(KEY))
    assert parser.parse_request(request({"user_email": ""})).features["user_email"] is None
    assert parser.parse_request(request({"user_email": 42})).features["user_email"] == \
        PiiHasher(KEY).hash("42")
    with pytest.raises(EventError) as e:
        parser.parse_request(request({"user_email": ["secret@example.com"]}))
    assert e.value.reason == "bad_type"
    assert "secret" not in str(e.value)


def test_hash_feature_without_hasher_is_config_error(ctr):
    with pytest.raises(ConfigError, match="user_email have pii: hash.*DLABEL_PII_KEY"):
        EventParser(ctr, None)


BAD_REQUESTS = [
    (b"", "malformed_json"),
    (b"{", "malformed_json"),
    (b"\xff\xfe{}", "malformed_json"),
    ('{"request_id": "r", "ts": 1}'.encode("utf-16"), "malformed_json"),
    (b"[1, 2]", "malformed_json"),
    (b"null", "malformed_json"),
    (b'"r1"', "malformed_json"),
    (b"[" * 100_000, "malformed_json"),
    (None, "malformed_json"),
    (b'{"ts": 1}', "missing_field"),
    (b'{"request_id": null, "ts": 1}', "missing_field"),
    (b'{"request_id": "r"}', "missing_field"),
    (b'{"request_id": "r", "ts": null}', "missing_field"),
    (b'{"request_id": 12, "ts": 1}', "bad_type"),
    (b'{"request_id": "", "ts": 1}', "bad_type"),
    (b'{"request_id": ["r"], "ts": 1}', "bad_type"),
    (b'{"request_id": "r", "ts": "2026-11-27T10:00:00"}', "bad_timestamp"),
    (b'{"request_id": "r", "ts": true}', "bad_timestamp"),
    (b'{"request_id": "r", "ts": NaN}', "bad_timestamp"),
    (b'{"request_id": "r", "ts": "soon"}', "bad_timestamp"),
    (b'{"request_id": "r", "ts": 1, "features": [1]}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "features": "a=1"}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "prediction": NaN}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "prediction": Infinity}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "prediction": "0.5"}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "prediction": true}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "model_version": 3}', "bad_type"),
]


@pytest.mark.parametrize("raw, reason", BAD_REQUESTS, ids=[repr(r)[:40] for r, _ in BAD_REQUESTS])
def test_bad_requests(raw, reason):
    parser = EventParser(make_config({"x": "int"}), None)
    with pytest.raises(EventError) as e:
        parser.parse_request(raw)
    assert e.value.reason == reason


@pytest.mark.parametrize("top, prediction, version", [
    ({}, None, None),
    ({"prediction": None, "model_version": None}, None, None),
    ({"prediction": 1}, 1.0, None),
    ({"prediction": 0.75, "model_version": "m-2"}, 0.75, "m-2"),
])
def test_prediction_and_model_version(top, prediction, version):
    req = EventParser(make_config({"x": "int"}), None).parse_request(request({}, **top))
    assert (req.prediction, req.model_version) == (prediction, version)
    assert type(req.prediction) is type(prediction)


def test_accepts_bytearray_memoryview_and_str():
    parser = EventParser(make_config({"x": "int"}), None)
    raw = request({"x": 1})
    for value in (raw, bytearray(raw), memoryview(raw), raw.decode()):
        assert parser.parse_request(value).features == {"x": 1}


def test_custom_join_key():
    data = {"pipeline": "t", "join": {"key": "order_id", "label_window": "1m"}}
    cfg = make_config({"x": "int"})
    cfg = config_from_dict({**_as_dict(cfg), **data}, environ={})
    parser = EventParser(cfg, None)
    assert parser.parse_request(b'{"order_id": "o1", "ts": 5}').request_id == "o1"
    with pytest.raises(EventError) as e:
        parser.parse_request(b'{"request_id": "o1", "ts": 5}')
    assert (e.value.reason, e.value.detail) == ("missing_field", "order_id is missing")
    fb = parser.parse_feedback(b'{"order_id": "o1", "ts": 6, "type": "click", "request_id": 1}')
    # only the label's value field is kept from the extra fields (bounded join state)
    assert fb.request_id == "o1" and fb.fields == {}


def _as_dict(cfg: PipelineConfig) -> dict:
    return {"pipeline": cfg.pipeline,
            "topics": {"requests": "r", "feedback": "f", "labeled": "l", "dead_letter": "d",
                       "windows": "w"},
            "label": {"kind": "binary", "positive": ["click"]},
            "features": {f.name: f.type for f in cfg.features},
            "dataset": {"path": "p", "window": "1h"}, "model": {"path": "m"}}


# --- feedback -------------------------------------------------------------------------

def test_parse_feedback():
    parser = EventParser(make_config({"x": "int"}), None)
    fb = parser.parse_feedback(b'{"request_id": "r1", "ts": "1970-01-01T00:00:01Z", '
                               b'"type": "click", "value": 2, "page": "home", "n": 3}')
    assert fb == Feedback("r1", 1000, "click", 2.0, {})  # extra fields are not kept
    assert type(fb.value) is float


BAD_FEEDBACK = [
    (b'{"request_id": "r", "ts": 1}', "missing_field"),
    (b'{"request_id": "r", "ts": 1, "type": null}', "missing_field"),
    (b'{"ts": 1, "type": "click"}', "missing_field"),
    (b'{"request_id": "r", "type": "click"}', "missing_field"),
    (b'{"request_id": "r", "ts": 1, "type": 5}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "type": ""}', "bad_type"),
    (b'{"request_id": 7, "ts": 1, "type": "click"}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "type": "click", "value": NaN}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "type": "click", "value": "3"}', "bad_type"),
    (b'{"request_id": "r", "ts": 1, "type": "click", "value": false}', "bad_type"),
    (b'{"request_id": "r", "ts": "10:00", "type": "click"}', "bad_timestamp"),
    (b'not json', "malformed_json"),
    (b'["click"]', "malformed_json"),
]


@pytest.mark.parametrize("raw, reason", BAD_FEEDBACK)
def test_bad_feedback(raw, reason):
    parser = EventParser(make_config({"x": "int"}), None)
    with pytest.raises(EventError) as e:
        parser.parse_feedback(raw)
    assert e.value.reason == reason


def regression_parser(value: str) -> EventParser:
    cfg = make_config({"x": "int"}, kind="regression", feedback=["exit"], value=value)
    return EventParser(cfg, None)


@pytest.mark.parametrize("raw, expected", [
    (b'{"request_id":"r","ts":1,"type":"exit","wait":12}', {"wait": 12.0}),
    (b'{"request_id":"r","ts":1,"type":"exit","wait":1.5,"gate":"B"}', {"wait": 1.5}),  # only the label field
    (b'{"request_id":"r","ts":1,"type":"enter"}', {}),           # not an outcome type
    (b'{"request_id":"r","ts":1,"type":"enter","wait":"x"}', {}),  # ... so nothing is kept
])
def test_regression_field_value(raw, expected):
    fb = regression_parser("field:wait").parse_feedback(raw)
    assert fb.fields == expected


@pytest.mark.parametrize("raw, reason", [
    (b'{"request_id":"r","ts":1,"type":"exit"}', "missing_field"),
    (b'{"request_id":"r","ts":1,"type":"exit","wait":null}', "missing_field"),
    (b'{"request_id":"r","ts":1,"type":"exit","wait":"12"}', "bad_type"),
    (b'{"request_id":"r","ts":1,"type":"exit","wait":NaN}', "bad_type"),
    (b'{"request_id":"r","ts":1,"type":"exit","wait":true}', "bad_type"),
])
def test_regression_field_value_rejects(raw, reason):
    with pytest.raises(EventError) as e:
        regression_parser("field:wait").parse_feedback(raw)
    assert e.value.reason == reason


def test_regression_field_named_value():
    fb = regression_parser("field:value").parse_feedback(
        b'{"request_id":"r","ts":1,"type":"exit","value":4}')
    assert fb.value == 4.0 and fb.fields == {"value": 4.0}


# --- records --------------------------------------------------------------------------

@pytest.mark.parametrize("ts, window_ms, start", [
    (0, 3_600_000, 0), (3_599_999, 3_600_000, 0), (3_600_000, 3_600_000, 3_600_000),
    (1_795_775_999_999, 3_600_000, 1_795_773_600_000), (-1, 3_600_000, -3_600_000),
    (-3_600_000, 3_600_000, -3_600_000), (7, 5, 5),
])
def test_window_start(ts, window_ms, start):
    req = Request("r", ts, {}, None, None)
    assert labeled_example(req, 1, ts + 10, window_ms)["window_start"] == start


def test_labeled_example_columns_and_encoding():
    req = Request("r1", 1_000, {"hour": 3, "category": "é", "price": None}, 0.5, "v1")
    ex = labeled_example(req, True, 2_000, 3_600_000)
    assert list(ex) == [*LABELED_BASE_COLUMNS, *LABEL_QUALITY_COLUMNS, "hour", "category", "price"]
    assert ex["label"] == 1 and type(ex["label"]) is int
    assert ex["label_ts"] == 2_000 and ex["request_ts"] == 1_000
    raw = encode_labeled(ex)
    assert raw == ('{"request_id":"r1","request_ts":1000,"window_start":0,"label":1,'
                   '"label_ts":2000,"prediction":0.5,"model_version":"v1","label_delay_ms":null,'
                   '"label_version":1,"sample_weight":1.0,"hour":3,'
                   '"category":"é","price":null}').encode()
    assert json.loads(raw) == ex


@pytest.mark.parametrize("label, expected", [(False, 0), (0, 0), (1, 1), (12.5, 12.5)])
def test_label_types(label, expected):
    ex = labeled_example(Request("r", 0, {}, None, None), label, 0, 1000)
    assert ex["label"] == expected and type(ex["label"]) is type(expected)


@pytest.mark.parametrize("label, window_ms", [(math.nan, 1000), (1, 0), (1, -5)])
def test_labeled_example_rejects(label, window_ms):
    with pytest.raises(ValueError):
        labeled_example(Request("r", 0, {}, None, None), label, 0, window_ms)


def test_encode_labeled_rejects_nan():
    with pytest.raises(ValueError):
        encode_labeled({"label": float("nan")})


@pytest.mark.parametrize("original", [b"", b"{bad json", b"\xff\x00\xfe", b"x" * 10_000])
def test_dead_letter_round_trip(original):
    raw = DeadLetter("malformed_json", "Expecting value", "ctr.requests", 3, 42, original).encode()
    obj = json.loads(raw)
    assert list(obj) == ["reason", "detail", "topic", "partition", "offset", "original"]
    assert base64.b64decode(obj["original"]) == original
    assert decode_dead_letter(raw) == {"reason": "malformed_json", "detail": "Expecting value",
                                       "topic": "ctr.requests", "partition": 3, "offset": 42,
                                       "original": original}


@pytest.mark.parametrize("raw", [b'{"reason": "x"}', b"[]",
                                 b'{"reason":"r","detail":"d","topic":"t","partition":0,'
                                 b'"offset":0,"original":"!!!"}'])
def test_decode_dead_letter_rejects(raw):
    with pytest.raises(ValueError):
        decode_dead_letter(raw)
