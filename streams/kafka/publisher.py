"""Publishing many records at once with aiokafka's batch API.

Faust's ``Topic.send`` and ``Table.send_changelog`` cost tens of microseconds per record
(a FutureMessage, a PendingMessage, callbacks, serializer lookups). A join batch
publishes thousands of records to a few known partitions, so ``BatchPublisher``
appends them to aiokafka ``BatchBuilder``s (one open batch per topic-partition) and
hands each full batch to the producer; ``flush`` waits until the broker acked all of
them and reports the last offset written to every partition.
"""
from __future__ import annotations

import asyncio
from typing import Optional


class BatchPublisher:
    """Collects records per topic-partition and sends them as producer batches."""

    def __init__(self, producer) -> None:
        self._producer = producer  # a started aiokafka AIOKafkaProducer
        self._open: dict[tuple[str, int], list] = {}  # tp -> [BatchBuilder, count]
        self._full: list[tuple[tuple[str, int], object, int]] = []
        self._pending: list[tuple[tuple[str, int], int, asyncio.Future]] = []
        self._loose: list[asyncio.Future] = []

    def __len__(self) -> int:
        return len(self._pending) + len(self._full) + len(self._open) + len(self._loose)

    def add(self, topic: str, partition: int, key: Optional[bytes],
            value: Optional[bytes], headers: Optional[list] = None) -> None:
        """Queue one record for ``topic``/``partition`` (sent as batches by ``flush``).

        ``headers``: ``[(name, bytes)]`` or None.
        """
        tp = (topic, partition)
        entry = self._open.get(tp)
        if entry is None:
            entry = self._open[tp] = [self._producer.create_batch(), 0]
        if entry[0].append(key=key, value=value, timestamp=None, headers=headers) is None:
            if entry[1]:
                self._full.append((tp, entry[0], entry[1]))
            entry[0], entry[1] = self._producer.create_batch(), 0
            if entry[0].append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes does not fit in "
                                 f"a producer batch for {topic}")
        entry[1] += 1

    async def add_any_partition(self, topic: str, key: Optional[bytes],
                                value: Optional[bytes]) -> None:
        """Send one record to a partition the producer's partitioner chooses (rare records)."""
        self._loose.append(await self._producer.send(topic, value=value, key=key))

    async def send(self) -> None:
        """Hand every queued record to the producer now, without waiting for acks."""
        full, self._full = self._full, []
        full.extend((tp, batch, n) for tp, (batch, n) in self._open.items() if n)
        self._open.clear()
        for tp, batch, n in full:
            fut = await self._producer.send_batch(batch, tp[0], partition=tp[1])
            self._pending.append((tp, n, fut))

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send what is queued, wait for every ack; ``{(topic, partition): last offset}``.

        Raises the producer's error if any batch failed (nothing is committed then).
        """
        await self.send()
        pending, self._pending = self._pending, []
        loose, self._loose = self._loose, []
        if not pending and not loose:
            return {}
        results = await asyncio.gather(*(f for _, _, f in pending), *loose)
        last: dict[tuple[str, int], int] = {}
        for (tp, count, _), meta in zip(pending, results):
            if meta is not None and meta.offset is not None:
                end = meta.offset + count - 1
                if end > last.get(tp, -1):
                    last[tp] = end
        return last


class TaskPublishers:
    """Records routed by task (the input partition they belong to), one publisher each.

    ``producer_for(task)`` names the producer of a task: under exactly-once each task has
    its own transactional producer; at least once every task shares one producer, and
    then one publisher serves them all.
    """

    def __init__(self, producer_for) -> None:
        self._producer_for = producer_for
        self._by_producer: dict[int, BatchPublisher] = {}
        self._by_task: dict[int, BatchPublisher] = {}

    def for_task(self, task: int) -> BatchPublisher:
        """The publisher of ``task``'s records."""
        pub = self._by_task.get(task)
        if pub is None:
            producer = self._producer_for(task)
            pub = self._by_producer.get(id(producer))
            if pub is None:
                pub = self._by_producer[id(producer)] = BatchPublisher(producer)
            self._by_task[task] = pub
        return pub

    def __len__(self) -> int:
        return sum(len(p) for p in self._by_producer.values())

    async def send(self) -> None:
        """Hand every queued record to its producer now, without waiting for acks."""
        for pub in self._by_producer.values():
            await pub.send()

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send and wait for every ack; ``{(topic, partition): last offset}`` over all tasks."""
        last: dict[tuple[str, int], int] = {}
        for pub in self._by_producer.values():
            for tp, offset in (await pub.flush()).items():
                if offset > last.get(tp, -1):
                    last[tp] = offset
        return last
