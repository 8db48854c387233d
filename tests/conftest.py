"""Shared fixtures: one embedded broker per test session, unique names, example configs.

Tests that talk to Kafka take the ``broker`` fixture and carry ``@pytest.mark.broker``.
Topics live as long as the session's broker, so every test names its own topics with
``unique_name`` (or ``make_config``, which does it for you).
"""
from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from schemas.config import PipelineConfig, TopicsSpec, load_config
from streams.kafka.broker import EmbeddedBroker

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "broker: needs the embedded Tansu broker (started by the test session)")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One embedded Tansu broker on a free port for the whole session (stopped at the end)."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    b = EmbeddedBroker(log_path=str(log)).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="session")
def kafka_broker():
    """One Apache Kafka (KRaft, official jars) for the whole session.

    Skipped, saying why, only where Java 17+ is missing (or the jars are not cached and
    Maven is missing); CI has both.
    """
    from schemas.errors import BrokerError
    from streams.kafka.kafka_broker import KafkaBroker
    try:
        b = KafkaBroker().start()
    except BrokerError as e:
        pytest.skip(f"Apache Kafka cannot run here: {e}")
    try:
        yield b
    finally:
        b.stop()


ENGINES = ("tansu", "kafka")


@pytest.fixture(params=ENGINES)
def any_broker(request: pytest.FixtureRequest):
    """The test runs once on each engine: the embedded Tansu broker (at least once,
    no transactions) and Apache Kafka (exactly once)."""
    if request.param == "kafka":
        request.applymarker(pytest.mark.kafka)
        return request.getfixturevalue("kafka_broker")
    return request.getfixturevalue("broker")


@pytest.fixture
def unique_name() -> str:
    """A fresh name prefix like ``t3f9c0a1b2d`` for this test's topics and pipeline."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_config(unique_name: str) -> Callable[..., PipelineConfig]:
    """Factory: an example config (``ctr`` or ``airport``) with this test's unique topics.

    ``make_config("ctr", broker=broker.url, partitions=2, suffix="a")``; any other
    keyword replaces that top-level PipelineConfig field. Dataset and model paths stay
    as in the example; pass ``dataset=``/``model=`` to point them at ``tmp_path``.
    """
    def make(scenario: str = "ctr", broker: str | None = None, partitions: int = 4,
             suffix: str = "", **fields: object) -> PipelineConfig:
        cfg = load_config(EXAMPLES / f"{scenario}.yaml", broker=broker)
        name = f"{unique_name}{suffix}"
        topics = TopicsSpec(requests=f"{name}.requests", feedback=f"{name}.feedback",
                            labeled=f"{name}.labeled", dead_letter=f"{name}.dead-letter",
                            windows=f"{name}.windows", closed_time=f"{name}.closed-time",
                            partitions=partitions,
                            replication_factor=cfg.topics.replication_factor)
        return dataclasses.replace(cfg, pipeline=name, topics=topics, **fields)
    return make
