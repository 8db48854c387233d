"""Making processed batches durable, in order, while the next batch is processed.

A processed batch leaves three things: its outputs (labeled examples, dead letters),
the join state it changed (already encoded, so later batches cannot alter it) and
the input positions it reached. ``BatchCommitter.submit`` hands the outputs to the
producer at once and queues the rest; a background task then finishes each batch in
submission order:

1. wait until the broker acked the batch's outputs;
2. run the ``after_outputs`` hooks (the closed-time reports), acked likewise;
3. write the batch's state: the table's changelog (acked), and with the RocksDB
   store its local database and the changelog offsets it now holds; the memory store
   is rebuilt from the changelog by Faust's recovery at every rebalance;
4. commit the input positions through the group member.

State written in 3 only reflects outputs acked in 1-2, so after a crash a replayed
request whose label was already sent is sent again as an identical copy; offsets
committed in 4 only cover batches whose state is durable, so nothing is lost. At most
one batch is in flight behind the one being processed: the broker acks one while the
worker computes the next.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

import orjson
from aiokafka.structs import TopicPartition

from streams.kafka.publisher import BatchPublisher

log = logging.getLogger("dlabel.worker")


@dataclass
class Batch:
    """What one processed batch must make durable."""

    outputs: BatchPublisher   # labeled examples and dead letters (sent on submit)
    state: BatchPublisher     # changelog records of the state it changed (sent later)
    store_writes: list        # RocksDB only: [(partition, key bytes, value bytes or None)]
    positions: dict           # {TopicPartition: next offset to read}
    from_input: bool = True   # False: made by the timer (idle inputs, drain)
    closed: Optional[int] = None  # the join's closed time after the batch (DRAINED at the end)
    acked: Optional[dict] = None  # {(topic, partition): last offset} once outputs are acked


#: ``await hook(publisher, batch)`` after a batch's outputs were acked and before its
#: state is written; what it adds to ``publisher`` is acked before the state write too.
AfterOutputsHook = Callable[[BatchPublisher, Batch], Awaitable[None]]


def encode_changes(dirty, prefix: dict, changelog: str, state: BatchPublisher,
                   keep_for_store: bool) -> list:
    """Queue ``take_dirty()`` entries on ``state`` as the table's changelog records.

    ``orjson.dumps`` writes exactly what Faust's (orjson-backed) json serializer writes
    for these plain values, so Faust's recovery reads them back as its own records.
    The publisher copies each record into its batch at once: orjson's bytes objects
    keep a 4 KiB buffer each, so they must not live long. With ``keep_for_store`` the
    encoded pairs are also returned (compact copies), for a RocksDB store.
    """
    dumps, add = orjson.dumps, state.add
    kept = []
    for kind, key, partition, value in dirty:
        k, v = dumps(prefix[kind] + key), dumps(value)
        add(changelog, partition, k, v)
        if keep_for_store:
            kept.append((partition, bytes(memoryview(k)),
                         None if value is None else bytes(memoryview(v))))
    return kept


class BatchCommitter:
    """Finishes submitted batches in order (see the module docstring).

    ``group`` is the worker's ``FaustGroup`` (producer, commits, local store).
    """

    def __init__(self, group, seconds: dict) -> None:
        self.group = group
        self.changelog = group.changelog
        self.after_outputs: list[AfterOutputsHook] = []
        self.committed: dict[TopicPartition, int] = {}
        self.seconds = seconds
        self.on_input_durable: Optional[Callable[[], None]] = None
        self._inflight: Optional[asyncio.Task] = None

    def publisher(self) -> BatchPublisher:
        """A publisher on the worker's producer."""
        return BatchPublisher(self.group.kafka_producer())

    @property
    def keeps_store(self) -> bool:
        """Whether batches must carry their state for a local (RocksDB) store too."""
        return self.group.keeps_local_store

    async def submit(self, batch: Batch) -> None:
        """Send the batch's outputs now; finish it after the batch before it."""
        t0 = time.perf_counter()
        await batch.outputs.send()
        await self.wait()  # at most one batch in flight
        self._inflight = task = asyncio.ensure_future(self._finish(batch))
        task.add_done_callback(self._crash_on_error)
        self.seconds["submit"] += time.perf_counter() - t0

    def _crash_on_error(self, task: asyncio.Task) -> None:
        # Nothing may wait on the task (an idle input): stop the worker on a failure.
        if not task.cancelled() and task.exception() is not None:
            log.error("finishing a batch failed: %r", task.exception())
            asyncio.ensure_future(self.group.crash(task.exception()))

    async def wait(self) -> None:
        """Wait until every submitted batch is durable; raise what failed."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def _finish(self, batch: Batch) -> None:
        clock, seconds = time.perf_counter, self.seconds
        t0 = clock()
        batch.acked = await batch.outputs.flush()
        t1 = clock()
        for hook in self.after_outputs:
            pub = self.publisher()
            await hook(pub, batch)
            await pub.flush()
        t2 = clock()
        await self._write_state(batch)
        t3 = clock()
        offsets = {tp: off for tp, off in batch.positions.items()
                   if self.committed.get(tp) != off}
        if offsets and await self.group.commit(offsets):
            self.committed.update(offsets)
        t4 = clock()
        for step, dt in (("outputs_acked", t1 - t0), ("hooks", t2 - t1),
                         ("state_written", t3 - t2), ("committed", t4 - t3)):
            seconds[step] += dt
        if batch.from_input and self.on_input_durable is not None:
            self.on_input_durable()

    async def _write_state(self, batch: Batch) -> None:
        last = await batch.state.flush()
        if batch.store_writes:  # memory store: recovery reads the changelog at each rebalance
            self.group.write_local_store(batch.store_writes, last)
