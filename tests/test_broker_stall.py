"""A stalled broker (SIGSTOP for 15 s, then SIGCONT) mid-stream: the worker and the
sink carry on without help, nothing is lost, and the stall shows in logs and metrics."""
from __future__ import annotations

import os
import re
import signal
import time
import urllib.request

import pytest

from schemas.pii import PiiHasher
from streams.kafka.broker import EmbeddedBroker, free_port
from streams.dev.simulate import generate, produce
from tests.oracle import assert_matches_oracle, oracle_labels
from tests.pipeline_runs import (PII_KEY, dataset_examples, kill_group, labeled_records, load,
                                 run_drain, start_worker, write_pipeline)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _broker_up(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            m = re.search(r"^dlabel_broker_up (\S+)$", r.read().decode(), re.M)
            return float(m.group(1)) if m else None
    except OSError:
        return None


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.5)
    return False


def test_broker_stall_is_survived_and_visible(tmp_path, unique_name):
    with EmbeddedBroker(log_path=str(tmp_path / "broker.log")) as broker:
        broker.start()
        path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=2)
        cfg = load(path)
        events = generate(cfg, "ctr", 4000, seed=21, rate_per_s=0.5)
        half = len(events) // 2
        produce(broker.bootstrap, cfg, events[:half])
        port = free_port("127.0.0.1")
        log = tmp_path / "worker.log"
        worker = start_worker(path, log, "--metrics-port", str(port))
        try:
            assert _wait(lambda: _broker_up(port) == 1 and _broker_up(port + 1) == 1, 60)
            assert _wait(lambda: "join state loaded" in log.read_text(errors="replace"), 60)
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                assert _wait(lambda: _broker_up(port) == 0 and _broker_up(port + 1) == 0, 12), \
                    "the stall does not show in the metrics"
                time.sleep(max(0.0, 15 - 6))
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            assert _wait(lambda: _broker_up(port) == 1 and _broker_up(port + 1) == 1, 30)
            produce(broker.bootstrap, cfg, events[half:])  # more input after the stall
            time.sleep(3)
            assert worker.poll() is None, log.read_text(errors="replace")[-3000:]
        finally:
            kill_group(worker, signal.SIGTERM)
        text = log.read_text(errors="replace")
        assert re.search(r"did not answer within .* \(stalled or unreachable\)", text)
        assert re.search(r"answers again after", text)

        run_drain(path, tmp_path / "drain.log")
        reqs = [e.value for e in events if e.role == "requests"]
        fbs = [e.value for e in events if e.role == "feedback"]
        expected = oracle_labels(cfg, reqs, fbs, PiiHasher(PII_KEY.encode()))
        labeled, _ = labeled_records(broker.bootstrap, cfg.topics.labeled)
        assert_matches_oracle(expected, labeled)
        assert_matches_oracle(expected, dataset_examples(cfg.dataset.path))
