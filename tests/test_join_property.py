"""Property: for any events and any arrival order, the streaming join equals the oracle.

The oracle (tests/oracle.py, written from DESIGN.md without production code) is
computed on the valid events minus those the join dead-lettered as ``late`` (DESIGN.md:
the contract holds for events no later than the allowed lateness), and compared field
by field: request_ts, window_start, label, label_ts, prediction, model_version and the
coerced features. With lateness larger than the arrival disorder nothing is late and
the two are equal on the full input.
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.join_cases import MIN, assert_run_matches_oracle, config_dict, drive, fb, make_config

T0 = 1_795_000_000_000
_MISSING = object()

# values as producers write them: numbers, numeric strings, "", null, a missing key
prices = st.sampled_from([0, "0", "0.0", 0.0, 1.5, "2.50", 3, "", None, _MISSING, -4.25, "1e2"])
categories = st.sampled_from(["x", "books", "", None, _MISSING, 7, 2.5, "\u00fc"])
predictions = st.sampled_from([0.5, 0, 1, None, _MISSING, 0.125])
versions = st.sampled_from(["v1", "v2", None, _MISSING])
times = st.sampled_from(["int", "Z", "+01:00", "frac"])
# ... and values that make a request invalid: (field, value)
spoilers = st.sampled_from([("price", "abc"), ("price", True), ("category", [1]),
                            ("prediction", "0.3"), ("model_version", 3),
                            ("ts", "2026-11-27T10:00:00")])


def fmt_ts(ts: int, how: str):
    """The same instant as integer ms or ISO-8601 text (as real producers mix them)."""
    if how == "int":
        return ts
    from datetime import datetime, timedelta, timezone
    zone = timezone(timedelta(hours=1)) if how == "+01:00" else timezone.utc
    dt = datetime.fromtimestamp(ts // 1000, tz=timezone.utc).astimezone(zone)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ts % 1000:03d}"
    if how == "frac":
        text += "999"  # sub-ms digits are floored
    return text + (dt.strftime("%z")[:3] + ":" + dt.strftime("%z")[3:] if how == "+01:00" else "Z")


@st.composite
def request_bytes(draw, rid: str, ts: int, valid: bool = True) -> bytes:
    feats = {}
    for name, values in (("price", prices), ("category", categories)):
        v = draw(values)
        if v is not _MISSING:
            feats[name] = v
    if draw(st.booleans()):
        feats["undeclared"] = draw(st.sampled_from([1, "x", None]))
    obj = {"request_id": rid, "ts": fmt_ts(ts, draw(times)), "features": feats}
    for name, values in (("prediction", predictions), ("model_version", versions)):
        v = draw(values)
        if v is not _MISSING:
            obj[name] = v
    if not valid:
        name, v = draw(spoilers)
        if name in ("price", "category"):
            feats[name] = v
        else:
            obj[name] = v
    return json.dumps(obj).encode()


@st.composite
def scenarios(draw, kind: str):
    n = draw(st.integers(1, 25))
    ids = [f"r{i}" for i in range(n)]
    events = []
    for rid in ids:
        ts = T0 + draw(st.integers(0, 120)) * MIN + draw(st.integers(0, 59_999))
        if draw(st.integers(0, 9)) == 0:  # an invalid request: its feedback are orphans
            events.append((ts, "requests", draw(request_bytes(rid, ts, valid=False))))
        else:
            events.append((ts, "requests", draw(request_bytes(rid, ts))))
            if draw(st.booleans()):  # a duplicate request, later, with other features
                events.append((ts + draw(st.integers(0, 5 * MIN)), "requests",
                               draw(request_bytes(rid, ts + 1))))
        for _ in range(draw(st.integers(0, 3))):
            fts = ts + draw(st.one_of(st.integers(-2 * MIN, 40 * MIN),
                                      st.sampled_from([-1, 0, 30 * MIN - 1, 30 * MIN])))
            ftype = draw(st.sampled_from(["click", "view"] if kind == "binary" else ["exit", "view"]))
            events.append((fts, "feedback", fb(rid, fmt_ts(fts, draw(times)), ftype)))
    for i in range(draw(st.integers(0, 2))):  # orphans
        fts = T0 + draw(st.integers(0, 120)) * MIN
        events.append((fts, "feedback", fb(f"orphan{i}", fts)))
    disorder = draw(st.integers(0, 10 * MIN))
    # arrival = event time plus a random delay up to `disorder`: bounded out-of-orderness
    keyed = [(ts + draw(st.integers(0, disorder)), i, role, raw)
             for i, (ts, role, raw) in enumerate(events)]
    keyed.sort()
    return [(role, raw) for _, _, role, raw in keyed], disorder


def _check(kind, scenario, partitions, lateness_min):
    arrivals, _ = scenario
    lateness = f"{lateness_min}m" if lateness_min else "0s"
    run = drive(make_config(kind, lateness=lateness), arrivals, partitions=partitions)
    assert_run_matches_oracle(config_dict(kind, lateness=lateness), arrivals, run)
    assert len(run.emitted) == len(run.labeled)
    return run


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios("binary"), st.sampled_from([1, 3]), st.sampled_from([0, 2, 15]))
def test_binary_join_equals_oracle(scenario, partitions, lateness_min):
    _check("binary", scenario, partitions, lateness_min)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios("regression"), st.sampled_from([1, 3]), st.sampled_from([0, 2, 15]))
def test_regression_join_equals_oracle(scenario, partitions, lateness_min):
    _check("regression", scenario, partitions, lateness_min)


@settings(max_examples=80, deadline=None)
@given(scenarios("binary"))
def test_nothing_is_late_when_lateness_covers_disorder(scenario):
    arrivals, disorder = scenario
    lateness = f"{disorder // 1000 + 1}s"
    run = drive(make_config("binary", lateness=lateness), arrivals)
    assert "late" not in run.reasons()
    assert_run_matches_oracle(config_dict("binary", lateness=lateness), arrivals, run)
