"""SIGKILL the worker three times while it works through a large backlog, then drain.

The whole input is produced first, so the join is busy with it when it dies. Each kill
takes the worker's whole process group - the join *and* its dataset sink child, as a
container runtime would - at a random moment proven to be in flight
(``tests/fault_probes.py``: frozen, then killed only with labeled outputs on the broker
for input its group had not committed). At least one kill lands after the join's first
commit (mid-stream, not at the start). After the drain the labeled topic (deduplicated,
repeats identical) and the Parquet dataset (each request exactly once) equal the oracle.
"""
from __future__ import annotations

import random

import pytest

from streams.dev.simulate import generate, produce
from streams.kafka.topics import ensure_topics
from tests.fault_probes import JoinWatch, kill_join_in_flight, wait_until
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import (PII_KEY, dead_letters, kill_group, labeled_records, load,
                                 run_drain, start_worker, write_pipeline)

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("store", ["memory", "rocksdb"])
def test_kills_mid_stream_lose_nothing(broker, tmp_path, unique_name, store):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4, store=store)
    cfg = load(path)
    events = generate(cfg, "ctr", 60000, seed=13, rate_per_s=2.0)
    ensure_topics(broker.bootstrap, cfg)
    produce(broker.bootstrap, cfg, events)
    watch = JoinWatch(broker.bootstrap, cfg, cfg.topics.partitions,
                      f"dlabel-{cfg.pipeline}")
    watch.index_inputs()  # read the backlog now, not while a worker is frozen
    rnd = random.Random(13)
    log = tmp_path / "worker.log"
    proofs = []
    try:
        for n in range(1, 4):
            watch.incarnation_started()
            proc = start_worker(path, log)
            try:
                # the join is busy once this incarnation's first outputs are on the broker
                wait_until(lambda: watch.labeled.read() or None, 180,
                           f"worker {n}: first labeled outputs", alive={"worker": proc})
                ev = kill_join_in_flight(proc, watch, rnd, busy=lambda: False)
            finally:
                if proc.poll() is None:
                    kill_group(proc)
            assert ev is not None, f"worker {n} went through the whole backlog before a " \
                "proven kill; make the backlog larger"
            proofs.append(ev.summary())
    finally:
        watch.close()
    assert any(c > 0 for p in proofs for parts in p["committed"].values()
               for c in parts.values()), f"every kill came before the first commit: {proofs}"
    summary = run_drain(path, log, timeout=600)

    assert not [d for d in dead_letters(broker.bootstrap, cfg.topics.dead_letter)
                if d["reason"] == "late"]
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    assert_examples_match(expected, labeled)
    repeated = {rid: v for rid, v in copies.items() if len(v) > 1}
    assert all(len(set(v)) == 1 for v in repeated.values()), "a repeat differs from the original"
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
    for p in proofs:
        print("kill in flight:", p)
    print(f"{store}: labeled={len(labeled)} repeated={len(repeated)} drain: "
          f"requests={summary['requests']} feedback={summary['feedback']}")
