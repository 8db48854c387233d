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
