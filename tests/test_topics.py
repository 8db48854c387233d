"""Topic configs dlabel creates and the existing topics it refuses (on the session broker)."""
from __future__ import annotations

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from schemas.errors import BrokerError
from streams.kafka.topics import CHANGELOG_TOPIC_CONFIGS, ensure_topics, topic_plan

pytestmark = pytest.mark.broker


def _create(bootstrap: str, name: str, partitions: int, configs: dict) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs)])
    finally:
        admin.close()


@pytest.mark.parametrize("policy", [{"cleanup.policy": "delete"},
                                    {"cleanup.policy": "compact,delete", "retention.ms": "3600000"}])
def test_existing_changelog_that_would_lose_state_is_refused(broker, make_config, policy):
    cfg = make_config("ctr", broker=broker.url)
    changelog = f"{cfg.pipeline}.state-changelog"
    _create(broker.bootstrap, changelog, cfg.topics.partitions, policy)
    with pytest.raises(BrokerError) as err:
        ensure_topics(broker.bootstrap, cfg, compacted=[changelog])
    msg = str(err.value)
    assert changelog in msg and policy["cleanup.policy"] in msg
    assert "cleanup.policy=compact,retention.ms=-1" in msg


def test_existing_compacted_changelog_is_accepted(broker, make_config):
    cfg = make_config("ctr", broker=broker.url)
    changelog = f"{cfg.pipeline}.state-changelog"
    ensure_topics(broker.bootstrap, cfg, compacted=[changelog])
    ensure_topics(broker.bootstrap, cfg, compacted=[changelog])  # again: already right


def test_plan_compacts_state_and_reports_and_leaves_input_retention_alone(make_config):
    cfg = make_config("ctr")
    plan = topic_plan(cfg, compacted=["x-changelog"])
    assert plan["x-changelog"][1] == CHANGELOG_TOPIC_CONFIGS
    assert plan[cfg.topics.closed_time] == (1, CHANGELOG_TOPIC_CONFIGS)
    for name in (cfg.topics.requests, cfg.topics.feedback):
        assert plan[name][1] == {"cleanup.policy": "delete"}
    assert CHANGELOG_TOPIC_CONFIGS["cleanup.policy"] == "compact"
    assert CHANGELOG_TOPIC_CONFIGS["retention.ms"] == "-1"


def _described(bootstrap: str, topic: str) -> dict:
    from kafka.admin import ConfigResource, ConfigResourceType
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        got = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)],
                                     config_filter="all")
    finally:
        admin.close()
    return {k: v.get("value") if isinstance(v, dict) else v
            for k, v in (got.get("topic", {}).get(topic) or {}).items()}


def test_inputs_on_tansu_state_their_retention(broker, make_config):
    # Tansu describes only the configs a topic was created with (clients such as Quix
    # Streams fail without retention.ms); it keeps every record, so -1 is the truth
    cfg = make_config("ctr", broker=broker.url)
    ensure_topics(broker.bootstrap, cfg)
    for name in (cfg.topics.requests, cfg.topics.feedback):
        configs = _described(broker.bootstrap, name)
        assert configs.get("retention.ms") == "-1", configs
        assert configs.get("cleanup.policy") == "delete", configs


def test_inputs_on_kafka_keep_the_broker_retention(kafka_broker, make_config):
    # elsewhere the inputs' retention is the operator's: the broker's, no topic override
    cfg = make_config("ctr", broker=kafka_broker.url)
    ensure_topics(kafka_broker.bootstrap, cfg)
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        from kafka.admin import ConfigResource, ConfigResourceType
        got = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, cfg.topics.requests)],
            config_filter="all").get("topic", {}).get(cfg.topics.requests) or {}
    finally:
        admin.close()
    assert got["retention.ms"]["config_source"] != "DYNAMIC_TOPIC_CONFIG", got["retention.ms"]
    assert got["cleanup.policy"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
