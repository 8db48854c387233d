"""The worker's side of the group: when its batch loop may read, and from where.

Faust's group revokes every partition before a rebalance (``on_revoked``), assigns the
new ones (``on_assigned``) and recovers the state table; at shutdown the app stops
(``stop``). Each bumps ``generation`` and clears ``ready``: the loop drops a batch it
fetched under an older generation (its records are read again later) and reads again
only once ``become_ready``, after the table's recovery, has owned the assignment's
tasks (under exactly once, fencing their previous owners) and had the loop reload the
join and assign its feed from the committed offsets. Whoever processes a batch or changes the
assignment holds ``lock``: a rebalance waits for the batch being processed.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from streams.join.batch_commit import BatchCommitter
from streams.join.hop_tasks import HopTasks

log = logging.getLogger("dlabel.worker")

#: How long a stopping worker waits for the batch in flight to become durable.
STOP_WAIT_S = 10.0


class AssignmentGate:
    """Whether, and for which assignment, the batch loop may read.

    ``group``: the worker's ``FaustGroup``; ``feed``: the loop's ``InputFeed``;
    ``roles``: topic -> role of every topic the feed reads; ``count_partitions(topic)``:
    a topic's partition count, awaited."""

    def __init__(self, group, committer: BatchCommitter, feed, hop: HopTasks, roles: dict,
                 count_partitions: Callable[[str], Awaitable[int]]) -> None:
        self.group, self.committer, self.feed, self.hop = group, committer, feed, hop
        self.roles, self.count_partitions = roles, count_partitions
        self.lock = asyncio.Lock()
        self.ready = False       # state loaded and feed assigned for the current assignment
        self.stopping = False    # the app is shutting down: no new batches
        self.generation = 0      # bumped by every rebalance callback

    def current(self, generation: int) -> bool:
        """Ready, and still for the assignment of ``generation``."""
        return generation == self.generation and self.ready

    async def on_revoked(self) -> None:
        """The group is revoking partitions: stop reading; let the batch in flight finish."""
        self.generation += 1
        self.ready = False
        async with self.lock:  # the batch being processed is submitted first
            self.feed.unassign()
            await self.committer.wait()  # and every batch in flight is durable
            await self.committer.release_tasks()  # they may move to another worker

    async def stop(self) -> None:
        """The app is shutting down: submit no more batches and let those in flight
        finish while the producers and the group member still run (at most
        ``STOP_WAIT_S``). A batch that cannot finish now is read again by the next
        owner of its partitions (its transaction aborted under exactly once), so a
        failure here is logged, not raised: SIGTERM is an orderly stop, exit code 0."""
        self.stopping = True
        self.ready = False
        self.generation += 1
        self.committer.stopping = True
        async def finish() -> None:
            async with self.lock:
                await self.committer.wait()

        try:
            await asyncio.wait_for(finish(), STOP_WAIT_S)
        except Exception as exc:  # TimeoutError too
            log.warning("stopping: the batch in flight did not finish (%r); its input is "
                        "read again after the restart", exc)

    def on_assigned(self) -> None:
        """The group has a new assignment: the next batch waits for its table recovery."""
        self.generation += 1
        self.ready = False

    async def become_ready(self, take: Callable[[dict], Awaitable[dict]]) -> bool:
        """After table recovery: own the assignment's tasks, then ``take(positions)``
        (the loop reloads the join and assigns its feed from the committed positions;
        it returns the feed's). Whether the loop may read now."""
        group = self.group
        if self.stopping or not group.ready():
            return False
        generation = self.generation
        async with self.lock:
            if generation != self.generation:
                return False
            await self.committer.wait()
            assigned = group.assigned(self.roles)
            await self.hop.learn_partitions(self.count_partitions)
            if self.committer.exactly_once:
                # fenced first (table recovery did it already): no zombie commits now
                await self.committer.own_tasks({self.hop.task_of(tp) for tp in assigned},
                                               fence=self.hop.shared_hop_ids(assigned))
                positions = await group.fetch_committed(assigned)
            else:
                positions = group.committed(assigned)
            reading = await take(positions)
            await group.pause(positions)
            self.committer.committed = dict(reading)
            self.ready = generation == self.generation
            log.info("reading inputs from %s", {f"{tp.topic}:{tp.partition}": off
                                                for tp, off in reading.items()})
            return self.ready
