"""The embedded Tansu broker's ListOffsets quirk and the fetch-based work-around."""
from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streams.kafka.broker import EmbeddedBroker
from streams.kafka.tansu_quirks import fetch_end_offsets, is_tansu
from tests.waiting import create_state_topic

pytestmark = pytest.mark.broker
log = logging.getLogger(__name__)

N_RECORDS = 20_000
BATCH = 500  # records sent, then awaited, per round: many record batches on the broker


async def _produce(bootstrap: str, topic: str, n: int, partition: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, linger_ms=2)
    await producer.start()
    try:
        for start in range(0, n, BATCH):
            futures = [await producer.send(topic, value=b"r%06d" % i, partition=partition)
                       for i in range(start, min(n, start + BATCH))]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _list_offsets_end(bootstrap: str, tps: list[TopicPartition]) -> dict:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


def test_is_tansu(broker: EmbeddedBroker) -> None:
    assert is_tansu(broker.bootstrap) is True


def test_fetch_end_offsets_counts_every_record_of_batched_produce(
        broker: EmbeddedBroker, unique_name: str, record_property) -> None:
    topic = f"{unique_name}.ends"
    create_state_topic(broker.bootstrap, topic)
    tp = TopicPartition(topic, 0)

    async def scenario():
        await _produce(broker.bootstrap, topic, N_RECORDS)
        listed = await _list_offsets_end(broker.bootstrap, [tp])
        # a generous deadline: past it, fetch_end_offsets falls back to ListOffsets' answer
        fetched = await fetch_end_offsets(broker.bootstrap, [tp], timeout_s=60)
        return listed[tp], fetched

    listed, fetched = asyncio.run(scenario())
    assert fetched == {tp: N_RECORDS}
    record_property("list_offsets_end", listed)
    record_property("under_reported", listed < N_RECORDS)
    log.warning("ListOffsets(latest) end: %d of %d records", listed, N_RECORDS)
    if listed != N_RECORDS:
        # The quirk the module exists for: the broker reports less than it holds.
        assert listed < N_RECORDS


def test_fetch_end_offsets_per_partition_and_empty(broker: EmbeddedBroker, unique_name: str) -> None:
    topic = f"{unique_name}.ends3"
    create_state_topic(broker.bootstrap, topic, partitions=3)
    counts = {0: 3_000, 1: 0, 2: 1_234}

    async def scenario():
        for p, n in counts.items():
            await _produce(broker.bootstrap, topic, n, partition=p)
        return await fetch_end_offsets(broker.bootstrap,
                                       [TopicPartition(topic, p) for p in counts], timeout_s=60)

    assert asyncio.run(scenario()) == {TopicPartition(topic, p): n for p, n in counts.items()}


def test_fetch_end_offsets_of_nothing() -> None:
    # no partitions: no client at all, so even an unreachable bootstrap is fine
    assert asyncio.run(fetch_end_offsets("127.0.0.1:1", [])) == {}
