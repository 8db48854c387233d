"""Batched reading of the input topics, beside Faust's per-record stream path.

Faust delivers every record through its conductor and stream machinery (two
``wait_first`` calls, tasks and an ``asyncio.wait`` per record), which caps a Faust
agent at a few thousand records per second. The worker therefore reads its two input
topics with a plain ``AIOKafkaConsumer`` of its own (no group), in large ``getmany``
batches. Faust keeps everything else: the consumer group and its assignment, the
rebalance callbacks, the changelog-backed state table and its recovery, and the offset
commits (through its group member, see ``commit_input_offsets``).

``keep_inputs_from_faust`` makes Faust's own fetcher skip the input partitions, so a
record is never delivered (and acknowledged, and committed) by Faust behind our back.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable, Mapping, Optional

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.kafka import clients as kafka_clients

log = logging.getLogger("dlabel.input_feed")


class InputFeed:
    """A group-less consumer of the input topics, assigned by hand."""

    def __init__(self, bootstrap: str, client_id: str = "dlabel-input",
                 max_partition_fetch_bytes: int = 16 << 20,
                 fetch_max_bytes: int = 64 << 20) -> None:
        self._settings = dict(
            bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
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

    def highwater(self, tp: TopicPartition) -> Optional[int]:
        """End of ``tp`` from the last fetch response (right on Tansu, unlike ListOffsets)."""
        return self._consumer.highwater(tp) if self._consumer is not None else None


def keep_inputs_from_faust(faust_consumer, topics: Iterable[str]) -> None:
    """Make Faust's fetcher skip the partitions of ``topics`` (they are read by InputFeed).

    Faust still subscribes to them (an agent is declared on them) so that its group
    assignment and table co-partitioning include them; it just never fetches them.
    An empty set of partitions means "all" to aiokafka, so it is never passed on.
    """
    topics = frozenset(topics)
    fetch = faust_consumer._getmany

    async def _getmany(active_partitions, timeout):
        if active_partitions is None:  # client-only app: not the worker
            return await fetch(active_partitions=active_partitions, timeout=timeout)
        wanted = {tp for tp in active_partitions if tp.topic not in topics}
        if not wanted:
            await asyncio.sleep(min(timeout, 0.2))
            return {}
        return await fetch(active_partitions=wanted, timeout=timeout)

    faust_consumer._getmany = _getmany


async def pause_in_faust(faust_consumer, tps: Iterable[TopicPartition]) -> None:
    """Pause ``tps`` in Faust's underlying aiokafka consumer, so that it does not prefetch them.

    Only saves memory and broker work; correctness rests on ``keep_inputs_from_faust``.
    """
    tps = [TopicPartition(tp.topic, tp.partition) for tp in tps]
    thread = getattr(faust_consumer, "_thread", None)
    if not tps or thread is None:
        return

    def _pause() -> None:
        aio = thread._ensure_consumer()
        assigned = aio.assignment()
        aio.pause(*[tp for tp in tps if tp in assigned])

    try:
        await thread.call_thread(_pause)
    except Exception as exc:  # an assignment that moved on meanwhile: harmless
        log.debug("could not pause inputs in Faust's consumer: %r", exc)


async def commit_input_offsets(faust_consumer, offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit ``{tp: next offset to read}`` as Faust's group member; False if rebalanced.

    The commit goes through Faust's consumer because only a member of the group (with
    its generation) may commit for it on a real Kafka cluster.
    """
    if not offsets:
        return True
    return bool(await faust_consumer._commit(dict(offsets)))
