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
from typing import Iterable, Mapping, Optional

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

from streams.kafka import clients as kafka_clients

log = logging.getLogger("dlabel.input_feed")


class InputFeed:
    """A group-less consumer of the input topics, assigned by hand."""

    def __init__(self, bootstrap: str, client_id: str = "dlabel-input",
                 max_partition_fetch_bytes: int = 16 << 20,
                 fetch_max_bytes: int = 64 << 20, read_committed: bool = False,
                 fetch_max_wait_ms: int = 50) -> None:
        """``fetch_max_wait_ms``: how long the broker may hold a fetch of partitions at
        their end (aiokafka's default, 500 ms, is latency a live input pays whenever
        the broker answers only at the deadline, as Tansu does)."""
        self._settings = dict(
            bootstrap_servers=bootstrap, client_id=client_id, group_id=None,
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            max_partition_fetch_bytes=max_partition_fetch_bytes,
            fetch_max_bytes=fetch_max_bytes, fetch_max_wait_ms=fetch_max_wait_ms)
        self._consumer: Optional[AIOKafkaConsumer] = None  # made in start(): needs the loop
        self._started = False
        self._turn = 0

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

    async def getmany(self, timeout_ms: int, max_records: int,
                      wait_for: Iterable[TopicPartition] = ()) -> dict:
        """Up to ``max_records`` fetched records: ``{TopicPartition: [ConsumerRecord]}``.

        Every partition with fetched records gets a fair share of the batch. aiokafka's
        own ``getmany`` drains its buffered partitions one after another, and a fetch
        holds up to ``max_partition_fetch_bytes`` (a whole partition of a backlog): a
        worker catching up then read all of one topic's partition before the other's,
        so the first labels (a request *and* its feedback) came only after seconds,
        and early feedback piled up in the join state. Records are decoded only when
        returned, so asking per partition costs no extra decoding.

        Waits up to ``timeout_ms`` for any record when none is buffered; with
        ``wait_for``, for a record of those partitions (of the assigned ones) instead,
        then takes what else is buffered at once.
        """
        consumer = self._consumer
        if consumer is None or not consumer.assignment():
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        if max_records <= 0:
            return {}
        assigned = consumer.assignment()
        tps = sorted(assigned)
        out: dict = {}
        room = max_records
        share = max(1, max_records // len(tps))
        wait = sorted(tp for tp in wait_for if tp in assigned)
        if wait and timeout_ms > 0:
            out = await consumer.getmany(*wait, timeout_ms=timeout_ms,
                                         max_records=max(1, max_records // 2))
            room -= sum(map(len, out.values()))
            timeout_ms = 0  # waited: the rest is what is buffered now
        if len(tps) == 1 and not out:
            return await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        start = self._turn % len(tps)  # who goes first rotates from batch to batch
        self._turn += 1
        tps = tps[start:] + tps[:start]
        for quota in (share, None):  # a fair share each, then what is left, in turn
            for tp in tps:
                if room <= 0:
                    break
                got = await consumer.getmany(tp, timeout_ms=0,
                                             max_records=min(quota or room, room))
                recs = got.get(tp)
                if recs:
                    if tp in out:
                        out[tp].extend(recs)
                    else:
                        out[tp] = recs
                    room -= len(recs)
            if room <= 0 or not out:
                break
        if out or timeout_ms <= 0:
            return out
        # nothing buffered: wait for the next fetch to bring anything
        return await consumer.getmany(timeout_ms=timeout_ms, max_records=share)

    async def position(self, tp: TopicPartition) -> int:
        """The offset of the next record ``getmany`` would return for ``tp`` (past any
        transaction markers and aborted records it skipped, unlike the last record's)."""
        return await self._consumer.position(tp)

    def highwater(self, tp: TopicPartition) -> Optional[int]:
        """End of ``tp`` from the last fetch response (right on Tansu, unlike ListOffsets)."""
        return self._consumer.highwater(tp) if self._consumer is not None else None
