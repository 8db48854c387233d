"""1 -> 2 -> 1 workers in one group: partitions move between them mid-stream, then one dies.

Worker A reads every input partition; worker B joins and the group splits them; then
A's process group (its join and its dataset sink) is SIGKILLed and B takes everything
over - its join A's partitions, its sink the dataset (standing by on the dataset's lock
until A's sink is gone). The runner reads its inputs with its own consumer, assigned
what Faust's group gives the worker; on each rebalance it must stop reading, let its
batches in flight become durable, and after Faust's table recovery read on from the
committed offsets with the state of exactly its partitions.

Who holds what is read from each worker's "reading inputs from" log line (one per
assignment); progress from the group's committed offsets on the broker. At the end the
labeled topic (deduplicated, every repeat identical) and the Parquet dataset (each
request exactly once) equal the oracle.
"""
from __future__ import annotations

import random
import signal

import pytest

from streams.dev.simulate import generate, produce
from streams.kafka.topics import ensure_topics
from tests.fault_probes import (BackgroundProducer, JoinWatch, kill_join_in_flight,
                                wait_join_caught_up, wait_until)
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import (PII_KEY, assignments, dead_letters, kill_group, labeled_records, load,
                                 run_drain, start_worker, write_pipeline)

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.ci]


@pytest.mark.timeout(900)
def test_partitions_move_between_two_workers(any_broker, tmp_path, unique_name):
    broker = any_broker
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4)
    cfg = load(path)
    # the inputs and the repartition topics the join reads (the hop's and the join's tasks)
    everything = {f"{t}:{p}" for t in {cfg.topics.requests, cfg.topics.feedback,
                                       *cfg.join_inputs.values()}
                  for p in range(cfg.topics.partitions)}
    events = generate(cfg, "ctr", 20000, seed=5, rate_per_s=0.5)
    q = len(events) // 4  # quarters, in arrival order: A; A and B; A killed; B
    quarters = [events[:q], events[q:2 * q], events[2 * q:3 * q], events[3 * q:]]
    ensure_topics(broker.bootstrap, cfg)
    produce(broker.bootstrap, cfg, quarters[0])
    watch = JoinWatch(broker.bootstrap, cfg, cfg.topics.partitions,
                      f"dlabel-{cfg.pipeline}")
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = start_worker(path, a_log)
    b = None
    try:
        # one worker: A reads everything
        wait_join_caught_up(broker.bootstrap, cfg, "A consumed the first quarter",
                            alive={"A": a})
        assert assignments(a_log) == [everything]

        # two workers: the group splits the partitions between A and B
        b = start_worker(path, b_log)
        alive = {"A": a, "B": b}
        wait_until(lambda: assignments(b_log) and len(assignments(a_log)) >= 2, 180,
                   "A and B read their shares", alive=alive)
        a_share, b_share = assignments(a_log)[-1], assignments(b_log)[-1]
        assert a_share and b_share and not a_share & b_share and a_share | b_share == everything, \
            (a_share, b_share)
        produce(broker.bootstrap, cfg, quarters[1])
        wait_join_caught_up(broker.bootstrap, cfg, "A and B consumed the second quarter",
                            alive=alive)
        assert assignments(a_log)[-1] == a_share and assignments(b_log)[-1] == b_share

        # one worker again: A's group (join and sink) dies with a batch in flight, proven
        # on A's share; B takes A's partitions once A's session ends, and B's sink, standing
        # by on the dataset's lock, takes over the dataset
        watch.incarnation_started()
        a_parts = {int(tp.rsplit(":", 1)[1]) for tp in a_share
                   if tp.rsplit(":", 1)[0] in cfg.join_inputs.values()}  # A's join tasks
        rnd, proof, rest = random.Random(5), None, list(quarters[2])
        step = -(-len(rest) // 4)
        while proof is None:  # a part at a time until a sample catches A in flight
            assert rest, "A caught up with every part of the third quarter before a proof"
            producer = BackgroundProducer(broker.bootstrap, cfg, rest[:step])
            del rest[:step]
            proof = kill_join_in_flight(a, watch, rnd, producer.is_alive, partitions=a_parts)
            producer.join()
        produce(broker.bootstrap, cfg, rest + quarters[3])
        wait_until(lambda: assignments(b_log)[-1] == everything, 180,
                   "B reads every partition", alive={"B": b})
        wait_join_caught_up(broker.bootstrap, cfg, "B consumed the rest", alive={"B": b})
    finally:
        watch.close()
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                kill_group(proc, signal.SIGKILL)
    summary = run_drain(path, tmp_path / "drain.log")

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
    print(f"A killed in flight: {proof.summary()}")
    print(f"A: {assignments(a_log)}\nB: {assignments(b_log)}\n"
          f"labeled={len(labeled)} repeated={len(repeated)} after: {summary}")
