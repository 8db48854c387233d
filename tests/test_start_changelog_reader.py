"""Start-up reads: the join state's changelog in bulk, and input batches that take from
every partition.

- ``read_latest`` (``streams.kafka.changelog_reader``), what a worker with the memory
  store reads instead of Faust's per-record recovery: the last value of each key, keys
  whose last value is a tombstone or JSON null absent, every record up to the end
  (on Tansu, whose ListOffsets under-reports batched partitions, too), and under
  ``read_committed`` nothing of an aborted transaction (Apache Kafka).
- ``InputFeed.getmany`` over a backlog in two partitions: a batch holds records of
  both, not the whole of one partition first (aiokafka's own order), so a request and
  its feedback meet within the first batches.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import TopicPartition

from streams.kafka.changelog_reader import read_latest
from streams.kafka.input_feed import InputFeed
from tests.waiting import create_state_topic


async def _produce(bootstrap: str, topic: str, records, **producer) -> None:
    """``records``: [(partition, key, value)], sent in rounds of 500 then awaited (many
    record batches on the broker, as a worker's producer writes them)."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2, **producer)
    await p.start()
    try:
        for start in range(0, len(records), 500):
            futures = [await p.send(topic, key=k, value=v, partition=part)
                       for part, k, v in records[start:start + 500]]
            await asyncio.gather(*futures)
    finally:
        await p.stop()


def _changelog(n_keys: int, rounds: int) -> tuple[list, dict]:
    """Records overwriting ``n_keys`` keys ``rounds`` times over 2 partitions, the last
    round deleting every third key (alternately a tombstone and JSON null); the
    expected ``{key: (partition, value)}``."""
    records, want = [], {}
    for r in range(rounds):
        for i in range(n_keys):
            key, part = b'"r:%d"' % i, i % 2
            value = b'{"v":%d}' % r
            if r == rounds - 1 and i % 3 == 0:
                value = None if i % 2 else b"null"
            records.append((part, key, value))
            if value is None or value == b"null":
                want.pop(key, None)
            else:
                want[key] = (part, value)
    return records, want


@pytest.mark.broker
def test_read_latest_keeps_the_last_value_of_each_key_to_the_true_end(broker, unique_name):
    topic = f"{unique_name}-changelog"
    create_state_topic(broker.bootstrap, topic, 2)
    records, want = _changelog(4000, 3)
    asyncio.run(_produce(broker.bootstrap, topic, records, enable_idempotence=False))
    tps = [TopicPartition(topic, p) for p in range(2)]
    latest, counts = asyncio.run(read_latest(broker.bootstrap, tps, read_committed=False,
                                             tansu=True))
    assert latest == want
    assert sum(counts.values()) == len(records)  # nothing dropped at the tail
    empty, none = asyncio.run(read_latest(broker.bootstrap, [], read_committed=False))
    assert empty == {} and none == {}


@pytest.mark.kafka
def test_read_latest_read_committed_skips_aborted_transactions(kafka_broker, unique_name):
    topic = f"{unique_name}-changelog"
    create_state_topic(kafka_broker.bootstrap, topic, 2)
    records, want = _changelog(1000, 2)

    async def write() -> None:
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all",
                             enable_idempotence=True, transactional_id=f"{unique_name}-tx")
        await p.start()
        try:
            async with p.transaction():
                for part, k, v in records:
                    await p.send(topic, key=k, value=v, partition=part)
            await p.begin_transaction()  # overwrites every key, then aborts
            for part, k, _ in records:
                await p.send(topic, key=k, value=b'{"aborted":1}', partition=part)
            await p.abort_transaction()
            async with p.transaction():  # one committed record after the aborted ones
                await p.send(topic, key=b'"r:1"', value=b'{"v":9}', partition=1)
        finally:
            await p.stop()

    async def fence() -> None:
        """What a worker does before it reads a task's changelog: register the task's
        transactional id (InitProducerId returns once the last transaction is complete,
        markers written, so the last stable offset is where the committed data ends)."""
        p = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all",
                             enable_idempotence=True, transactional_id=f"{unique_name}-tx")
        await p.start()
        try:  # as TaskProducers.ensure: the id is registered once a transaction ends
            await p.begin_transaction()
            await p.abort_transaction()
        finally:
            await p.stop()

    asyncio.run(write())
    asyncio.run(fence())
    want[b'"r:1"'] = (1, b'{"v":9}')
    tps = [TopicPartition(topic, p) for p in range(2)]
    latest, _ = asyncio.run(read_latest(kafka_broker.bootstrap, tps, read_committed=True))
    assert latest == want


@pytest.mark.broker
def test_input_batches_take_from_every_partition(broker, unique_name):
    a, b = f"{unique_name}-a", f"{unique_name}-b"
    for topic in (a, b):
        create_state_topic(broker.bootstrap, topic, 1)
        asyncio.run(_produce(broker.bootstrap, topic,
                             [(0, None, b"x" * 200) for _ in range(6000)],
                             enable_idempotence=False))
    tps = [TopicPartition(a, 0), TopicPartition(b, 0)]

    async def first_batches() -> list[dict]:
        feed = InputFeed(broker.bootstrap)
        await feed.start()
        try:
            await feed.assign({tp: None for tp in tps})
            out, seen = [], 0
            # until both partitions' first fetches are buffered (a fetch response sets
            # the partition's high watermark): the fair shares are of buffered records
            deadline = time.monotonic() + 60
            while any(feed.highwater(tp) is None for tp in tps):
                assert time.monotonic() < deadline, "no fetch response for both partitions"
                await asyncio.sleep(0.02)
            while seen < 4000:
                batch = await feed.getmany(timeout_ms=1000, max_records=1000)
                counts = {tp: len(recs) for tp, recs in batch.items()}
                seen += sum(counts.values())
                out.append(counts)
                positions = {tp: await feed.position(tp) for tp in tps}
                for tp, recs in batch.items():  # in order, none skipped
                    assert positions[tp] == recs[-1].offset + 1
            return out
        finally:
            await feed.stop()

    batches = asyncio.run(first_batches())
    for counts in batches:
        assert sum(counts.values()) <= 1000
    total = {tp: sum(c.get(tp, 0) for c in batches) for tp in tps}
    # each partition got about half of the first 4,000 records (aiokafka's own getmany
    # returned 4,000 of one partition, then the other)
    assert all(1500 <= n <= 2500 for n in total.values()), (total, batches)
