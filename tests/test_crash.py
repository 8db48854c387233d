"""Crash and restart against the real broker: SIGKILL the worker while its join has a
batch in flight, restart it, and drain.

Each kill is proven to land in flight (``tests/fault_probes.py``): more input is being
produced, the worker's process group (the join and its dataset sink) is frozen at a
random moment, and it is killed only once the join is seen to have labeled outputs on
the broker for input its consumer group had not committed - outputs the restart must
produce again, from state that only reflects what was acked. Then, after a drain:

- the labeled topic, deduplicated by request id, equals the oracle (every field), and
  a record repeated by the at-least-once replay is an identical copy;
- the Parquet dataset written by the sink (killed with the join, mid-stream) equals the
  oracle, each request exactly once;
- windows were closed and announced.

The join state is recovered from its changelog on the embedded broker, which needs the
fetch-high-watermark fix of ``streams.kafka.tansu_quirks`` (without it Faust drops the
changelog's tail); the RocksDB store also keeps it on local disk.
"""
from __future__ import annotations

import random

import pytest

from streams.dev.simulate import generate, produce
from streams.kafka.topics import ensure_topics
from tests.fault_probes import (BackgroundProducer, JoinWatch, kill_join_in_flight,
                                wait_join_caught_up)
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import (PII_KEY, dead_letters, kill_group, labeled_records, load,
                                 run_drain, start_worker, write_pipeline)

pytestmark = pytest.mark.broker


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kills,store", [(1, "memory"), (1, "rocksdb"),
                                         pytest.param(3, "memory", marks=pytest.mark.slow)])
def test_sigkill_in_flight_and_restart_loses_nothing(broker, tmp_path, unique_name, kills,
                                                     store):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4, store=store)
    cfg = load(path)
    events = generate(cfg, "ctr", 6000, seed=11, rate_per_s=0.5)  # ~200 min of event time
    # 8 chunks of ~25 min in arrival order; the first before the worker starts, then one
    # per kill attempt while the worker runs, the rest before the drain
    size = -(-len(events) // 8)
    chunks = [events[i:i + size] for i in range(0, len(events), size)]
    ensure_topics(broker.bootstrap, cfg)
    produce(broker.bootstrap, cfg, chunks.pop(0))
    watch = JoinWatch(broker.bootstrap, cfg, cfg.topics.partitions,
                      f"dlabel-{cfg.pipeline}")
    rnd = random.Random(kills)
    log = tmp_path / "worker.log"
    proofs, proc = [], None
    try:
        while len(proofs) < kills:
            assert chunks, f"input exhausted after {len(proofs)} proven kill(s)"
            if proc is None:
                watch.incarnation_started()
                proc = start_worker(path, log)
                wait_join_caught_up(broker.bootstrap, cfg, "the worker consumed its input",
                                    alive={"worker": proc})
            producer = BackgroundProducer(broker.bootstrap, cfg, chunks.pop(0))
            ev = kill_join_in_flight(proc, watch, rnd, producer.is_alive)
            producer.join()
            if ev is not None:  # killed: the next round starts a new worker
                proofs.append(ev.summary())
                proc = None
    finally:
        watch.close()
        if proc is not None:
            kill_group(proc)
    for chunk in chunks:
        produce(broker.bootstrap, cfg, chunk)
    summary = run_drain(path, log)

    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
    assert not [d for d in dead_letters(broker.bootstrap, cfg.topics.dead_letter)
                if d["reason"] == "late"]
    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    assert_examples_match(expected, labeled)
    repeated = {rid: v for rid, v in copies.items() if len(v) > 1}
    assert all(len(set(v)) == 1 for v in repeated.values()), "a repeat differs from the original"
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
    assert summary["sink"]["windows_closed"] + summary["sink"]["windows_sent"] > 0
    for p in proofs:
        print("kill in flight:", p)
    print(f"kills={kills} store={store} labeled={len(labeled)} repeated={len(repeated)} "
          f"after restart: {summary}")
