"""The join worker's batch loop: input records in, labeled examples out.

``BatchLoop`` reads the two input topics in large batches with its own ``InputFeed``
(assigned the input partitions the group gives this worker), runs them through the
pure ``JoinProcessor`` and hands each processed batch to the ``BatchCommitter``, which
makes it durable in order (outputs acked, then state, then offsets) while the next
batch is processed. Faust owns the group, the rebalances and the changelog-backed
state table, reached only through ``group`` (a ``faust_adapter.FaustGroup``); on every
rebalance the loop stops reading, lets the batches in flight finish, and after the
table's recovery reloads the join from the table and reads on from the committed
offsets.

The loop reads, processes and submits; the rest lives in a module each:
``assignment`` (the group's rebalances: when the loop may read), ``state_reload`` (the
join state after a rebalance), ``hop_tasks`` (the task of each input partition, the
hop's watermark markers), ``input_positions`` (positions, inputs read to their end),
``batch_submit`` (a processed batch to the committer), ``loop_stats``, ``gc_tuning``.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import defaultdict
from typing import Callable, Optional

from aiokafka.structs import TopicPartition

from streams.common.metrics import BATCH_SECONDS
from streams.join.assignment import AssignmentGate
from streams.join.batch_commit import BatchCommitter
from streams.join.batch_submit import BatchSubmitter
from streams.join.gc_tuning import tune_gc
from streams.join.hop_tasks import HopMarkers, HopTasks
from streams.join.input_positions import (at_end, owns_every_input, skip_markers,
                                          update_caught_up)
from streams.join.loop_stats import stats_path, write_stats
from streams.join.processor import FEEDBACK, REQUESTS, JoinProcessor
from streams.join.state_reload import StateReload
from streams.kafka.changelog_reader import read_latest
from streams.kafka.input_feed import InputFeed
from streams.kafka.task_producers import TaskProducers
from streams.kafka.topics import partition_count

log = logging.getLogger("dlabel.worker")

#: The timer leaves the batches to the input loop while it submitted one this recently.
TIMER_QUIET_S = 0.5


class BatchLoop:
    """Glue between the group (assignment, table, commits), the input feed and the join."""

    def __init__(self, config, opts, group, pii, clock) -> None:
        self.config, self.opts, self.group = config, opts, group
        self.pii, self.clock = pii, clock
        topics = config.topics
        #: the topics the join reads (its tasks), and those the repartition hop reads
        self.join_roles = {topic: role for role, topic in config.join_inputs.items()}
        self.hop_roles = ({topics.requests: REQUESTS, topics.feedback: FEEDBACK}
                          if config.repartitions else {})
        self.roles = {**self.join_roles, **self.hop_roles}  # everything the feed reads
        self.hop = HopTasks(self.hop_roles, topics.partitions)
        self.markers = HopMarkers(self.hop_roles)
        self.topped_up = 0  # records added to a batch once the batch before committed
        self.proc = JoinProcessor(config, pii, clock)
        #: memory store: the loop reads the changelog itself (``_reload``), not Faust
        self.reads_changelog = config.store == "memory"
        self.state = StateReload(group, self.join_roles, self.hop, self.reads_changelog,
                                 self._read_changelog)
        self.feed = InputFeed(opts.bootstrap, client_id=f"dlabel-{config.pipeline}-input",
                              read_committed=opts.exactly_once)
        self.positions: dict[TopicPartition, int] = {}  # next offset to read, per input
        self.drained = False
        self.batches = 0
        self.first_event_at: Optional[float] = None  # monotonic, for throughput figures
        self.last_event_at: Optional[float] = None
        self.on_drained: Optional[Callable[[], None]] = None
        #: seconds spent per step of the batch loop, for profiling
        self.seconds: dict[str, float] = defaultdict(float)
        transactions = (TaskProducers(opts.bootstrap, f"{group.group_id}-join",
                                      client_id=f"dlabel-{config.pipeline}-join",
                                      max_batch_size=256 * 1024,
                                      max_request_size=4 * 1024 * 1024)
                        if opts.exactly_once else None)
        self.committer = BatchCommitter(group, self.seconds, transactions, self.hop.task_of)
        self.submitter = BatchSubmitter(self.committer, self.hop, topics, config.join_inputs,
                                        self.seconds)
        self.gate = AssignmentGate(group, self.committer, self.feed, self.hop, self.roles,
                                   self._count_partitions)
        self._stats_written_at = 0.0
        self.committer.on_input_durable = self._input_durable
        #: hooks run after each batch's outputs were acked (see ``BatchCommitter``)
        self.after_outputs = self.committer.after_outputs

    @property
    def sent_labeled(self) -> int:
        """Labeled examples handed to the producer so far."""
        return self.submitter.out.sent_labeled

    # ------------------------------------------------------------- the group
    async def on_revoked(self) -> None:
        """The group is revoking partitions (``AssignmentGate.on_revoked``)."""
        await self.gate.on_revoked()

    async def stop(self) -> None:
        """The app is shutting down (``AssignmentGate.stop``)."""
        await self.gate.stop()

    def on_assigned(self, assigned=None) -> None:
        """The group has a new assignment: the next batch waits for its table recovery.

        ``assigned``: the whole new assignment (Faust's eager rebalances revoke every
        partition first). A task kept from the last one keeps its state in memory; one
        missing from any assignment in between may have been worked on elsewhere."""
        self.gate.on_assigned()
        self.state.on_assigned(assigned)

    async def _take(self, positions: dict) -> dict:
        """The assignment is ours: reload the join, read on from ``positions``."""
        await self._reload()
        self.positions = await self.feed.assign(positions)
        return self.positions

    async def _reload(self) -> None:
        """Rebuild the in-memory join for the current assignment: with the memory store
        from the join state of the tasks it kept plus the changelog of those it gained,
        with RocksDB from Faust's recovered table (``state_reload``)."""
        old = self.proc
        self.proc = JoinProcessor(self.config, self.pii, self.clock)
        self.markers.clear()
        gate = self.gate
        generation = gate.generation
        n, inputs = await self.state.load(old, self.proc,
                                          lambda: generation == gate.generation)
        del old
        gc.collect()
        gc.freeze()  # the loaded state is long-lived: keep the collector from rescanning it
        log.info("join state loaded: %d entries, inputs %s", n, sorted(inputs))

    async def _count_partitions(self, topic: str) -> int:
        return await asyncio.to_thread(partition_count, self.opts.bootstrap, topic)

    async def _read_changelog(self, tasks: set) -> tuple[dict, dict]:
        """The changelog partitions of ``tasks``, read to their end (``read_latest``)."""
        tps = [TopicPartition(self.committer.changelog, t) for t in sorted(tasks)]
        return await read_latest(self.opts.bootstrap, tps,
                                 read_committed=self.opts.exactly_once, tansu=self.opts.tansu)

    # ------------------------------------------------------------- the loop
    async def run(self) -> None:
        """Read and process input batches until the app stops."""
        tune_gc()
        await self.feed.start()
        try:
            await self._read_until_stopped()
        finally:
            # an error stopping the feed (aiokafka may raise CancelledError while its
            # coordinator closes) must not hide why the loop ended
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.feed.stop()

    async def _read_until_stopped(self) -> None:
        gate = self.gate
        while not self.group.should_stop:
            if not gate.ready and not await gate.become_ready(self._take):
                await asyncio.sleep(0.05)
                continue
            generation = gate.generation
            t0 = time.perf_counter()
            records = await self.feed.getmany(timeout_ms=200,
                                              max_records=self.opts.batch_size)
            if self.first_event_at is not None:
                self.seconds["fetch"] += time.perf_counter() - t0
            if not records:
                async with gate.lock:  # nothing fetched is waiting: skip markers
                    if gate.current(generation):
                        await skip_markers(self.feed, self.positions)
                continue
            async with gate.lock:
                if not gate.current(generation):
                    continue  # fetched before a rebalance: nothing done, read again later
                await self._on_records(records)

    async def _on_records(self, records: dict) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.monotonic()
        self.batches += 1
        t0 = time.perf_counter()
        positions = self.positions
        waited = 0.0
        outputs = await self._process(records)
        if self.committer.exactly_once:  # wait for the batch before to commit, and take
            # in what its commit made visible (``BatchSubmitter.top_up``)
            room = max(0, self.opts.batch_size - sum(map(len, records.values())))
            more, waited = await self.submitter.top_up(self.feed, positions, room)
            if more:
                self.topped_up += sum(map(len, more.values()))
                outputs.extend(await self._process(more))
        await skip_markers(self.feed, self.positions)
        outputs.extend(self._markers())  # every input's, as the timer would (see on_timer)
        self._update_caught_up()
        outputs.extend(self.proc.tick())
        self.seconds["process"] += time.perf_counter() - t0 - waited
        await self._submit(outputs, from_input=True)
        BATCH_SECONDS.observe(time.perf_counter() - t0)

    async def _process(self, records: dict) -> list:
        """Run fetched records through the hop and the join; moves the positions."""
        outputs = []
        proc = self.proc
        process = proc.process_forwarded if self.hop_roles else proc.process
        positions = self.positions
        for tp, recs in records.items():
            role = self.hop_roles.get(tp.topic)
            if role is not None:
                forwards, dead = proc.forward(role, tp.partition, recs)
                outputs.append((tp, forwards))
                outputs.extend(dead)
            else:
                outputs.extend(process(self.join_roles[tp.topic], tp.partition, recs))
            positions[tp] = recs[-1].offset + 1
            await asyncio.sleep(0)  # let acks and fetches in flight progress
        return outputs

    async def _submit(self, outputs, from_input: bool) -> None:
        """Hand the batch's outputs and state changes to the committer (``batch_submit``)."""
        await self.submitter.submit(self.proc, outputs, self.positions, from_input,
                                    self.drained)

    def _at_end(self, tp: TopicPartition) -> bool:
        return at_end(self.feed, self.positions, tp)

    def _markers(self) -> list:
        """The hop's watermark markers due for every input (``HopMarkers.due``)."""
        return self.markers.due(self.proc.repartitioner, self.positions, self._at_end)

    def _update_caught_up(self) -> None:
        update_caught_up(self.proc, self.positions, self._at_end, self.join_roles, self.hop)

    def _input_durable(self) -> None:
        self.last_event_at = time.monotonic()

    async def on_timer(self) -> None:
        """Idle inputs and the drain: finalize what the clock alone closes.

        While input batches flow they do all of it (markers, the clock's tick, the
        closed time): a timer batch then would only add a commit cycle (under exactly
        once, a transaction per task) in front of the next input batch."""
        gate = self.gate
        if not gate.ready:
            return
        if time.monotonic() - self._stats_written_at >= 5.0:
            self._write_stats()
        last_input = self.submitter.input_submitted_at
        if (not self.opts.drain and last_input is not None
                and time.monotonic() - last_input < TIMER_QUIET_S):
            return
        async with gate.lock:
            if not gate.ready:
                return
            outputs = self._markers()
            self._update_caught_up()
            outputs.extend(self.proc.tick())
            if (self.opts.drain and not self.drained
                    and owns_every_input(self.positions, self._at_end,
                                         self.config.topics.partitions, self.hop)
                    and self.proc.watermark.all_caught_up(self.opts.drain_quiet_ms)):
                outputs.extend(self.proc.drain())
                self.drained = True
                log.info("draining at input ends %s", {
                    f"{tp.topic}:{tp.partition}": (self.feed.highwater(tp), off)
                    for tp, off in self.positions.items()})
            # a moved closed time is a batch too: the dataset sink learns of it (a report)
            if (outputs or self.proc.join.has_changes or self.committer.committed != self.positions
                    or self.drained or self.submitter.closed_moved(self.proc)):
                await self._submit(outputs, from_input=False)
            if self.drained:
                await self.committer.wait()
        if self.drained:
            self._write_stats()
            log.info("drained: all input consumed, every pending request finalized")
            await self.group.flush()
            if self.on_drained is not None:
                self.on_drained()

    def _write_stats(self) -> None:
        """The stats file for benchmarks (``loop_stats``), if asked for."""
        self._stats_written_at = time.monotonic()
        write_stats(stats_path(), self.proc, self.seconds, self.batches,
                    self.sent_labeled, self.topped_up)

