"""Making processed batches durable, in order: at least once, or exactly once.

A processed batch leaves three things: its outputs (labeled examples, dead letters),
the join state it changed (already encoded, so later batches cannot alter it) and
the input positions it reached. Every record belongs to a *task* (the input partition
number it came from, see ``streams.kafka.task_producers``).

At least once (brokers without transactions: Tansu), ``BatchCommitter.submit`` hands
the outputs to the producer at once and a background task finishes each batch in
submission order while the next one is processed:

1. wait until the broker acked the batch's outputs;
2. run the ``after_outputs`` hooks (the closed-time reports), acked likewise;
3. write the batch's state: the table's changelog (acked), and with the RocksDB
   store its local database and the changelog offsets it now holds;
4. commit the input positions through the group member.

State written in 3 only reflects outputs acked in 1-2, so after a crash a replayed
request whose label was already sent is sent again as an identical copy; offsets
committed in 4 only cover batches whose state is durable, so nothing is lost.

Exactly once (brokers with transactions): the same steps run inside one Kafka
transaction per task, which also carries the task's input offsets
(``send_offsets_to_transaction``) and then commits; the RocksDB store is written only
after the commit. Inside a transaction the order of the writes does not matter (all or
nothing becomes visible), so the state and the input offsets go in with the outputs
and the hooks' records without waiting for acks in between: fewer round trips before
each commit. A crash anywhere leaves an open transaction that the task's next owner
aborts, so ``read_committed`` readers see every output once. One batch is in
flight at a time (a transactional producer has one open transaction).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

import orjson
from aiokafka.structs import TopicPartition

from streams.kafka.publisher import TaskPublishers
from streams.kafka.task_producers import TaskProducers

log = logging.getLogger("dlabel.worker")


@dataclass
class Batch:
    """What one processed batch must make durable."""

    outputs: TaskPublishers   # labeled examples and dead letters (sent on submit)
    state: TaskPublishers     # changelog records of the state it changed (sent later)
    store_writes: list        # RocksDB only: [(partition, key bytes, value bytes or None)]
    positions: dict           # {TopicPartition: next offset to read}
    from_input: bool = True   # False: made by the timer (idle inputs, drain)
    closed: Optional[int] = None  # the join's closed time after the batch (DRAINED at the end)
    acked: Optional[dict] = None  # {(topic, partition): last offset} once outputs are acked
    tasks: set = field(default_factory=set)  # the tasks (input partitions) it covers
    offsets_added: Optional[asyncio.Future] = None  # exactly once: offsets in the txns

    def __post_init__(self) -> None:
        self.tasks = self.tasks or {tp.partition for tp in self.positions}


#: ``await hook(publishers, batch)`` after a batch's outputs were acked and before its
#: state is written; what it adds to ``publishers`` is acked before the state write too.
AfterOutputsHook = Callable[[TaskPublishers, Batch], Awaitable[None]]


def encode_changes(dirty, prefix: dict, changelog: str, state: TaskPublishers,
                   keep_for_store: bool) -> list:
    """Queue ``take_dirty()`` entries on ``state`` as the table's changelog records.

    ``orjson.dumps`` writes exactly what Faust's (orjson-backed) json serializer writes
    for these plain values, so Faust's recovery reads them back as its own records.
    The publisher copies each record into its batch at once: orjson's bytes objects
    keep a 4 KiB buffer each, so they must not live long. With ``keep_for_store`` the
    encoded pairs are also returned (compact copies), for a RocksDB store.
    """
    dumps, for_task = orjson.dumps, state.for_task
    kept = []
    for kind, key, partition, value in dirty:
        k, v = dumps(prefix[kind] + key), dumps(value)
        for_task(partition).add(changelog, partition, k, v)
        if keep_for_store:
            kept.append((partition, bytes(memoryview(k)),
                         None if value is None else bytes(memoryview(v))))
    return kept


class BatchCommitter:
    """Finishes submitted batches in order (see the module docstring).

    ``group`` is the worker's ``FaustGroup`` (shared producer, commits, local store);
    ``transactions`` the task producers when the broker has transactions.
    """

    def __init__(self, group, seconds: dict,
                 transactions: Optional[TaskProducers] = None,
                 task_of: Callable[[TopicPartition], Any] = lambda tp: tp.partition) -> None:
        self.group = group
        self.task_of = task_of
        self.transactions = transactions
        self.changelog = group.changelog
        self.after_outputs: list[AfterOutputsHook] = []
        self.committed: dict[TopicPartition, int] = {}
        self.seconds = seconds
        self.on_input_durable: Optional[Callable[[], None]] = None
        #: the worker is shutting down: a batch that fails now is logged, not a crash
        self.stopping = False
        self._inflight: Optional[asyncio.Task] = None

    @property
    def exactly_once(self) -> bool:
        return self.transactions is not None

    def publishers(self) -> TaskPublishers:
        """Publishers routing records to their task's producer."""
        if self.transactions is not None:
            return TaskPublishers(self.transactions.producer)
        shared = self.group.kafka_producer()
        return TaskPublishers(lambda task: shared)

    @property
    def keeps_store(self) -> bool:
        """Whether batches must carry their state for a local (RocksDB) store too."""
        return self.group.keeps_local_store

    async def own_tasks(self, tasks, fence=()) -> None:
        """Exactly once: hold the producers of ``tasks`` (fencing their previous owner),
        and fence the transactional ids of ``fence`` without holding them."""
        if self.transactions is not None:
            await self.transactions.ensure(tasks, fence=fence)

    async def release_tasks(self) -> None:
        """Exactly once: let go of every task's producer (a rebalance is under way)."""
        if self.transactions is not None:
            await self.transactions.close()

    async def open_batch(self, tasks) -> None:
        """Before a batch's first record: exactly once, wait for the batch before it and
        begin a transaction per task (a transactional producer has one open at a time)."""
        if self.transactions is not None:
            t0 = time.perf_counter()
            await self.wait()
            for task in sorted(tasks, key=str):
                await self.transactions.producer(task).begin_transaction()
            self.seconds["submit"] += time.perf_counter() - t0

    async def submit(self, batch: Batch) -> None:
        """Send the batch's outputs now; finish it after the batch before it."""
        t0 = time.perf_counter()
        if self.transactions is not None:
            # its transactions were begun by ``open_batch``; the state goes along at once:
            # one transaction holds both, so it need not wait for the outputs' acks
            await batch.outputs.send()
            await batch.state.send()
            # and the input offsets (AddOffsetsToTxn, TxnOffsetCommit) while those are
            # acked; the batch before it is committed (``open_batch``), so ``committed``
            # is current
            offsets = self._new_offsets(batch)
            batch.offsets_added = asyncio.ensure_future(self._add_offsets(batch, offsets))
        else:
            await batch.outputs.send()
            await self.wait()  # at most one batch in flight
        self._inflight = task = asyncio.ensure_future(self._finish(batch))
        task.add_done_callback(self._crash_on_error)
        self.seconds["submit"] += time.perf_counter() - t0

    def _crash_on_error(self, task: asyncio.Task) -> None:
        # Nothing may wait on the task (an idle input): stop the worker on a failure.
        if not task.cancelled() and task.exception() is not None:
            if self.stopping:  # its input is read again after the restart
                log.warning("finishing a batch failed while stopping: %r", task.exception())
                return
            log.error("finishing a batch failed: %r", task.exception())
            asyncio.ensure_future(self.group.crash(task.exception()))

    @property
    def busy(self) -> bool:
        """Whether a submitted batch is still being made durable."""
        return self._inflight is not None and not self._inflight.done()

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
        hooks = []
        for hook in self.after_outputs:
            pubs = self.publishers()
            await hook(pubs, batch)
            if self.transactions is not None:
                await pubs.send()  # acked below, together with the state
            else:
                await pubs.flush()
            hooks.append(pubs)
        t2 = clock()
        changelog_ends = await batch.state.flush()
        for pubs in hooks:
            await pubs.flush()
        if self.transactions is None and batch.store_writes:
            self.group.write_local_store(batch.store_writes, changelog_ends)
        t3 = clock()
        if self.transactions is not None:
            offsets = await batch.offsets_added
            await self._commit_transactions(batch)
            if batch.store_writes:  # only what the transactions made visible
                self.group.write_local_store(batch.store_writes, changelog_ends)
            self.committed.update(offsets)
        elif (offsets := self._new_offsets(batch)) and await self.group.commit(offsets):
            self.committed.update(offsets)
        t4 = clock()
        for step, dt in (("outputs_acked", t1 - t0), ("hooks", t2 - t1),
                         ("state_written", t3 - t2), ("committed", t4 - t3)):
            seconds[step] += dt
        if batch.from_input and self.on_input_durable is not None:
            self.on_input_durable()

    def _new_offsets(self, batch: Batch) -> dict:
        """The batch's input positions that moved since the last commit."""
        return {tp: off for tp, off in batch.positions.items()
                if self.committed.get(tp) != off}

    async def _add_offsets(self, batch: Batch, offsets: dict) -> dict:
        """Add each task's input offsets to its open transaction; returns ``offsets``."""
        group_id = self.group.group_id

        async def add(task) -> None:
            mine = {tp: off for tp, off in offsets.items() if self.task_of(tp) == task}
            if mine:
                await self.transactions.producer(task).send_offsets_to_transaction(
                    mine, group_id)

        # the tasks' transactions are independent: their round trips overlap
        await asyncio.gather(*(add(task) for task in sorted(batch.tasks, key=str)))
        return offsets

    async def _commit_transactions(self, batch: Batch) -> None:
        """Commit each task's transaction (outputs, state and offsets are in it)."""
        await asyncio.gather(*(self.transactions.producer(task).commit_transaction()
                               for task in sorted(batch.tasks, key=str)))
