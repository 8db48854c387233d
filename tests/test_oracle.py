"""The oracle itself (tests/oracle.py), on small cases computed by hand from DESIGN.md.

Nothing here comes from production: the expected values are written out, so the oracle
is tested independently of the code it judges.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests import oracle
from tests.oracle import (InvalidEvent, assert_examples_match, expected_examples,
                          is_valid_event, parse_duration_ms, parse_event_time,
                          read_dataset_examples)

MIN = 60_000
HOUR = 3_600_000
W = 30 * MIN
T0 = 1_795_000_000_000          # 2026-11-18T11:06:40Z
T0_HOUR = 1_794_999_600_000     # 2026-11-18T11:00:00Z, its window start (1h windows)


def config(kind: str = "binary", value: str = "elapsed_seconds", features=None,
           window: str = "30m", dataset_window: str = "1h", **extra) -> dict:
    label = ({"kind": "binary", "positive": ["click", "buy"]} if kind == "binary"
             else {"kind": "regression", "feedback": ["exit"], "value": value})
    return {"pipeline": "t", "join": {"key": "request_id", "label_window": window,
                                      "allowed_lateness": "2m"},
            "label": label,
            "features": features if features is not None else {"price": "float", "category": "str"},
            "dataset": {"path": "data/t", "window": dataset_window}, **extra}


def req(rid, ts, features=None, prediction=0.5, model_version="v1", **extra) -> bytes:
    obj = {"request_id": rid, "ts": ts, "features": features or {},
           "prediction": prediction, "model_version": model_version, **extra}
    return json.dumps(obj).encode()


def fb(rid, ts, type="click", value=None, **extra) -> bytes:
    return json.dumps({"request_id": rid, "ts": ts, "type": type, "value": value,
                       **extra}).encode()


def example(rid, ts, label, label_ts, window_start=None, prediction=0.5, model_version="v1",
            label_version=1, sample_weight=1.0, **features) -> dict:
    # label_delay_ms: the deciding feedback's time minus the request's; none for a
    # binary negative (an int 0: regression labels are floats)
    if label == 0 and type(label) is int:
        delay = None
    elif isinstance(label_ts, frozenset):
        delay = frozenset(t - ts for t in label_ts)
    else:
        delay = label_ts - ts
    ex = {"request_id": rid, "request_ts": ts,
          "window_start": T0_HOUR if window_start is None else window_start,
          "label": label, "label_ts": label_ts, "prediction": prediction,
          "model_version": model_version, "label_delay_ms": delay,
          "label_version": label_version, "sample_weight": sample_weight}
    ex.update({"price": None, "category": None})
    ex.update(features)
    return ex


# ------------------------------------------------------------------------ durations

@pytest.mark.parametrize("text,ms", [("30m", 1_800_000), ("2h", 7_200_000), ("90s", 90_000),
                                     ("500ms", 500), ("1d", 86_400_000), ("1h30m", 5_400_000),
                                     ("0s", 0)])
def test_durations(text, ms):
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["30x", "", "m", "1.5h", 30, "-1m"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_config_from_yaml_path_equals_dict(tmp_path):
    cfg = config(features={"price": "float", "email": {"type": "str", "pii": "hash"},
                           "passport": {"type": "str", "pii": "drop"}})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reqs = [req("a", T0, {"price": "1", "email": "x@y", "passport": "P1"})]
    assert expected_examples(path, reqs, [], b"k") == expected_examples(str(path), reqs, [], b"k") \
        == expected_examples(cfg, reqs, [], b"k")


def test_example_configs_are_read():
    examples = Path(__file__).resolve().parent.parent / "examples"
    ctr = oracle.parse_config(examples / "ctr.yaml")
    assert (ctr.kind, ctr.positive, ctr.label_window_ms, ctr.dataset_window_ms) == \
        ("binary", frozenset({"click"}), 30 * MIN, HOUR)
    assert [(f.name, f.type, f.pii) for f in ctr.features] == [
        ("hour", "int", None), ("category", "str", None), ("price", "float", None),
        ("user_email", "str", "hash")]
    airport = oracle.parse_config(examples / "airport.yaml")
    assert (airport.kind, airport.feedback_types, airport.value, airport.label_window_ms) == \
        ("regression", frozenset({"exit"}), "elapsed_seconds", 2 * HOUR)
    assert [f.name for f in airport.kept] == ["checkpoint", "hour", "passengers_in_line",
                                              "fast_track"]


def test_production_config_objects_are_refused():
    class PipelineConfig:  # a stand-in: the oracle reads YAML or dicts only
        pass
    with pytest.raises(TypeError):
        expected_examples(PipelineConfig(), [], [])


# ----------------------------------------------------------------------- event time

@pytest.mark.parametrize("value,ms", [
    (1_795_000_000_000, 1_795_000_000_000),
    ("2026-11-27T10:00:00Z", 1_795_773_600_000),
    ("2026-11-27T10:00:00z", 1_795_773_600_000),
    ("2026-11-27T11:00:00+01:00", 1_795_773_600_000),
    ("2026-11-27T05:30:00-04:30", 1_795_773_600_000),
    ("2026-11-27T10:00:00.5Z", 1_795_773_600_500),
    ("2026-11-27T10:00:00.123999Z", 1_795_773_600_123),   # sub-ms digits are floored
    ("2026-11-27T10:00Z", 1_795_773_600_000),
    ("2026-11-27T10Z", 1_795_773_600_000),                  # to the hour
    ("2026-11-27T10:30,5Z", 1_795_775_430_000),             # 10:30:30 (fraction of a minute)
    ("2026-11-27T10.25Z", 1_795_774_500_000),               # 10:15 (fraction of an hour)
    ("20261127T100000Z", 1_795_773_600_000),                # basic format
    ("20261127T110000+0100", 1_795_773_600_000),
    ("2026-11-27T11:00:00+01", 1_795_773_600_000),
    ("2026-331T10:00:00Z", 1_795_773_600_000),              # ordinal date
    ("2026-W48-5T10:00:00Z", 1_795_773_600_000),            # week date: Friday of week 48
    ("2026W485T100000Z", 1_795_773_600_000),
    ("2020-W53-7T00:00:00Z", 1_609_632_000_000),            # 2021-01-03, a 53-week year
    ("2026-11-27 10:00:00Z", 1_795_773_600_000),            # RFC 3339's space
    ("1970-01-01T00:00:00Z", 0),
    ("1969-12-31T23:59:59.999Z", -1),
    ("2024-02-29T00:00:00Z", 1_709_164_800_000),           # leap day
    (-1, -1),
    (1_795_773_600_000.0, 1_795_773_600_000),               # a whole JSON number
])
def test_event_times(value, ms):
    assert parse_event_time(value) == ms


@pytest.mark.parametrize("value", [
    "2026-11-27T10:00:00",            # no zone
    "2026-11-27 10:00",               # no zone
    "2026-11-27",                     # a date
    "2026-02-29T00:00:00Z",           # not a leap year
    "2026-11-27T24:00:00Z", "2026-11-27T10:60:00Z", "2026-13-01T00:00:00Z",
    "2026-11-27T10:00:00+25:00",
    "2026-11-27T10:00:00.Z",          # a decimal sign needs a digit
    "2026-11-27T10:00:00+01:00:30",   # offsets are hours and minutes
    "2026-366T00:00:00Z", "2027-W53-1T00:00:00Z", "2026-W10-8T00:00:00Z", "2026-W00-1T00:00:00Z",
    "10000-01-01T00:00:00Z", "yesterday", "",
    1.5, True, None, [1], {"ms": 1},
    253_402_300_800_000,              # 10000-01-01T00:00:00Z: beyond year 9999
    10 ** 30, float("nan"), float("inf"),
])
def test_bad_event_times(value):
    with pytest.raises(InvalidEvent):
        parse_event_time(value)


def test_iso_and_epoch_times_of_one_instant_join_alike():
    cfg = config()
    iso = "2026-11-18T12:06:40.000+01:00"  # == T0
    got = expected_examples(cfg, [req("a", iso)], [fb("a", "2026-11-18T11:06:40.000Z")])
    assert got == {"a": example("a", T0, 1, frozenset({T0}))}


# ------------------------------------------------------------------- binary labels

def test_binary_window_edges_half_open():
    cfg = config()
    reqs = [req(r, T0) for r in "abcdef"]
    fbs = [fb("a", T0),              # at the request time: counts
           fb("b", T0 + W - 1),      # last ms of the window: counts
           fb("c", T0 + W),          # at the window end: does not count
           fb("d", T0 - 1),          # before the request: does not count
           fb("e", T0 + MIN, "view"),  # not a positive type
           fb("f", T0 + 5 * MIN), fb("f", T0 + 2 * MIN, "buy"), fb("f", T0 + W)]
    assert expected_examples(cfg, reqs, fbs) == {
        "a": example("a", T0, 1, frozenset({T0})),
        "b": example("b", T0, 1, frozenset({T0 + W - 1})),
        "c": example("c", T0, 0, T0 + W),
        "d": example("d", T0, 0, T0 + W),
        "e": example("e", T0, 0, T0 + W),
        "f": example("f", T0, 1, frozenset({T0 + 5 * MIN, T0 + 2 * MIN})),
    }


def test_feedback_before_its_request_and_orphans():
    cfg = config()
    got = expected_examples(cfg, [req("a", T0)], [fb("a", T0 + MIN), fb("zz", T0)])
    assert got == {"a": example("a", T0, 1, frozenset({T0 + MIN}))}


def test_other_window_lengths():
    cfg = config(window="90s")
    got = expected_examples(cfg, [req("a", T0), req("b", T0)],
                            [fb("a", T0 + 89_999), fb("b", T0 + 90_000)])
    assert got["a"]["label"] == 1 and got["b"]["label_ts"] == T0 + 90_000


# --------------------------------------------------------------- regression labels

def test_regression_earliest_in_window_feedback_gives_the_value():
    cfg = config("regression", window="2h")
    reqs = [req("a", T0), req("b", T0), req("c", T0), req("d", T0)]
    fbs = [fb("a", T0 + 120_000, "exit"), fb("a", T0 + 60_500, "exit"),  # earliest, arrives 2nd
           fb("a", T0 + 1_000, "scan"),                                  # not an outcome type
           fb("b", T0 - 1, "exit"), fb("b", T0 + 2 * HOUR, "exit"),       # both outside
           fb("c", T0, "exit"),                                          # 0 seconds
           fb("d", T0 + 2 * HOUR - 1, "exit")]
    got = expected_examples(cfg, reqs, fbs)
    assert got == {"a": example("a", T0, 60.5, T0 + 60_500),
                   "c": example("c", T0, 0.0, T0),
                   "d": example("d", T0, 7199.999, T0 + 2 * HOUR - 1)}
    assert isinstance(got["c"]["label"], float)


def test_regression_value_from_a_feedback_field():
    cfg = config("regression", value="field:minutes")
    reqs = [req("a", T0), req("b", T0), req("c", T0)]
    fbs = [fb("a", T0 + 2000, "exit", minutes=9), fb("a", T0 + 1000, "exit", minutes=7.5),
           fb("b", T0 + 1000, "exit"),                     # no value: carries no outcome
           fb("b", T0 + 3000, "exit", minutes=2),
           fb("c", T0 + 1000, "exit", minutes="3")]         # not a number
    assert expected_examples(cfg, reqs, fbs) == {"a": example("a", T0, 7.5, T0 + 1000),
                                                 "b": example("b", T0, 2.0, T0 + 3000)}


def test_regression_value_from_the_value_field_and_ties():
    cfg = config("regression", value="field:value")
    fbs = [fb("a", T0 + 1000, "exit", value=4), fb("a", T0 + 1000, "exit", value=5)]
    got = expected_examples(cfg, [req("a", T0)], fbs)
    assert got["a"]["label"] == frozenset({4.0, 5.0}) and got["a"]["label_ts"] == T0 + 1000


# ------------------------------------------------------------------ requests: which

def test_first_valid_request_wins_in_arrival_order():
    cfg = config()
    reqs = [req("a", T0 + MIN, {"price": 1}),         # first: wins although it is later in time
            req("a", T0, {"price": 2}),
            req("b", "2026-11-18T11:06:40"),          # invalid (no zone): does not count
            req("b", T0, {"price": 3}),               # the first valid one
            req("b", T0 + 1, {"price": 4})]
    assert expected_examples(cfg, reqs, [fb("a", T0 + 30_000)]) == {
        "a": example("a", T0 + MIN, 0, T0 + MIN + W, price=1.0),
        "b": example("b", T0, 0, T0 + W, price=3.0),
    }


def test_invalid_feedback_is_excluded():
    cfg = config()
    fbs = [fb("a", "2026-11-18T11:07:40"),                           # no zone
           json.dumps({"request_id": "a", "ts": T0 + 1}).encode(),   # no type
           fb("a", T0 + 2, value="x"),                               # value not a number
           fb("a", T0 + 3, "click", value=float("nan")),             # NaN value
           fb("a", T0 + 4, 7),                                       # type not a string
           b"{broken"]
    assert expected_examples(cfg, [req("a", T0)], fbs) == {"a": example("a", T0, 0, T0 + W)}


@pytest.mark.parametrize("raw", [
    b"{not json", b"", b"[1, 2]", b"17", b"null", b"\xff\xfe garbage",
    b'\xef\xbb\xbf{"request_id": "a", "ts": 1}',                # a UTF-8 BOM
    b'{"request_id": "\\ud800a", "ts": 1795000000000}',         # a lone surrogate
    b'{"request_id": "a", "ts": 1795000000000, "x": "\\udfff"}',
    b'{"ts": 1795000000000}', b'{"request_id": null, "ts": 1795000000000}',
    b'{"request_id": 5, "ts": 1795000000000}', b'{"request_id": "a"}',
    b'{"request_id": "a", "ts": 1795000000000, "features": [1]}',
    b'{"request_id": "a", "ts": 1795000000000, "prediction": "0.5"}',
    b'{"request_id": "a", "ts": 1795000000000, "prediction": true}',
    b'{"request_id": "a", "ts": 1795000000000, "prediction": NaN}',
    b'{"request_id": "a", "ts": 1795000000000, "model_version": 1}',
    b'{"request_id": "a", "ts": NaN}',
    b'{"request_id": "a", "ts": 1' + b"9" * 30 + b"}",
    b'{"request_id": "d", "ts": 1, "features": ' + b"[" * 5000 + b"]" * 5000 + b"}",
])
def test_invalid_requests(raw):
    assert not is_valid_event(config(), "requests", raw)
    assert expected_examples(config(), [raw], []) == {}


def test_size_bounds():
    cfg = config()
    ok_id = "x" * 16_384
    assert is_valid_event(cfg, "requests", req(ok_id, T0))
    assert not is_valid_event(cfg, "requests", req(ok_id + "x", T0))
    assert not is_valid_event(cfg, "feedback", fb("a", T0, "c" * 16_385))
    assert not is_valid_event(cfg, "requests", req("a", T0, {"category": "c" * 16_385}))
    assert not is_valid_event(cfg, "requests", req("a", T0, pad="p" * (1 << 20)))


def test_valid_requests_with_missing_optional_fields():
    cfg = config()
    raw = json.dumps({"request_id": "a", "ts": T0}).encode()
    assert expected_examples(cfg, [raw], []) == {
        "a": example("a", T0, 0, T0 + W, prediction=None, model_version=None)}
    raw = json.dumps({"request_id": "b", "ts": T0, "prediction": 1, "features": None}).encode()
    got = expected_examples(cfg, [raw], [])["b"]
    assert got["prediction"] == 1.0 and isinstance(got["prediction"], float)


# ---------------------------------------------------------------- feature coercion

FEATURES = {"f": "float", "i": "int", "s": "str", "b": "bool"}


def _feature(name, value, missing=False):
    feats = {} if missing else {name: value}
    return expected_examples(config(features=FEATURES), [req("a", T0, feats)], [])


@pytest.mark.parametrize("name,value,want", [
    ("f", "0", 0.0), ("f", "0.0", 0.0), ("f", 0, 0.0), ("f", 0.0, 0.0), ("f", "-2.5", -2.5),
    ("f", "1e2", 100.0), ("f", 3, 3.0), ("f", "", None), ("f", None, None),
    ("i", 7, 7), ("i", "7", 7), ("i", 7.0, 7), ("i", "7.0", 7), ("i", "-3", -3), ("i", "", None),
    ("i", None, None), ("i", 2 ** 63 - 1, 2 ** 63 - 1),
    ("s", "x", "x"), ("s", "", None), ("s", None, None), ("s", 5, "5"), ("s", 2.5, "2.5"),
    ("b", True, True), ("b", False, False), ("b", 1, True), ("b", 0, False),
    ("b", "true", True), ("b", "False", False), ("b", "1", True), ("b", "0", False),
    ("b", "", None), ("b", None, None),
])
def test_feature_coercion(name, value, want):
    got = _feature(name, value)["a"]
    assert got[name] == want and type(got[name]) is type(want)
    assert {k: got[k] for k in FEATURES if k != name} == {k: None for k in FEATURES if k != name}


@pytest.mark.parametrize("name", list(FEATURES))
def test_missing_feature_is_null(name):
    assert _feature(name, None, missing=True)["a"][name] is None


@pytest.mark.parametrize("name,value", [
    ("f", "abc"), ("f", float("nan")), ("f", float("inf")), ("f", "NaN"), ("f", "inf"),
    ("f", "1e400"), ("f", True), ("f", [1]), ("f", {"v": 1}), ("f", "1_000"),
    ("i", 7.5), ("i", "7.5"), ("i", "seven"), ("i", True), ("i", 2 ** 63), ("i", float("nan")),
    ("s", True), ("s", [1]), ("s", {"a": 1}), ("s", float("nan")),
    ("b", "yes"), ("b", 2), ("b", 1.0), ("b", [True]),
])
def test_feature_invalid_values_make_the_request_invalid(name, value):
    assert _feature(name, value) == {}


def test_nan_literal_in_json_feature_is_invalid():
    raw = b'{"request_id": "a", "ts": 1795000000000, "features": {"f": NaN}}'
    assert expected_examples(config(features=FEATURES), [raw], []) == {}
    raw = b'{"request_id": "a", "ts": 1795000000000, "features": {"f": -Infinity}}'
    assert expected_examples(config(features=FEATURES), [raw], []) == {}


def test_undeclared_features_are_ignored():
    got = expected_examples(config(), [req("a", T0, {"price": 1, "color": "red",
                                                     "junk": float("nan")})], [])
    assert "color" not in got["a"] and got["a"]["price"] == 1.0


def test_columns_in_order():
    cfg = config(features={"z": "int", "a": "str", "m": "float"})
    got = expected_examples(cfg, [req("a", T0)], [])["a"]
    assert list(got) == ["request_id", "request_ts", "window_start", "label", "label_ts",
                         "prediction", "model_version", "label_delay_ms", "label_version",
                         "sample_weight", "z", "a", "m"]


# ------------------------------------------------------------------------------ PII

# RFC 4231 test case 2: HMAC-SHA256(key="Jefe", data="what do ya want for nothing?")
RFC4231_2 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_pii_hash_and_drop():
    cfg = config(features={"email": {"type": "str", "pii": "hash"},
                           "passport": {"type": "str", "pii": "drop"}, "n": "int"})
    reqs = [req("a", T0, {"email": "what do ya want for nothing?", "passport": "P123", "n": 1}),
            req("b", T0, {"email": "", "passport": {"not": "checked"}}),
            req("c", T0, {"email": None})]
    got = expected_examples(cfg, reqs, [], pii_key=b"Jefe")
    assert got["a"]["email"] == RFC4231_2
    assert "passport" not in got["a"] and list(got["a"])[-2:] == ["email", "n"]
    assert got["b"]["email"] is None and got["c"]["email"] is None
    assert expected_examples(cfg, reqs, [], pii_key="Jefe") == got
    assert expected_examples(cfg, reqs, [], pii_key=b"other")["a"]["email"] != RFC4231_2


def test_pii_hash_needs_a_key():
    cfg = config(features={"email": {"type": "str", "pii": "hash"}})
    with pytest.raises(ValueError):
        expected_examples(cfg, [req("a", T0, {"email": "x"})], [])


def test_pii_hash_of_an_int_feature_hashes_the_coerced_number():
    cfg = config(features={"uid": {"type": "int", "pii": "hash"}})
    got = expected_examples(cfg, [req("a", T0, {"uid": "0042"}), req("b", T0, {"uid": 42}),
                                  req("c", T0, {"uid": "abc"})], [], b"k")
    assert got["a"]["uid"] == got["b"]["uid"] and len(got["a"]["uid"]) == 64
    assert "c" not in got  # not an int: invalid, hashed or not


# --------------------------------------------------------------------- window_start

@pytest.mark.parametrize("ts,window,start", [
    (T0, "1h", T0_HOUR), (T0_HOUR, "1h", T0_HOUR), (T0_HOUR - 1, "1h", T0_HOUR - HOUR),
    (T0, "1m", T0 - T0 % MIN), (-1, "1h", -HOUR), (0, "1d", 0),
])
def test_window_start_floors_the_request_time(ts, window, start):
    got = expected_examples(config(dataset_window=window), [req("a", ts)], [])
    assert got["a"]["window_start"] == start


# ------------------------------------------------------------- inputs: field mapping

def test_inputs_map_fields_by_path():
    cfg = config(inputs={
        "requests": {"fields": {"request_id": "id", "ts": "@timestamp",
                                "features": "payload.features", "prediction": "payload.score",
                                "model_version": "model\\.version"},
                     "ts_unit": "s"},
        "feedback": {"fields": {"request_id": "trace.request_id", "ts": "@timestamp",
                                "type": "event.action"}}})
    r = json.dumps({"id": "a", "@timestamp": T0 / 1000, "model.version": "v7",
                    "payload": {"features": {"price": "2"}, "score": 0.25}}).encode()
    f = json.dumps({"trace": {"request_id": "a"}, "@timestamp": T0 + 1,
                    "event": {"action": "click"}}).encode()
    assert expected_examples(cfg, [r], [f]) == {
        "a": example("a", T0, 1, frozenset({T0 + 1}), prediction=0.25, model_version="v7",
                     price=2.0)}
    absent = json.dumps({"id": "b", "@timestamp": T0 / 1000, "model.version": "v7"}).encode()
    # payload.features absent: optional, null (spec inputs.md rule 4), not invalid
    assert is_valid_event(cfg, "requests", absent)


# ------------------------------------------------------------------ the comparison

def _expected():
    return expected_examples(config(), [req("a", T0), req("b", T0, {"price": "1.5"})],
                             [fb("a", T0 + 1), fb("a", T0 + 2)])


def test_match_accepts_equal_rows_in_any_form():
    exp = _expected()
    a = example("a", T0, 1, T0 + 2)
    b = example("b", T0, 0, T0 + W, price=1.5 + 1e-12)
    assert_examples_match(exp, [b, a])
    assert_examples_match(exp, {"a": a, "b": b})
    assert_examples_match(exp, iter([a, b]))


@pytest.mark.parametrize("change,words", [
    (lambda rows: rows[:1], ["missing", "'b'"]),
    (lambda rows: rows + [example("c", T0, 0, T0 + W)], ["unexpected", "'c'"]),
    (lambda rows: rows + rows[1:], ["more than once", "'b'"]),
    (lambda rows: [rows[0], {**rows[1], "label": 1}], ["'b'", "label"]),
    (lambda rows: [rows[0], {**rows[1], "label": 0.0}], ["'b'", "label"]),       # int stays int
    (lambda rows: [{**rows[0], "label_ts": T0 + 3}, rows[1]], ["'a'", "label_ts", "one of"]),
    (lambda rows: [rows[0], {**rows[1], "price": 1.5001}], ["'b'", "price"]),
    (lambda rows: [rows[0], {**rows[1], "price": None}], ["'b'", "price"]),
    (lambda rows: [rows[0], {**rows[1], "category": ""}], ["'b'", "category"]),
    (lambda rows: [rows[0], {**rows[1], "window_start": T0}], ["'b'", "window_start"]),
    (lambda rows: [rows[0], {**rows[1], "model_version": "v2"}], ["'b'", "model_version"]),
    (lambda rows: [rows[0], {**rows[1], "prediction": 0.6}], ["'b'", "prediction"]),
    (lambda rows: [rows[0], {**rows[1], "request_ts": T0 + 1}], ["'b'", "request_ts"]),
    (lambda rows: [rows[0], {k: v for k, v in rows[1].items() if k != "price"}],
     ["'b'", "columns missing", "price"]),
    (lambda rows: [rows[0], {**rows[1], "email": "x"}], ["'b'", "unexpected columns", "email"]),
])
def test_match_fails_readably(change, words):
    rows = [example("a", T0, 1, T0 + 1), example("b", T0, 0, T0 + W, price=1.5)]
    with pytest.raises(AssertionError) as e:
        assert_examples_match(_expected(), change(rows))
    for w in words:
        assert w in str(e.value), str(e.value)


# ------------------------------------------------------------ reading the dataset

def test_read_dataset_examples_normalises_and_skips_hidden_files(tmp_path):
    ts = pa.timestamp("ms", tz="UTC")
    schema = pa.schema([("request_id", pa.string()), ("request_ts", ts), ("window_start", ts),
                        ("label", pa.int64()), ("label_ts", ts), ("prediction", pa.float64()),
                        ("model_version", pa.string()), ("label_delay_ms", pa.int64()),
                        ("label_version", pa.int64()), ("sample_weight", pa.float64()),
                        ("price", pa.float64()), ("category", pa.string())])

    def table(*rows):
        return pa.Table.from_pylist([dict(zip(schema.names, r)) for r in rows], schema=schema)

    w = tmp_path / "window_start=2026-11-18T11-00-00Z"
    w.mkdir()
    pq.write_table(table(("a", T0, T0_HOUR, 1, T0 + 1, 0.5, "v1", 1, 1, 1.0, None, None)),
                   w / "part-000-000000000000-000000000001.parquet")
    pq.write_table(table(("b", T0, T0_HOUR, 0, T0 + W, 0.5, "v1", None, 1, 1.0, 1.5, None)),
                   w / "part-001-000000000000-000000000000.parquet")
    pq.write_table(table(("hidden", T0, T0_HOUR, 0, T0, None, None, None, 1, 1.0, None, None)),
                   w / ".part-002.parquet.tmp-1")
    pq.write_table(table(("hidden2", T0, T0_HOUR, 0, T0, None, None, None, 1, 1.0, None, None)),
                   w / "_part-003.parquet")
    (w / "_manifest.json").write_text("{}")
    (tmp_path / "_sink").mkdir()
    pq.write_table(table(("hidden3", T0, T0_HOUR, 0, T0, None, None, None, 1, 1.0, None, None)),
                   tmp_path / "_sink" / "x.parquet")
    # a time column in another unit still comes back as epoch ms
    us = pa.timestamp("us", tz="UTC")
    other = pa.Table.from_pylist([{"request_id": "c", "request_ts": (T0 + 1) * 1000}],
                                 schema=pa.schema([("request_id", pa.string()),
                                                   ("request_ts", us)]))
    w2 = tmp_path / "window_start=2026-11-18T12-00-00Z"
    w2.mkdir()
    pq.write_table(other, w2 / "part-000-000000000002-000000000002.parquet")

    rows = sorted(read_dataset_examples(tmp_path), key=lambda r: r["request_id"])
    assert rows == [example("a", T0, 1, T0 + 1), example("b", T0, 0, T0 + W, price=1.5),
                    {"request_id": "c", "request_ts": T0 + 1}]
    assert all(type(r["request_ts"]) is int for r in rows)
    assert_examples_match(_expected(), rows[:2])


# ------------------------------------------- inputs: the rules of /tmp/spec/inputs.md

@pytest.mark.parametrize("path,parts", [
    ("id", ("id",)), ("a.b.c", ("a", "b", "c")), ("@timestamp", ("@timestamp",)),
    ("labels.app\\.kubernetes\\.io/name", ("labels", "app.kubernetes.io/name")),
    ("a\\\\b", ("a\\b",)), ("a\\\\.b", ("a\\", "b")), ("\\.", (".",)),
    ("a\\.\\\\\\..b", ("a.\\.", "b")), ("sp ace.ü", ("sp ace", "ü")),
])
def test_oracle_split_path(path, parts):
    assert oracle.split_path(path) == parts


@pytest.mark.parametrize("path", ["", ".", "a..b", ".a", "a.", "a\\x", "a\\", "\\", 5, None])
def test_oracle_split_path_rejects(path):
    with pytest.raises(ValueError):
        oracle.split_path(path, "inputs.requests.fields.ts")


@pytest.mark.parametrize("inputs", [
    {"requests": {"fields": {"type": "t"}}},                 # a feedback key on requests
    {"feedback": {"fields": {"features": "f"}}},
    {"requests": {"fields": {"request_id": "a..b"}}},
    {"requests": {"ts_unit": "ns"}}, {"feedback": {"ts_unit": "sec"}},
])
def test_oracle_rejects_bad_inputs(inputs):
    with pytest.raises(ValueError, match="inputs"):
        oracle.parse_config(config(inputs=inputs))


def test_oracle_inputs_keys_follow_join_key_and_outcome_field():
    cfg = config("regression", value="field:minutes",
                 inputs={"feedback": {"fields": {"minutes": "m.v"}}})
    assert oracle.parse_config(cfg).feedback_fields == {"minutes": ("m", "v")}
    cfg = config(inputs={"requests": {"fields": {"trace_id": "t"}}})
    cfg["join"]["key"] = "trace_id"
    assert oracle.parse_config(cfg).request_fields == {"trace_id": ("t",)}
    cfg["inputs"] = {"requests": {"fields": {"request_id": "t"}}}  # not the join key's name
    with pytest.raises(ValueError):
        oracle.parse_config(cfg)


def _ts_of(text: str, unit: str) -> int:
    """The event time of a JSON number written as ``text`` (as the oracle loads it)."""
    return parse_event_time(json.loads(text, parse_float=oracle.JsonFloat), unit)


@pytest.mark.parametrize("text,unit,ms", [
    ("1732701600", "s", 1732701600000), ("1732701600.123", "s", 1732701600123),
    ("1732701600.1239", "s", 1732701600123), ("1732701600.9999999999", "s", 1732701600999),
    ("-1.5", "s", -1500), ("-0.0001", "s", -1), ("1.7327016e9", "s", 1732701600000),
    ("1732701600123", "ms", 1732701600123), ("1732701600123.0", "ms", 1732701600123),
    ("-5", "ms", -5), ("1732701600123456", "us", 1732701600123),
    ("1732701600123999", "us", 1732701600123), ("-1", "us", -1), ("-1000", "us", -1),
    ("-1001", "us", -2), ("1.732701600123456e15", "us", 1732701600123),
    ('"2026-11-27T10:00:00.123456789Z"', "s", 1795773600123),
    ('"2026-11-27T10:00:00Z"', "us", 1795773600000),
])
def test_oracle_ts_units(text, unit, ms):
    assert _ts_of(text, unit) == ms


@pytest.mark.parametrize("text,unit", [
    ("1.5", "ms"), ("1.5", "us"), ("true", "s"), ("false", "ms"), ("NaN", "s"),
    ("Infinity", "us"), ("1e400", "s"), ("253402300800", "s"), ("-62135596801", "s"),
    ('"2026-11-27T10:00:00"', "s"), ('"1732701600"', "s"), ("[1]", "ms"),
])
def test_oracle_ts_units_reject(text, unit):
    with pytest.raises(InvalidEvent):
        _ts_of(text, unit)


MAPPED = {
    "requests": {"fields": {"request_id": "meta.id", "ts": "@timestamp",
                            "features": "payload.feats", "prediction": "payload.score",
                            "model_version": "model\\.info.version"},
                 "ts_unit": "us"},
    "feedback": {"fields": {"request_id": "trace.request_id", "ts": "event.time",
                            "type": "event.action", "value": "event.duration"},
                 "ts_unit": "s"},
}


def _mreq(rid, ts_us, feats=None, score=0.5, version="v1", **extra) -> bytes:
    obj = {"meta": {"id": rid}, "@timestamp": ts_us, "model.info": {"version": version},
           "payload": {"feats": feats or {}, "score": score}, **extra}
    return json.dumps(obj).encode()


def _mfb(rid, ts_s, action="click", **extra) -> bytes:
    return json.dumps({"trace": {"request_id": rid},
                       "event": {"time": ts_s, "action": action, **extra}}).encode()


def test_oracle_mapping_nested_paths_and_units():
    cfg = config(inputs=MAPPED)
    reqs = [_mreq("a", T0 * 1000 + 999, {"price": "1.5", "category": "x"}),
            _mreq("b", T0 * 1000)]
    fbs = [_mfb("a", (T0 + 1500) / 1000), _mfb("b", (T0 + W) / 1000)]   # b: just outside
    assert expected_examples(cfg, reqs, fbs) == {
        "a": example("a", T0, 1, frozenset({T0 + 1500}), price=1.5, category="x"),
        "b": example("b", T0, 0, T0 + W)}


def test_oracle_mapping_missing_required_and_optional():
    cfg = config(inputs=MAPPED)
    no_id = json.dumps({"id": "a", "request_id": "a", "@timestamp": T0 * 1000}).encode()
    id_not_object = json.dumps({"meta": "a", "@timestamp": T0 * 1000}).encode()
    id_null = json.dumps({"meta": {"id": None}, "@timestamp": T0 * 1000}).encode()
    no_ts = json.dumps({"meta": {"id": "a"}, "ts": T0}).encode()
    for raw in (no_id, id_not_object, id_null, no_ts):
        assert not is_valid_event(cfg, "requests", raw)
    bare = json.dumps({"meta": {"id": "c"}, "@timestamp": T0 * 1000,
                       "payload": None, "model": {"info": {"version": "v9"}}}).encode()
    assert expected_examples(cfg, [bare], []) == {
        "c": example("c", T0, 0, T0 + W, prediction=None, model_version=None)}
    assert not is_valid_event(cfg, "requests", _mreq("d", T0 * 1000, feats=None) .replace(
        b'"feats": {}', b'"feats": [1]'))                               # bad type at the path
    assert not is_valid_event(cfg, "feedback", json.dumps(
        {"trace": {"request_id": "a"}, "event": {"time": 1, "type": "click"}}).encode())
    assert is_valid_event(cfg, "feedback", _mfb("a", 1))                # value absent: null
    assert not is_valid_event(cfg, "feedback", _mfb("a", 1, duration="x"))


def test_oracle_mapping_regression_outcome_path():
    cfg = config("regression", value="field:secs",
                 inputs={"feedback": {"fields": {"secs": "m.secs", "type": "kind"}}})
    fbs = [json.dumps({"request_id": "a", "ts": T0 + 5, "kind": "exit", "m": {"secs": 4}}).encode(),
           json.dumps({"request_id": "a", "ts": T0 + 1, "kind": "exit", "secs": 9}).encode(),
           json.dumps({"request_id": "a", "ts": T0 + 2, "kind": "view"}).encode()]
    assert not is_valid_event(cfg, "feedback", fbs[1])     # exit without m.secs
    assert is_valid_event(cfg, "feedback", fbs[2])         # not a label.feedback type
    assert expected_examples(cfg, [req("a", T0)], fbs) == {"a": example("a", T0, 4.0, T0 + 5)}


def test_oracle_mapping_before_pii_hashing():
    cfg = config(features={"email": {"type": "str", "pii": "hash"}, "n": "int"},
                 inputs={"requests": {"fields": {"features": "ctx.user\\.data"}}})
    raw = json.dumps({"request_id": "a", "ts": T0, "prediction": 0.5, "model_version": "v1",
                      "features": {"email": "wrong", "n": 1},
                      "ctx": {"user.data": {"email": "what do ya want for nothing?",
                                            "n": "7"}}}).encode()
    got = expected_examples(cfg, [raw], [], pii_key=b"Jefe")["a"]
    assert got["email"] == RFC4231_2 and got["n"] == 7


# ----------------------------------------- issue 14: sampling and corrections, by hand

# BLAKE2b-64 of "a" is 0x40f89e395b66422f (0.2538 of 2**64), of "b" 0x8472c2e34d854f75
# (0.5174): at rate 0.3 the negative of "a" is kept (weight 1/0.3), that of "b" is not.
def test_negative_sampling_by_the_hash_of_the_request_id():
    cfg = config(label={"kind": "binary", "positive": ["click"], "negative_sample_rate": 0.3})
    got = expected_examples(cfg, [req("a", T0), req("b", T0), req("c", T0)], [fb("c", T0 + 5)])
    assert set(got) == {"a", "c"}
    assert got["a"] == example("a", T0, 0, T0 + W, sample_weight=1 / 0.3)
    assert got["c"] == example("c", T0, 1, frozenset({T0 + 5}))


def test_late_feedback_corrects_the_label_and_counts_versions():
    cfg = config()
    got = expected_examples(cfg, [req("a", T0), req("b", T0)], [fb("b", T0 + 7)],
                            late_feedback=[fb("a", T0 + 9), fb("a", T0 + 3), fb("b", T0 + 1),
                                           fb("a", T0 + W)])
    # a: the first late click inside the window corrects it (version 2), later ones and
    # the one at the window's end change nothing; b was already positive
    assert got["a"] == example("a", T0, 1, T0 + 9, label_version=2)
    assert got["b"] == example("b", T0, 1, frozenset({T0 + 7}))


def test_late_outcomes_correct_a_regression_label_each_time_it_gets_earlier():
    cfg = config("regression")
    got = expected_examples(cfg, [req("a", T0), req("b", T0)], [fb("a", T0 + 60_000, "exit")],
                            late_feedback=[fb("a", T0 + 30_000, "exit"),
                                           fb("a", T0 + 40_000, "exit"),
                                           fb("a", T0 + 10_000, "exit"),
                                           fb("b", T0 + 5_000, "exit")])
    assert got["a"] == example("a", T0, 10.0, T0 + 10_000, label_version=3)
    assert got["b"] == example("b", T0, 5.0, T0 + 5_000)  # unlabeled, then its first label
