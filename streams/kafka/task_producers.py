"""One transactional producer per task, for exactly-once output on brokers with transactions.

A *task* is an input partition number: requests partition ``p``, feedback partition
``p`` and the join state's changelog partition ``p`` always move between workers
together (they are co-partitioned), and every output of the join belongs to one task.
Each task gets its own ``transactional.id`` (``<prefix>-<task>``), as Kafka Streams
does without KIP-447 (aiokafka's ``send_offsets_to_transaction`` carries no group
generation): when a task moves, its new owner's producer registers the same id, which
aborts whatever the previous owner left open and fences it, so a zombie can never
commit for that task again.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from aiokafka import AIOKafkaProducer

from streams.kafka import clients as kafka_clients

log = logging.getLogger("dlabel.transactions")

#: How long a transaction may stay open before the broker aborts it (a stuck or
#: killed worker must not hold ``read_committed`` readers back for long).
TRANSACTION_TIMEOUT_MS = 30_000

#: Back-off before a transactional request is retried (aiokafka's default: 100 ms). The
#: common retry is CONCURRENT_TRANSACTIONS: the next transaction's first request while
#: the coordinator still writes the last one's commit markers, a few milliseconds.
RETRY_BACKOFF_MS = 20


class TaskProducers:
    """Holds a started transactional producer for each task this worker owns."""

    def __init__(self, bootstrap: str, transactional_prefix: str, **producer_settings) -> None:
        self.bootstrap = bootstrap
        self.prefix = transactional_prefix
        self.settings = producer_settings
        self._producers: dict[int, AIOKafkaProducer] = {}

    def transactional_id(self, task: int) -> str:
        return f"{self.prefix}-{task}"

    @property
    def tasks(self) -> set[int]:
        return set(self._producers)

    def producer(self, task: int) -> AIOKafkaProducer:
        """The producer of ``task``; KeyError if this worker does not own it."""
        return self._producers[task]

    async def ensure(self, tasks: Iterable[int], fence: Iterable = ()) -> None:
        """Hold a producer for each of ``tasks`` (those already held are kept).

        A new producer registers its transactional id before this returns: from then
        on any earlier holder of the task is fenced and its open transaction aborted.
        The ids of ``fence`` (tasks not held) are registered the same way, then let go:
        at every assignment, as whoever held one may have registered it since.
        """
        new = sorted(set(tasks) - set(self._producers), key=str)
        only_fence = sorted(set(fence) - set(tasks), key=str)
        # registered side by side: one at a time took ~0.12 s each, 1.4 s for the 12
        # tasks of a 4-partition pipeline with the repartition hop, at every start
        results = await asyncio.gather(*(self._register(task) for task in new + only_fence),
                                       return_exceptions=True)
        failed = None
        for task, result in zip(new + only_fence, results):
            if isinstance(result, BaseException):
                failed = failed or result
            elif task in only_fence:
                await result.stop()
            else:
                self._producers[task] = result
        if failed is not None:
            raise failed

    async def _register(self, task) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True,
            transactional_id=self.transactional_id(task),
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, retry_backoff_ms=RETRY_BACKOFF_MS,
            **self.settings, **kafka_clients.aiokafka())
        await producer.start()
        try:
            # registering the id (InitProducerId) is what fences the previous owner
            await producer.begin_transaction()
            await producer.abort_transaction()
        except BaseException:
            await producer.stop()
            raise
        log.debug("transactional producer %s registered", self.transactional_id(task))
        return producer

    async def close(self) -> None:
        """Stop every producer (their tasks may move to another worker now)."""
        producers, self._producers = self._producers, {}
        for producer in producers.values():
            await producer.stop()
