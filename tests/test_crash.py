"""Crash and restart against the real broker: SIGKILL the worker mid-stream, restart it.

The set of labeled request ids must equal the oracle, none missing; a record repeated
by the at-least-once replay must be an identical copy; the Parquet dataset written by
the sink (killed together with the join) equals the oracle with each request once. The join state is recovered
from its changelog on the embedded broker, which needs the fetch-high-watermark fix
of ``streams.kafka.tansu_quirks`` (without it Faust drops the changelog's tail).
"""
from __future__ import annotations

import signal
import time

import pytest

from schemas.pii import PiiHasher
from streams.dev.simulate import generate, produce
from streams.dev.tail import read_topic
from tests.oracle import assert_matches_oracle, oracle_labels
from tests.pipeline_runs import (PII_KEY, dataset_examples, dead_letters, kill_group,
                                 labeled_records, load, run_drain, start_worker, write_pipeline)

pytestmark = pytest.mark.broker


def _count(bootstrap: str, topic: str) -> int:
    return sum(1 for _ in read_topic(bootstrap, topic, idle_timeout_s=1.5))


def _wait_for_output(bootstrap, topic, proc, at_least: int, timeout: float = 90) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "worker died on its own"
        n = _count(bootstrap, topic)
        if n >= at_least:
            return n
        time.sleep(0.3)
    raise AssertionError(f"no {at_least} labeled records within {timeout}s")


@pytest.mark.parametrize("kills,store", [(1, "memory"), (1, "rocksdb"),
                                         pytest.param(2, "memory", marks=pytest.mark.slow)])
def test_sigkill_and_restart_loses_nothing(broker, tmp_path, unique_name, kills, store):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4, store=store)
    cfg = load(path)
    events = generate(cfg, "ctr", 6000, seed=11, rate_per_s=0.5)  # ~200 min of event time
    half = len(events) // 2
    produce(broker.bootstrap, cfg, events[:half])
    log = tmp_path / "worker.log"
    seen = 0
    for k in range(kills):
        proc = start_worker(path, log)
        try:
            seen = _wait_for_output(broker.bootstrap, cfg.topics.labeled, proc, seen + 200)
            if k == 0:
                produce(broker.bootstrap, cfg, events[half:])  # more input while it runs
                time.sleep(0.5)
        finally:
            kill_group(proc, signal.SIGKILL)
    summary = run_drain(path, log)

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    dls = dead_letters(broker.bootstrap, cfg.topics.dead_letter)
    assert not [d for d in dls if d["reason"] == "late"]
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    expected = oracle_labels(cfg, reqs, fbs, PiiHasher(PII_KEY.encode()))
    assert_matches_oracle(expected, labeled)
    assert_matches_oracle(expected, dataset_examples(cfg.dataset.path))
    assert summary["sink"]["windows_closed"] + summary["sink"]["windows_sent"] > 0
    repeated = {rid: v for rid, v in copies.items() if len(v) > 1}
    assert all(len(set(v)) == 1 for v in repeated.values()), "a repeat differs from the original"
    print(f"kills={kills} labeled={len(labeled)} repeated={len(repeated)} "
          f"after restart: {summary}")
