"""The Kafka I/O of the join worker's dataflow, with no join: a floor under its cost.

``io_floor(..., hop=True)`` does what the worker's records cost in the Kafka client and
nothing else, in one asyncio loop as the worker does: it reads the request and feedback
topics (aiokafka ``getmany``), parses each value once (``orjson.loads``: the hop must
read the key), appends it to a repartition topic of its role, partitioned by murmur2 of
the key (``BatchPublisher``, the worker's batch API), reads both repartition topics
back, parses each value again (the join must), and writes one record per request to an
output topic (the labeled examples). ``hop=False`` is the copartitioned dataflow: read
the inputs, parse, write one record per request.

Left out, so this is a floor and not a model of the worker: the join state's changelog
(one record per request and one per finalized request), offset commits, transactions,
waiting for acks before the next batch (everything is acked once, at the end), and all
of the join's own work. A worker's rate over the raw consumer's can be at most this
pass-through's; ``bench_join.py --io-floor`` measures both side by side in every run.
"""
from __future__ import annotations

import asyncio
import sys
import time
import uuid
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.kafka.partitioner import partitions_for  # noqa: E402
from streams.kafka.publisher import BatchPublisher  # noqa: E402
from streams.kafka.tansu_quirks import fetch_end_offsets  # noqa: E402

BATCH = 5000  # records per getmany, as the worker's --batch-size


def _create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        admin.wait_for_topics(names, timeout_ms=30_000)
    finally:
        admin.close()


def input_consumer(bootstrap: str) -> AIOKafkaConsumer:
    """A group-less consumer with the raw read's fetch sizes (``bench_join.raw_consume``
    uses it too, so the floor and the ceiling fetch alike)."""
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                            group_id=None, max_partition_fetch_bytes=4 << 20,
                            fetch_max_bytes=16 << 20)


async def _read_all(consumer: AIOKafkaConsumer, total: int, on_records) -> None:
    n, idle_since = 0, time.monotonic()
    while n < total:
        batches = await consumer.getmany(timeout_ms=200, max_records=BATCH)
        for tp, records in batches.items():
            await on_records(tp.topic, records)
            n += len(records)
        if batches:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 30:
            raise RuntimeError(f"I/O floor read stalled at {n} of {total} records")


async def io_floor(bootstrap: str, requests: str, feedback: str, partitions: int,
                   key_field: str, hop: bool) -> tuple[int, float]:
    """Run the pass-through once over every record of ``requests`` and ``feedback``;
    (input records, seconds from the first read to the last output acked)."""
    tag = uuid.uuid4().hex[:8]
    hop_topics = {requests: f"floor-{tag}-requests-hop", feedback: f"floor-{tag}-feedback-hop"}
    out_topic = f"floor-{tag}-out"
    _create_topics(bootstrap, [out_topic] + (list(hop_topics.values()) if hop else []),
                   partitions)
    inputs = [TopicPartition(t, p) for t in (requests, feedback) for p in range(partitions)]
    total = sum((await fetch_end_offsets(bootstrap, inputs)).values())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1,
                                max_batch_size=256 * 1024, max_request_size=4 << 20)
    source, joined = input_consumer(bootstrap), input_consumer(bootstrap)
    await producer.start()
    await source.start()
    await joined.start()
    try:
        source.assign(inputs)
        await source.seek_to_beginning(*inputs)
        publisher = BatchPublisher(producer)
        request_topics = {requests, hop_topics[requests]}

        def key_of(record) -> bytes:
            try:  # the simulator's invalid events (dead letters) keep their record key
                return orjson.loads(record.value)[key_field].encode()
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                return record.key or b""

        async def route(topic: str, records: list) -> None:
            keys = [key_of(r) for r in records]
            target = hop_topics[topic]
            for r, key, p in zip(records, keys, partitions_for(keys, partitions)):
                publisher.add(target, p, key, r.value)
            await publisher.send()

        async def label(topic: str, records: list) -> None:
            for r in records:
                try:
                    orjson.loads(r.value)
                except orjson.JSONDecodeError:
                    pass
                if topic in request_topics:
                    publisher.add(out_topic, r.partition, r.key, r.value)
            await publisher.send()

        t0 = time.perf_counter()
        if hop:
            hops = [TopicPartition(t, p) for t in hop_topics.values() for p in range(partitions)]
            joined.assign(hops)
            await joined.seek_to_beginning(*hops)
            await asyncio.gather(_read_all(source, total, route),
                                 _read_all(joined, total, label))
        else:
            await _read_all(source, total, label)
        await publisher.flush()
        return total, time.perf_counter() - t0
    finally:
        await joined.stop()
        await source.stop()
        await producer.stop()
