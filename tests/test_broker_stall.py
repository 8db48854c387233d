"""A stalled broker (SIGSTOP for 15 s, then SIGCONT) mid-stream: the worker and the
sink carry on without help, nothing is lost, and the stall shows in logs and metrics.

The stall itself is the fault, so it lasts a fixed 15 s; every check waits on its
condition (metrics, log lines, committed offsets) with a deadline instead of sleeping.
"""
from __future__ import annotations

import os
import re
import signal
import time
import urllib.request

import pytest

from streams.dev.simulate import generate, produce
from streams.kafka.broker import EmbeddedBroker, free_port
from tests.fault_probes import wait_join_caught_up, wait_until
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import (PII_KEY, kill_group, labeled_records, load, run_drain,
                                 start_worker, write_pipeline)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STALL_S = 15.0


def _broker_up(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
            m = re.search(r"^dlabel_broker_up (\S+)$", r.read().decode(), re.M)
            return float(m.group(1)) if m else None
    except OSError:
        return None


@pytest.mark.timeout(900)
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
        alive = {"worker": worker}
        try:
            wait_until(lambda: _broker_up(port) == 1 and _broker_up(port + 1) == 1, 120,
                       "join and sink report the broker up", alive=alive)
            wait_join_caught_up(broker.bootstrap, cfg, "the join consumed the first half",
                                alive=alive)
            os.kill(broker.pid, signal.SIGSTOP)
            stall_end = time.monotonic() + STALL_S
            try:
                # visible during the stall: both metrics drop to 0 before it ends
                wait_until(lambda: _broker_up(port) == 0 and _broker_up(port + 1) == 0,
                           STALL_S, "the stall shown in the join's and the sink's metrics",
                           alive=alive)
                time.sleep(max(0.0, stall_end - time.monotonic()))  # the fault: 15 s stall
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            wait_until(lambda: _broker_up(port) == 1 and _broker_up(port + 1) == 1, 120,
                       "the metrics show the broker up again", alive=alive)
            produce(broker.bootstrap, cfg, events[half:])  # more input after the stall
            wait_join_caught_up(broker.bootstrap, cfg, "the join consumed the second half",
                                alive=alive)
            wait_until(lambda: re.search(r"answers again after", log.read_text(errors="replace")),
                       60, "the recovery logged", alive=alive)
        finally:
            kill_group(worker, signal.SIGTERM)
        text = log.read_text(errors="replace")
        assert re.search(r"did not answer within .* \(stalled or unreachable\)", text)

        run_drain(path, tmp_path / "drain.log")
        reqs = [e.value for e in events if e.role == "requests"]
        fbs = [e.value for e in events if e.role == "feedback"]
        expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
        labeled, _ = labeled_records(broker.bootstrap, cfg.topics.labeled)
        assert_examples_match(expected, labeled)
        assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
