"""The windows topic as ``--until-idle`` reads it: to its end first, then until idle."""
from __future__ import annotations

import json

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from jobs.feed import WindowsFeed
from jobs.runner import run_until_idle
from schemas.errors import BrokerError
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import ensure_topics
from tests.jobs_support import on_tmp
from tests.waiting import end_offsets


def _produce(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> None:
    """``(partition, value)`` records, acknowledged by the broker."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    try:
        for partition, value in values:
            producer.send(topic, value=value, partition=partition).get(timeout=60)
    finally:
        producer.close()


@pytest.mark.broker
def test_until_idle_reads_every_event_already_there_even_with_no_idle_time(
        broker: EmbeddedBroker, make_config, tmp_path):
    """``idle_s`` counts only after the end the topic had at the start: with 0, a run
    still reads (and counts) every event published before it, however slow the fetch."""
    cfg = on_tmp(make_config("ctr", broker=broker.url), tmp_path, retries=0)
    ensure_topics(broker.bootstrap, cfg)
    events = [json.dumps({"pipeline": "another", "window_start": f"2026-11-18T1{i}:00:00Z"})
              .encode() for i in range(4)]  # another pipeline's: counted, nothing to train
    _produce(broker.bootstrap, cfg.topics.windows, [(0, v) for v in events])
    s = run_until_idle(cfg, idle_s=0)
    assert (s.events, s.ignored, s.trained, s.failed) == (4, 4, [], [])


@pytest.mark.broker
def test_the_feed_reads_every_partition_to_its_end(broker: EmbeddedBroker, unique_name: str):
    """Several partitions, one of them empty: every record up to the ends, in
    partition order."""
    topic = f"{unique_name}.windows"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        admin.close()
    sent = [(0, b"a0"), (2, b"c0"), (0, b"a1"), (2, b"c1"), (2, b"c2")]
    _produce(broker.bootstrap, topic, sent)
    assert end_offsets(broker.bootstrap, topic) == {0: 2, 1: 0, 2: 3}
    feed = WindowsFeed(broker.bootstrap, topic)
    try:
        got = feed.read_until_idle(idle_s=0)
    finally:
        feed.close()
    assert sorted(got) == sorted(v for _, v in sent)
    assert [v for v in got if v.startswith(b"c")] == [b"c0", b"c1", b"c2"]


@pytest.mark.broker
def test_until_idle_on_a_missing_windows_topic_fails_naming_it(
        broker: EmbeddedBroker, make_config, tmp_path):
    """Not an empty, successful run: the topic is named, with how to fix it."""
    cfg = on_tmp(make_config("ctr", broker=broker.url), tmp_path)  # no ensure_topics
    with pytest.raises(BrokerError) as failed:
        run_until_idle(cfg, idle_s=0)
    message = str(failed.value)
    assert f"the windows topic {cfg.topics.windows!r} does not exist on" in message
    assert "topics.windows" in message and "dlabel worker" in message
