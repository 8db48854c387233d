"""Property: processing in batches (one watermark tick per batch) equals the oracle too.

The worker reads its inputs with ``getmany``: a batch holds, per input partition, a run
of records in offset order, and the partitions of a batch come one after another.
``JoinProcessor.process`` handles such a run and the worker ticks the watermark
once per batch. Whatever the batch boundaries, the output must equal the oracle on the
events that were not dead-lettered as late, and nothing may be late when the allowed
lateness covers the arrival disorder.
"""
from __future__ import annotations

from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.join.processor import JoinProcessor
from tests.join_cases import Run, partition_of, assert_run_matches_oracle, config_dict, make_config
from tests.test_join_property import scenarios


def drive_batches(config, arrivals, cuts, partitions: int = 1) -> Run:
    """Feed arrivals in batches ending at the indexes in ``cuts``; tick after each batch."""
    proc = JoinProcessor(config, None, clock=lambda: 0)
    offsets: dict[tuple[str, int], int] = {}
    run = Run()
    bounds = sorted({c for c in cuts if 0 < c < len(arrivals)} | {len(arrivals)})
    start = 0
    for end in bounds:
        groups: dict[tuple[str, int], list] = {}
        for role, raw in arrivals[start:end]:
            part = partition_of(raw, partitions)
            off = offsets.get((role, part), 0)
            offsets[(role, part)] = off + 1
            run.positions.append((role, part, off))
            groups.setdefault((role, part), []).append(SimpleNamespace(offset=off, value=raw))
        for (role, part), recs in groups.items():
            run.take(proc.process(role, part, recs))
        run.take(proc.tick())
        start = end
    run.take(proc.drain())
    return run


def _check(kind, scenario, cuts, partitions, lateness_min):
    arrivals, _ = scenario
    lateness = f"{lateness_min}m" if lateness_min else "0s"
    run = drive_batches(make_config(kind, lateness=lateness), arrivals, cuts, partitions)
    assert_run_matches_oracle(config_dict(kind, lateness=lateness), arrivals, run)
    assert len(run.emitted) == len(run.labeled)


cuts_st = st.lists(st.integers(0, 120), max_size=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios("binary"), cuts_st, st.sampled_from([1, 3]), st.sampled_from([0, 2, 15]))
def test_binary_batches_equal_oracle(scenario, cuts, partitions, lateness_min):
    _check("binary", scenario, cuts, partitions, lateness_min)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios("regression"), cuts_st, st.sampled_from([1, 3]), st.sampled_from([0, 2, 15]))
def test_regression_batches_equal_oracle(scenario, cuts, partitions, lateness_min):
    _check("regression", scenario, cuts, partitions, lateness_min)


@settings(max_examples=80, deadline=None)
@given(scenarios("binary"), cuts_st)
def test_nothing_is_late_in_batches_when_lateness_covers_disorder(scenario, cuts):
    arrivals, disorder = scenario
    lateness = f"{disorder // 1000 + 1}s"
    run = drive_batches(make_config("binary", lateness=lateness), arrivals, cuts)
    assert "late" not in run.reasons()
    assert_run_matches_oracle(config_dict("binary", lateness=lateness), arrivals, run)
