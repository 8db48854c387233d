"""The embedded broker, topic creation and a produce/consume round trip."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from schemas.config import InputsSpec
from kafka import KafkaConsumer, KafkaProducer

from schemas.errors import BrokerError
from streams.kafka.broker import EmbeddedBroker, probe
from streams.kafka.topics import ensure_topics, partition_count, topic_plan
from tests.waiting import alive, read_to_end, wait_dead

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


def test_start_stop_and_child_gone() -> None:
    b = EmbeddedBroker()
    assert b.pid is None
    with b:
        pid = b.pid
        assert pid is not None and alive(pid)
        assert b.url == f"kafka://127.0.0.1:{b.port}"
        assert b.bootstrap == f"127.0.0.1:{b.port}"
        assert probe("127.0.0.1", b.port)
    assert b.pid is None
    wait_dead(pid)
    assert not probe("127.0.0.1", b.port, timeout=0.5)
    b.stop()  # idempotent


def test_answers_metadata(broker: EmbeddedBroker) -> None:
    assert probe("127.0.0.1", broker.port)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, allow_auto_create_topics=False)
    try:
        assert isinstance(consumer.topics(), set)
    finally:
        consumer.close()


def test_port_in_use_raises(broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        EmbeddedBroker(port=broker.port).start(timeout=3)


def test_child_dies_with_killed_parent(tmp_path: Path) -> None:
    script = ("import time\nfrom streams.kafka.broker import EmbeddedBroker\n"
              "b = EmbeddedBroker().start()\nprint(b.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()  # SIGKILL: no atexit, no cleanup in Python
        parent.wait()
        wait_dead(child)  # else: the broker outlived its killed parent
    finally:
        if parent.poll() is None:
            parent.kill()


def test_ensure_topics_partitions_and_idempotent(broker: EmbeddedBroker, make_config) -> None:
    cfg = make_config("ctr", broker=broker.url, partitions=3)
    extra = f"{cfg.pipeline}.extra"
    ensure_topics(broker.bootstrap, cfg, extra=[extra])
    t = cfg.topics
    for name in (t.requests, t.feedback, t.labeled, t.dead_letter, extra):
        assert partition_count(broker.bootstrap, name) == 3
    assert partition_count(broker.bootstrap, t.windows) == 1
    assert partition_count(broker.bootstrap, t.closed_time) == 1
    ensure_topics(broker.bootstrap, cfg, extra=[extra])  # again: no error, nothing changes
    assert partition_count(broker.bootstrap, t.requests) == 3
    assert set(topic_plan(cfg, [extra])) == {t.requests, t.feedback, t.labeled, t.dead_letter,
                                             t.windows, t.closed_time, extra,
                                             *cfg.join_inputs.values()}
    for name in cfg.join_inputs.values():  # the repartition topics: the join's tasks
        assert partition_count(broker.bootstrap, name) == 3


def test_topics_have_explicit_configs(broker: EmbeddedBroker, make_config) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
    cfg = make_config("ctr", broker=broker.url)
    ensure_topics(broker.bootstrap, cfg)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t)
                                      for t in (cfg.topics.requests, cfg.topics.labeled)],
                                     config_filter="all")
    finally:
        admin.close()
    # inputs: retention is the operator's; Tansu (this broker) never deletes, and dlabel
    # says so with retention.ms=-1 (tansu_quirks; tests/test_topics.py covers Kafka)
    inputs = res["topic"][cfg.topics.requests]
    assert inputs["cleanup.policy"]["value"] == "delete"
    assert inputs["retention.ms"]["value"] == "-1"
    labeled = res["topic"][cfg.topics.labeled]
    assert "retention.ms" in labeled and labeled["cleanup.policy"]["value"] == "delete"


def test_partition_mismatch_raises(broker: EmbeddedBroker, make_config) -> None:
    copartitioned = InputsSpec(copartitioned=True)
    ensure_topics(broker.bootstrap, make_config("ctr", broker=broker.url, partitions=2,
                                                inputs=copartitioned))
    cfg = make_config("ctr", broker=broker.url, partitions=4, inputs=copartitioned)
    with pytest.raises(BrokerError) as err:
        ensure_topics(broker.bootstrap, cfg)
    msg = str(err.value)
    assert cfg.topics.requests in msg and "2 partitions" in msg and "4" in msg
    assert "topics.partitions" in msg


def test_repartitioned_inputs_may_have_any_partition_count(broker: EmbeddedBroker,
                                                          make_config) -> None:
    """With the repartition hop (the default) the inputs keep the producers' partition
    count; the join's own topics are checked as ever."""
    ensure_topics(broker.bootstrap, make_config("ctr", broker=broker.url, partitions=2))
    cfg = make_config("ctr", broker=broker.url, partitions=4)
    with pytest.raises(BrokerError) as err:
        ensure_topics(broker.bootstrap, cfg)
    assert cfg.topics.requests not in str(err.value)
    assert cfg.topics.labeled in str(err.value) or cfg.topics.dead_letter in str(err.value) \
        or any(t in str(err.value) for t in cfg.join_inputs.values())


def test_auto_created_topic_is_detected(broker: EmbeddedBroker, make_config) -> None:
    """A topic looked up before creation gets the broker default (4): a 2-partition config
    whose inputs are the join's own (copartitioned) fails."""
    cfg = make_config("ctr", broker=broker.url, partitions=2,
                      inputs=InputsSpec(copartitioned=True))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    try:
        assert len(producer.partitions_for(cfg.topics.requests)) == 4  # auto-created
    finally:
        producer.close()
    with pytest.raises(BrokerError, match="4 partitions"):
        ensure_topics(broker.bootstrap, cfg)


def test_missing_topic_and_unreachable_broker(broker: EmbeddedBroker, unique_name: str) -> None:
    with pytest.raises(BrokerError, match="does not exist"):
        partition_count(broker.bootstrap, f"{unique_name}.nope")
    with pytest.raises(BrokerError, match="does not exist"):  # and it was not auto-created
        partition_count(broker.bootstrap, f"{unique_name}.nope")
    with pytest.raises(BrokerError, match="cannot reach"):
        partition_count("127.0.0.1:1", "x", timeout=1)


def test_round_trip_across_partitions(broker: EmbeddedBroker, make_config) -> None:
    cfg = make_config("ctr", broker=broker.url, partitions=4)
    ensure_topics(broker.bootstrap, cfg)
    topic, n = cfg.topics.requests, 2000
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             enable_idempotence=False, linger_ms=5)
    try:
        for i in range(n):
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i)
        producer.flush()
    finally:
        producer.close()
    records = read_to_end(broker.bootstrap, topic)  # the whole topic, duplicates included
    assert Counter(r.key for r in records) == Counter(b"k%d" % i for i in range(n))
    assert all(r.value == b"v" + r.key[1:] for r in records)
    assert {r.partition for r in records} == {0, 1, 2, 3}


@pytest.mark.parametrize("policy", [{"cleanup.policy": "delete"},
                                    {"cleanup.policy": "compact,delete", "retention.ms": "3600000"}])
def test_existing_changelog_that_would_lose_state_is_refused(broker: EmbeddedBroker, make_config,
                                                             policy) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    cfg = make_config("ctr", broker=broker.url)
    changelog = f"{cfg.pipeline}.state-changelog"
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(changelog, cfg.topics.partitions, 1, topic_configs=policy)])
    finally:
        admin.close()
    with pytest.raises(BrokerError) as err:
        ensure_topics(broker.bootstrap, cfg, compacted=[changelog])
    msg = str(err.value)
    assert changelog in msg and policy["cleanup.policy"] in msg
    assert "cleanup.policy=compact,retention.ms=-1" in msg


def test_existing_compacted_changelog_is_accepted(broker: EmbeddedBroker, make_config) -> None:
    cfg = make_config("ctr", broker=broker.url)
    changelog = f"{cfg.pipeline}.state-changelog"
    ensure_topics(broker.bootstrap, cfg, compacted=[changelog])
    ensure_topics(broker.bootstrap, cfg, compacted=[changelog])  # again: already right
