"""Property: for any events and any arrival order, the streaming join equals the oracle.

The oracle is computed on the valid events minus those the join dead-lettered as
``late`` (DESIGN.md: the contract holds for events no later than the allowed lateness).
With lateness larger than the arrival disorder nothing is late and the two are equal
on the full input.
"""
from __future__ import annotations


from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.join_cases import MIN, drive, fb, make_config, req
from tests.oracle import assert_matches_oracle, oracle_labels

T0 = 1_795_000_000_000


@st.composite
def scenarios(draw, kind: str):
    n = draw(st.integers(1, 25))
    ids = [f"r{i}" for i in range(n)]
    events = []
    for rid in ids:
        ts = T0 + draw(st.integers(0, 120)) * MIN + draw(st.integers(0, 59_999))
        events.append((ts, "requests", req(rid, ts)))
        if draw(st.booleans()):  # a duplicate request, later
            events.append((ts + draw(st.integers(0, 5 * MIN)), "requests", req(rid, ts + 1)))
        for _ in range(draw(st.integers(0, 3))):
            fts = ts + draw(st.one_of(st.integers(-2 * MIN, 40 * MIN),
                                      st.sampled_from([-1, 0, 30 * MIN - 1, 30 * MIN]))) 
            ftype = draw(st.sampled_from(["click", "view"] if kind == "binary" else ["exit", "view"]))
            events.append((fts, "feedback", fb(rid, fts, ftype)))
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
    cfg = make_config(kind, lateness=f"{lateness_min}m" if lateness_min else "0s")
    run = drive(cfg, arrivals, partitions=partitions)
    late = run.late_positions()
    kept = [a for a, pos in zip(arrivals, run.positions) if pos not in late]
    expected = oracle_labels(cfg, [r for role, r in kept if role == "requests"],
                             [r for role, r in kept if role == "feedback"])
    assert_matches_oracle(expected, run.labeled)
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
    cfg = make_config("binary", lateness=f"{disorder // 1000 + 1}s")
    run = drive(cfg, arrivals)
    assert "late" not in run.reasons()
    reqs = [r for role, r in arrivals if role == "requests"]
    assert_matches_oracle(oracle_labels(cfg, reqs, [r for role, r in arrivals if role == "feedback"]),
                          run.labeled)
