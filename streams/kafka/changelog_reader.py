"""Reading a changelog topic back in bulk: the latest value of every key.

Faust's table recovery hands every changelog record through an asyncio queue, one
event object and a few awaits each, and replayed 4,000-7,500 records/s here: 18-32 s
for the join state of a 100k-request backlog, most of a restart. A plain
``AIOKafkaConsumer`` reading the same partitions with large ``getmany`` batches, keeping
only the last value per key, reads them at the raw client's rate.

Where the data ends: under ``read_committed`` the consumer's end offsets are the last
stable offsets (a task's previous owner must be fenced first, so that no transaction of
it is still open: ``TaskProducers.ensure``); on Tansu ListOffsets under-reports, so the
ends come from a fetch's high watermark (``tansu_quirks``). A partition is read until
the consumer's position (which moves past transaction markers and aborted records)
reaches its end.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from schemas.errors import BrokerError
from streams.kafka import clients as kafka_clients
from streams.kafka.tansu_quirks import fetch_end_offsets

log = logging.getLogger("dlabel.changelog")


async def read_latest(bootstrap: str, tps: Iterable[TopicPartition], *,
                      read_committed: bool, tansu: bool = False,
                      stall_timeout_s: float = 60.0) -> tuple[dict, dict]:
    """``({key bytes: (partition, value bytes)}, {tp: records read})``: the last value
    of each key in ``tps`` up to their ends now. A key whose last value is a tombstone
    (None) or JSON ``null`` is absent. Raises if a partition stops moving short of its
    end for ``stall_timeout_s``."""
    tps = list(tps)
    if not tps:
        return {}, {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20,
        # a fetch of partitions at their end waits this long; stopping waits for it
        fetch_max_wait_ms=50,
        **kafka_clients.aiokafka())
    await consumer.start()
    try:
        consumer.assign(tps)
        ends = (await fetch_end_offsets(bootstrap, tps) if tansu
                else await consumer.end_offsets(tps))
        # an explicit seek: ``seek_to_beginning`` races with the reset that ``assign``
        # starts, and ``position`` then answered the end (seen on Kafka 4.4)
        for tp, begin in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, begin)
        latest: dict = {}
        counts = {tp: 0 for tp in tps}
        remaining = set()
        for tp in tps:
            if await consumer.position(tp) < ends[tp]:
                remaining.add(tp)
        moved_at = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=50_000)
            for tp, records in batch.items():
                end = ends[tp]
                partition = tp.partition
                n = 0
                for r in records:
                    if r.offset < end:
                        latest[r.key] = (partition, r.value)
                        n += 1
                counts[tp] += n
            if batch:
                moved_at = time.monotonic()
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if remaining and time.monotonic() - moved_at > stall_timeout_s:
                raise BrokerError(
                    f"reading the changelog stalled for {stall_timeout_s:g}s short of its "
                    f"end: { {f'{tp.topic}:{tp.partition}': ends[tp] for tp in remaining} } "
                    f"({{partition: end offset}}); check that the broker is up and serves "
                    f"these partitions (`dlabel status`), then start the worker again")
            await asyncio.sleep(0)
        return ({k: v for k, v in latest.items() if v[1] is not None and v[1] != b"null"},
                counts)
    finally:
        await consumer.stop()
