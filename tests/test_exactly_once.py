"""Exactly once on Apache Kafka: SIGKILLs of the worker mid-stream, no label twice.

The worker (join and sink) is killed with its whole process group five times while it
is busy with a backlog, then restarted; a last run drains. Afterwards a
``read_committed`` consumer of the labeled topic sees every request's label exactly once
and equal to the oracle, and the Parquet dataset equals the oracle too.

The kills must land on open transactions, or the test proves nothing: right after each
kill, a ``read_uncommitted`` reader of the labeled or changelog topic sees more than a
``read_committed`` one (the dead worker's transaction is still open), and most kills
must show it. At the end those topics hold aborted records that read_committed never
shows.
"""
from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.dev.simulate import generate, produce
from streams.join.faust_adapter import changelog_topic
from streams.kafka.topics import ensure_topics
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import PII_KEY, kill_group, load, run_drain, start_worker, \
    write_pipeline
from tests.waiting import wait_until


pytestmark = pytest.mark.kafka

KILLS = 5
PARTITIONS = 3


def _read(bootstrap: str, topic: str, isolation: str) -> list:
    """Every record of ``topic`` up to its current end (LSO for read_committed)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, isolation_level=isolation,
                             consumer_timeout_ms=2000)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)  # the LSO under read_committed
        records = []
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=500).values():
                records.extend(recs)
        return records
    finally:
        consumer.close()


def _produce_paced(bootstrap: str, cfg, events: list, per_second: int = 5_000) -> None:
    """Produce ``events`` in order at about ``per_second``, as a live source would."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    topics = {"requests": cfg.topics.requests, "feedback": cfg.topics.feedback}
    try:
        step = max(1, per_second // 100)
        for i, event in enumerate(events):
            producer.send(topics[event.role], key=event.key, value=event.value,
                          timestamp_ms=event.arrival_ms)
            if i % step == step - 1:
                time.sleep(0.01)  # pacing the feed, not waiting for anything
        producer.flush()
    finally:
        producer.close()


def _offsets_reader(bootstrap: str, isolation: str, topics) -> KafkaConsumer:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, isolation_level=isolation)
    for topic in topics:  # metadata first: end_offsets leaves out partitions it does not know
        wait_until(lambda: consumer.partitions_for_topic(topic), what=f"metadata of {topic}")
    return consumer


def _ids(records) -> Counter:
    return Counter(json.loads(r.value)["request_id"] for r in records)


def test_labels_exactly_once_across_sigkills(kafka_broker, tmp_path: Path):
    name = "eos" + tmp_path.name[-8:].replace("_", "")
    path = write_pipeline(tmp_path, "ctr", kafka_broker.url, name, partitions=PARTITIONS,
                          dataset={"flush_rows": 500, "flush_interval": "2s"})
    cfg = load(path)
    # one request a second: each chunk spans an hour of event time, so labels flow
    events = generate(cfg, "ctr", 24_000, seed=11, rate_per_s=1.0)
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    # produced in arrival order, a chunk before each run, so every run has a backlog
    chunks = [events[i * len(events) // (KILLS + 1):(i + 1) * len(events) // (KILLS + 1)]
              for i in range(KILLS + 1)]
    labeled = cfg.topics.labeled

    # every topic exists before anything looks at it (a lookup would auto-create it)
    ensure_topics(kafka_broker.bootstrap, cfg, compacted=[changelog_topic(cfg)])
    watched = [TopicPartition(topic, p) for topic in (labeled, changelog_topic(cfg))
               for p in range(PARTITIONS)]
    topics = (labeled, changelog_topic(cfg))
    committed_view = _offsets_reader(kafka_broker.bootstrap, "read_committed", topics)
    uncommitted_view = _offsets_reader(kafka_broker.bootstrap, "read_uncommitted", topics)

    def open_transaction() -> bool:
        """Records beyond the last stable offset: a transaction is open right now."""
        stable = committed_view.end_offsets(watched)
        return any(end > stable[tp] for tp, end in uncommitted_view.end_offsets(watched).items())

    landed_in_transaction = 0
    try:
        for kill in range(KILLS):
            worker = start_worker(path, tmp_path / f"worker-{kill}.log")
            # the chunk arrives while the worker runs, so it is busy with transactions
            feeder = threading.Thread(target=_produce_paced,
                                      args=(kafka_broker.bootstrap, cfg, chunks[kill]))
            feeder.start()
            wait_until(open_transaction, timeout=180, interval=0.001,
                       what=f"worker {kill} in a transaction")
            assert worker.poll() is None, f"worker {kill} exited on its own"
            kill_group(worker)
            if open_transaction():  # still open after the kill: it landed in flight
                landed_in_transaction += 1
            feeder.join()
    finally:
        committed_view.close()
        uncommitted_view.close()
    # a kill can fall just after a commit; most must land inside a transaction
    assert landed_in_transaction >= KILLS // 2 + 1, (
        f"only {landed_in_transaction} of {KILLS} kills landed on an open transaction")

    produce(kafka_broker.bootstrap, cfg, chunks[KILLS])
    summary = run_drain(path, tmp_path / "drain.log", timeout=400)
    assert summary["pending"] == 0

    committed = _read(kafka_broker.bootstrap, labeled, "read_committed")
    counts = _ids(committed)
    repeated = {rid: n for rid, n in counts.items() if n > 1}
    assert not repeated, f"{len(repeated)} labels repeated under read_committed"
    expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
    assert_examples_match(expected, [json.loads(r.value) for r in committed])
    # the kills left aborted records behind (labels or state), which only
    # read_uncommitted shows and the restarted worker did not count
    aborted = sum(len(_read(kafka_broker.bootstrap, topic, "read_uncommitted"))
                  - len(_read(kafka_broker.bootstrap, topic, "read_committed"))
                  for topic in topics)
    assert aborted > 0, "no kill aborted a transaction's records"
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
