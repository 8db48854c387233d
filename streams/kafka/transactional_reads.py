"""Where the committed data of a transactionally written partition ends.

A partition written in transactions ends with a commit marker, a control record no
consumer ever receives. A reader that waits for the record at "end offset - 1" (as
Faust's table recovery does) waits forever; it must wait for the last committed *data*
record instead, which is what ``last_committed_offsets`` finds: it reads the tail of
each partition ``read_committed`` (aborted records and markers are skipped) and keeps
the largest offset it received.
"""
from __future__ import annotations

from typing import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.kafka import clients as kafka_clients

#: records read back from the end at first (doubled until a committed record is found)
TAIL = 64


async def last_committed_offsets(bootstrap: str, tps: Iterable[TopicPartition],
                                 timeout_ms: int = 10_000) -> dict[TopicPartition, int]:
    """``{tp: offset of the last committed data record}`` (-1 for none) below each
    partition's last stable offset."""
    tps = list(tps)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed",
                                **kafka_clients.aiokafka())
    await consumer.start()
    try:
        consumer.assign(tps)
        stable = await consumer.end_offsets(tps)  # the LSO under read_committed
        begin = await consumer.beginning_offsets(tps)
        return {tp: await _last_committed(consumer, tp, begin[tp], stable[tp], timeout_ms)
                for tp in tps}
    finally:
        await consumer.stop()


async def _last_committed(consumer: AIOKafkaConsumer, tp: TopicPartition, begin: int,
                          stable: int, timeout_ms: int) -> int:
    tail = TAIL
    while True:
        start = max(begin, stable - tail)
        consumer.seek(tp, start)
        last = -1
        while await consumer.position(tp) < stable:
            batch = await consumer.getmany(tp, timeout_ms=timeout_ms)
            for record in batch.get(tp, ()):
                if record.offset < stable:
                    last = max(last, record.offset)
            if not batch:
                break
        if last >= 0 or start <= begin:
            return last
        tail *= 4
