"""Corrections and negative sampling in the join: pure logic, against the oracle.

Scenario shape (hypothesis): phase 1 delivers requests and feedback with bounded
disorder; then a request and a feedback far in the future, on every partition, move
the watermark past every request's label window, so every label is final; phase 2
delivers more feedback for those requests (some in their windows, some not): each one
that changes a label must come out as a correction, and the latest version of every
request must equal the oracle given phase 2 as ``late_feedback``. Phase 3 moves the
watermark beyond the correction window, after which a label-changing feedback is a
``late`` dead letter and changes nothing.
"""
from __future__ import annotations

import json
import zlib
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.config import config_from_dict
from schemas.errors import ConfigError
from tests.join_cases import MIN, config_dict, drive, fb, req
from tests.oracle import assert_examples_match, expected_examples, latest_versions

T0 = 1_795_000_000_000
HOUR = 60 * MIN


def _config(kind: str, partitions: int, rate: float = 1.0, correction: str = "6h") -> dict:
    cfg = config_dict(kind, lateness="1m", partitions=partitions)
    cfg["join"]["correction_window"] = correction
    if kind == "binary":
        cfg["label"]["negative_sample_rate"] = rate
    return cfg


def _id_on(partition: int, partitions: int, prefix: str) -> str:
    """A request id that the test driver routes to ``partition`` (crc32, as it does)."""
    i = 0
    while True:
        rid = f"{prefix}{i}"
        if partitions == 1 or zlib.crc32(rid.encode()) % partitions == partition:
            return rid
        i += 1


def _advance(ts: int, partitions: int, tag: str) -> list[tuple[str, bytes]]:
    """A request and a feedback at ``ts`` on every partition: the watermark moves there."""
    out = []
    for p in range(partitions):
        rid = _id_on(p, partitions, f"{tag}-p{p}-")
        out += [("requests", req(rid, ts)), ("feedback", fb(rid, ts, "view"))]
    return out


@st.composite
def scenarios(draw, kind: str):
    n = draw(st.integers(1, 15))
    types = ["click", "view"] if kind == "binary" else ["exit", "view"]
    phase1, late = [], []
    for i in range(n):
        rid, ts = f"r{i}", T0 + draw(st.integers(0, 60)) * MIN
        phase1.append((ts, "requests", req(rid, ts)))
        for _ in range(draw(st.integers(0, 2))):
            fts = ts + draw(st.integers(-5 * MIN, 35 * MIN))
            phase1.append((fts, "feedback", fb(rid, fts, draw(st.sampled_from(types)))))
        for _ in range(draw(st.integers(0, 2))):
            fts = ts + draw(st.integers(-5 * MIN, 35 * MIN))
            late.append(("feedback", fb(rid, fts, draw(st.sampled_from(types)))))
    disorder = draw(st.integers(0, 50_000))  # within the 1m allowed lateness
    keyed = sorted((ts + draw(st.integers(0, disorder)), j, role, raw)
                   for j, (ts, role, raw) in enumerate(phase1))
    late = draw(st.permutations(late))
    return [(role, raw) for *_, role, raw in keyed], list(late)


def _check(kind: str, scenario, partitions: int, rate: float) -> None:
    phase1, late = scenario
    cfg = _config(kind, partitions, rate)
    advance = _advance(T0 + 3 * HOUR, partitions, "adv")
    arrivals = phase1 + advance + late
    run = drive(config_from_dict(cfg), arrivals, partitions=partitions)
    assert "late" not in run.reasons(), run.dead
    on_time = phase1 + advance
    expected = expected_examples(cfg, [r for role, r in on_time if role == "requests"],
                                 [r for role, r in on_time if role == "feedback"],
                                 late_feedback=[r for _, r in late])
    assert_examples_match(expected, latest_versions(run.emitted))
    # every version of a request is published once, in order, each a full example
    versions = defaultdict(list)
    for e in run.emitted:
        versions[e["request_id"]].append(e["label_version"])
    for rid, vs in versions.items():
        assert vs == sorted(set(vs)), (rid, vs)
        assert vs[-1] == expected[rid]["label_version"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios("binary"), st.sampled_from([1, 3]), st.sampled_from([1.0, 0.5, 0.1]))
def test_binary_corrections_equal_the_oracle(scenario, partitions, rate):
    _check("binary", scenario, partitions, rate)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios("regression"), st.sampled_from([1, 3]))
def test_regression_corrections_equal_the_oracle(scenario, partitions):
    _check("regression", scenario, partitions, 1.0)


def test_a_late_click_is_a_correction_then_beyond_the_window_a_dead_letter():
    cfg = _config("binary", 1)
    arrivals = [("requests", req("a", T0)), ("requests", req("b", T0)),
                *_advance(T0 + HOUR, 1, "x"),             # both finalized as negatives
                ("feedback", fb("a", T0 + 10 * MIN)),     # late click, inside the horizon
                ("feedback", fb("a", T0 + 20 * MIN)),     # already positive: no change
                *_advance(T0 + 8 * HOUR, 1, "y"),         # past the 6h correction window
                ("feedback", fb("b", T0 + 10 * MIN))]     # too late to correct
    run = drive(config_from_dict(cfg), arrivals)
    a = [e for e in run.emitted if e["request_id"] == "a"]
    assert [(e["label"], e["label_version"], e["label_delay_ms"]) for e in a] == [
        (0, 1, None), (1, 2, 10 * MIN)]
    assert a[1]["label_ts"] == T0 + 10 * MIN and a[1]["sample_weight"] == 1.0
    assert [e["label_version"] for e in run.emitted if e["request_id"] == "b"] == [1]
    late = [d for d in run.dead if d["reason"] == "late"]
    assert len(late) == 1 and json.loads(late[0]["original"])["request_id"] == "b"


def test_without_a_correction_window_a_late_click_stays_a_dead_letter():
    cfg = _config("binary", 1, correction="0s")
    arrivals = [("requests", req("a", T0)), *_advance(T0 + HOUR, 1, "x"),
                ("feedback", fb("a", T0 + 10 * MIN))]
    run = drive(config_from_dict(cfg), arrivals)
    assert [e["label_version"] for e in run.emitted if e["request_id"] == "a"] == [1]
    assert run.reasons().count("late") == 1


def test_sampling_keeps_about_the_rate_and_weights_negatives():
    cfg = _config("binary", 1, rate=0.1)
    n = 4000
    arrivals = [("requests", req(f"q{i}", T0 + i)) for i in range(n)]
    arrivals += [("feedback", fb(f"q{i}", T0 + i + 5)) for i in range(0, n, 10)]
    run = drive(config_from_dict(cfg), arrivals)
    pos = [e for e in run.emitted if e["label"] == 1]
    neg = [e for e in run.emitted if e["label"] == 0]
    assert len(pos) == n // 10 and all(e["sample_weight"] == 1.0 for e in pos)
    assert 0.08 * 0.9 * n < len(neg) < 0.12 * 0.9 * n
    assert all(e["sample_weight"] == pytest.approx(10.0) for e in neg)
    # deterministic: the same ids are kept in a second run
    again = drive(config_from_dict(cfg), arrivals)
    assert [e["request_id"] for e in again.emitted] == [e["request_id"] for e in run.emitted]


@pytest.mark.parametrize("value,fix", [(0, "(0, 1]"), (1.5, "(0, 1]"), ("half", "(0, 1]")])
def test_bad_sample_rate_names_field_value_and_fix(value, fix):
    cfg = _config("binary", 1)
    cfg["label"]["negative_sample_rate"] = value
    with pytest.raises(ConfigError, match=r"label\.negative_sample_rate") as e:
        config_from_dict(cfg)
    assert repr(value) in str(e.value) and fix in str(e.value)


def test_sample_rate_is_refused_for_regression():
    cfg = _config("regression", 1)
    cfg["label"]["negative_sample_rate"] = 0.5
    with pytest.raises(ConfigError, match="only for kind: binary"):
        config_from_dict(cfg)


def test_clicks_after_the_window_are_counted_with_their_delays():
    from streams.join.processor import InputRecord, JoinProcessor
    proc = JoinProcessor(config_from_dict(_config("binary", 1)), None, clock=lambda: 0)
    arrivals = [("requests", req("a", T0)), ("requests", req("b", T0)),
                ("feedback", fb("b", T0 + 40 * MIN)),            # pending, after its window
                ("feedback", fb("a", T0 + 5 * MIN)),             # inside: decides the label
                *_advance(T0 + 3 * HOUR, 1, "x"),
                ("feedback", fb("a", T0 + 2 * HOUR)),            # final, after its window
                ("feedback", fb("a", T0 + 2 * HOUR, "view"))]    # not a labeling type
    offsets = {"requests": 0, "feedback": 0}
    for role, raw in arrivals:
        proc.process(role, 0, [InputRecord(offsets[role], raw)])
        offsets[role] += 1
        proc.tick()
    counts = proc.join.counts
    assert counts["feedback_after_window"] == 2 and counts["feedback_after_final"] == 1
    assert list(proc.join.feedback_delays) == [40 * MIN, 5 * MIN, 2 * HOUR]
