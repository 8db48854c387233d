"""Batched reading of the input topics, beside Faust's per-record stream path.

Faust delivers every record through its conductor and stream machinery (two
``wait_first`` calls, tasks and an ``asyncio.wait`` per record), which caps a Faust
agent at a few thousand records per second. The worker therefore reads its two input
topics with a plain ``AIOKafkaConsumer`` of its own (no group), in large ``getmany``
batches. Faust keeps everything else: the consumer group and its assignment, the
rebalance callbacks, the changelog-backed state table and its recovery, and the offset
commits (through its group member): see ``streams.join.faust_adapter``, which also
keeps Faust's own fetcher off the input partitions.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Mapping, Optional

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.kafka import clients as kafka_clients

log = logging.getLogger("dlabel.input_feed")


class InputFeed:
    """A group-less consumer of the input topics, assigned by hand."""

    def __init__(self, bootstrap: str, client_id: str = "dlabel-input",
                 max_partition_fetch_bytes: int = 16 << 20,
                 fetch_max_bytes: int = 64 << 20, read_committed: bool = False) -> None:
        self._settings = dict(
            bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=fetch_max_bytes)
        self._consumer: Optional[AIOKafkaConsumer] = None  # made in start(): needs the loop
        self._started = False

    async def start(self) -> None:
        """Connect (idempotent)."""
        if not self._started:
            self._consumer = AIOKafkaConsumer(**self._settings, **kafka_clients.aiokafka())
            await self._consumer.start()
            self._started = True

    async def stop(self) -> None:
        """Disconnect (idempotent)."""
        if self._started:
            self._started = False
            await self._consumer.stop()

    async def assign(self, positions: Mapping[TopicPartition, Optional[int]]
                     ) -> dict[TopicPartition, int]:
        """Read exactly these partitions, each from its offset (None: from the beginning).

        Returns the offset each partition will be read from.
        """
        consumer = self._consumer
        consumer.assign(list(positions))
        start = [tp for tp, offset in positions.items() if offset is None]
        for tp, offset in positions.items():
            if offset is not None:
                consumer.seek(tp, offset)
        if start:
            await consumer.seek_to_beginning(*start)
        return {tp: await consumer.position(tp) for tp in positions}

    def unassign(self) -> None:
        """Stop reading every partition (a rebalance is under way)."""
        if self._started:
            self._consumer.assign([])

    async def getmany(self, timeout_ms: int, max_records: int) -> dict:
        """Up to ``max_records`` fetched records: ``{TopicPartition: [ConsumerRecord]}``."""
        if self._consumer is None or not self._consumer.assignment():
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        return await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record ``getmany`` would return for ``tp`` (past any
        transaction markers and aborted records it skipped, unlike the last record's)."""
        return await self._consumer.position(tp)

    def highwater(self, tp: TopicPartition) -> Optional[int]:
        """End of ``tp`` from the last fetch response (right on Tansu, unlike ListOffsets)."""
        return self._consumer.highwater(tp) if self._consumer is not None else None
