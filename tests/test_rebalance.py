"""Two workers in one group: partitions move between them mid-stream, then one is killed.

The runner reads its inputs with its own consumer, assigned what Faust's group gives
the worker; on each rebalance it must stop reading, let its batches in flight become
durable, and after Faust's table recovery read on from the committed offsets with the
state of exactly its partitions. The labeled topic must still equal the oracle, and a
repeat must be an identical copy.
"""
from __future__ import annotations

import signal
import time

import pytest

from schemas.pii import PiiHasher
from streams.dev.simulate import generate, produce
from tests.oracle import assert_matches_oracle, oracle_labels
from tests.pipeline_runs import (PII_KEY, dead_letters, labeled_records, load, run_drain,
                                 start_worker, write_pipeline)
from tests.test_crash import _wait_for_output

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ASSIGNED = "reading inputs from"  # logged by the runner once per assignment it reads


def _wait_for_log(path, text: str, times: int, procs, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a worker died on its own"
        if path.read_text(errors="replace").count(text) >= times:
            return
        time.sleep(0.5)
    raise AssertionError(f"{path.name}: {text!r} not logged {times} times within {timeout}s")


def test_partitions_move_between_two_workers(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4)
    cfg = load(path)
    events = generate(cfg, "ctr", 20000, seed=5, rate_per_s=0.5)
    third = len(events) // 3
    produce(broker.bootstrap, cfg, events[:third])
    a = start_worker(path, tmp_path / "a.log")
    b = None
    try:
        seen = _wait_for_output(broker.bootstrap, cfg.topics.labeled, a, 200)
        b = start_worker(path, tmp_path / "b.log")  # the group rebalances: A gives up half
        _wait_for_log(tmp_path / "b.log", ASSIGNED, 1, [a, b])
        _wait_for_log(tmp_path / "a.log", ASSIGNED, 2, [a, b])
        produce(broker.bootstrap, cfg, events[third:2 * third])
        seen = _wait_for_output(broker.bootstrap, cfg.topics.labeled, b, seen + 500)
        a.send_signal(signal.SIGKILL)  # B takes A's partitions after its session times out
        a.wait(10)
        produce(broker.bootstrap, cfg, events[2 * third:])
        _wait_for_log(tmp_path / "b.log", ASSIGNED, 2, [b])
        time.sleep(3)
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
    summary = run_drain(path, tmp_path / "drain.log")

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    dls = dead_letters(broker.bootstrap, cfg.topics.dead_letter)
    assert not [d for d in dls if d["reason"] == "late"]
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    assert_matches_oracle(oracle_labels(cfg, reqs, fbs, PiiHasher(PII_KEY.encode())), labeled)
    repeated = {rid: v for rid, v in copies.items() if len(v) > 1}
    assert all(len(set(v)) == 1 for v in repeated.values()), "a repeat differs from the original"
    print(f"labeled={len(labeled)} repeated={len(repeated)} after: {summary}")
