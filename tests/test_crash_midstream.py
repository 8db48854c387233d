"""SIGKILL the worker while it is busy with a large backlog, several times, then drain.

With batched reading the worker gets through the small inputs of ``test_crash`` before
the kill lands; here the input is large enough that each kill hits the batch pipeline
mid-stream (outputs in flight, state half written, offsets not yet committed).
"""
from __future__ import annotations

import re
import signal
import time

import pytest

from schemas.pii import PiiHasher
from streams.dev.simulate import generate, produce
from tests.oracle import assert_matches_oracle, oracle_labels
from tests.pipeline_runs import (PII_KEY, dead_letters, labeled_records, load, run_drain,
                                 start_worker, write_pipeline)
from tests.test_rebalance import ASSIGNED, _wait_for_log

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_kills_mid_stream_lose_nothing(broker, tmp_path, unique_name, store):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4, store=store)
    cfg = load(path)
    events = generate(cfg, "ctr", 60000, seed=13, rate_per_s=2.0)
    produce(broker.bootstrap, cfg, events)
    log = tmp_path / "worker.log"
    for n, busy_s in enumerate((1.0, 1.5, 1.2), start=1):
        proc = start_worker(path, log)
        try:  # kill once the worker has been reading its inputs for busy_s seconds
            _wait_for_log(log, ASSIGNED, n, [proc])
            time.sleep(busy_s)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    summary = run_drain(path, log, timeout=300)
    starts = [line for line in log.read_text(errors="replace").splitlines() if ASSIGNED in line]
    resumed = re.findall(r": (\d+)", starts[1])  # offsets the second worker started from
    assert any(int(o) > 0 for o in resumed), "the first kill came before any commit"

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    assert not [d for d in dead_letters(broker.bootstrap, cfg.topics.dead_letter)
                if d["reason"] == "late"]
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    assert_matches_oracle(oracle_labels(cfg, reqs, fbs, PiiHasher(PII_KEY.encode())), labeled)
    repeated = {rid: v for rid, v in copies.items() if len(v) > 1}
    assert all(len(set(v)) == 1 for v in repeated.values()), "a repeat differs from the original"
    print(f"{store}: labeled={len(labeled)} repeated={len(repeated)} drain: "
          f"requests={summary['requests']} feedback={summary['feedback']}")
