"""SIGTERM stops the join worker in order: exit code 0, and labels equal the oracle after.

The worker is stopped while it works through a backlog (batches in flight); Faust stops
its producer after the app's ``on_before_shutdown`` signal, so the batch loop must let
the batch in flight finish there (``BatchLoop.stop``), not crash on a closed producer.
"""
from __future__ import annotations

import pytest

from streams.dev.simulate import generate, produce
from tests.oracle import assert_examples_match, expected_examples
from tests.pipeline_runs import (PII_KEY, labeled_records, load, run_drain, worker_cmd,
                                 worker_env, write_pipeline)
from tests.soak_run import stop_worker
from tests.waiting import wait_until

pytestmark = pytest.mark.broker


def test_sigterm_mid_backlog_exits_cleanly(any_broker, tmp_path, unique_name):
    import subprocess
    from pathlib import Path

    broker = any_broker
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4)
    cfg = load(path)
    events = generate(cfg, "ctr", 20000, seed=11)
    produce(broker.bootstrap, cfg, events)
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(worker_cmd(path, "--only", "join", "--batch-size", "500"),
                                stdout=out, stderr=subprocess.STDOUT,
                                env=worker_env(),
                                cwd=str(Path(__file__).resolve().parent.parent),
                                start_new_session=True)

    def busy() -> bool:  # its first labels were just handed over: a batch in flight
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        return "first labels handed to the producer" in log.read_text(errors="replace")
    try:
        wait_until(busy, timeout=180, interval=0.02, what="the worker labeling its backlog")
    finally:
        rc = stop_worker(proc)
    text = log.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "Crashed" not in text and "finishing a batch failed" not in text, text[-3000:]

    run_drain(path, tmp_path / "drain.log")
    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    assert_examples_match(expected_examples(path, reqs, fbs, PII_KEY.encode()), labeled.values())
    assert all(len(set(v)) == 1 for v in copies.values()), "repeated records must be identical"
