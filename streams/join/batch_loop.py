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
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import time
from collections import defaultdict
from typing import Callable, Optional

import orjson
from aiokafka.structs import TopicPartition

from schemas.records import DeadLetter, encode_labeled
from streams.join.batch_commit import Batch, BatchCommitter, encode_changes
from streams.kafka.changelog_reader import read_latest
from streams.kafka.input_feed import InputFeed
from streams.kafka.topics import partition_count
from streams.join.join_state import EARLY, REQUEST, LabeledOut
from streams.join.processor import FEEDBACK, REQUESTS, JoinProcessor
from streams.join.repartition import hop_task
from streams.kafka.publisher import TaskPublishers
from streams.kafka.task_producers import TaskProducers
from streams.common.metrics import BATCH_SECONDS, JoinMetrics
from schemas.closed_time_report import DRAINED

log = logging.getLogger("dlabel.worker")

#: Table key prefixes per kind of join state.
KIND_PREFIX = {REQUEST: "r:", EARLY: "e:"}


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
        self._marked: dict[TopicPartition, tuple] = {}  # hop input -> progress last sent
        #: repartition partitions the last batch forwarded events to (see ``_on_records``)
        self._forwarded_to: set[TopicPartition] = set()
        self.topped_up = 0  # records added to a batch once the batch before committed
        #: partition counts of the topics the hop reads (any count: the producers')
        self.input_partitions: dict[str, int] = {}
        #: hop inputs whose tasks are the join's (``_shared_hop_tasks``), and the hop
        #: task names that stand for a join task then
        self._shared_hops: frozenset[str] = frozenset()
        self._task_alias: dict[str, int] = {}
        self._repartition_topic = config.join_inputs  # role -> topic the hop writes
        self._hop_topic = {role: topic for topic, role in self.hop_roles.items()}
        self.proc = JoinProcessor(config, pii, clock)
        #: memory store: the loop reads the changelog itself (``_reload``), not Faust
        self.reads_changelog = config.store == "memory"
        #: join tasks whose state ``proc`` holds and that every assignment since kept
        self._held: set[int] = set()
        self.feed = InputFeed(opts.bootstrap, client_id=f"dlabel-{config.pipeline}-input",
                              read_committed=opts.exactly_once)
        self.lock = asyncio.Lock()
        self.ready = False       # state loaded and feed assigned for the current assignment
        self.stopping = False    # the app is shutting down: no new batches
        self.generation = 0      # bumped by every rebalance callback
        self.positions: dict[TopicPartition, int] = {}  # next offset to read, per input
        self.drained = False
        self.sent_labeled = 0
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
        self.committer = BatchCommitter(group, self.seconds, transactions, self.task_of)
        self._closed_submitted: Optional[int] = None
        self._closed_submitted_at = 0.0  # monotonic; closed-time-only batches at most 1/s
        self._stats_written_at = 0.0
        self._input_submitted_at: Optional[float] = None  # monotonic, last input batch
        self.metrics = JoinMetrics({REQUESTS: config.topics.requests,
                                    FEEDBACK: config.topics.feedback})
        self.committer.on_input_durable = self._input_durable
        #: hooks run after each batch's outputs were acked (see ``BatchCommitter``)
        self.after_outputs = self.committer.after_outputs

    def task_of(self, tp: TopicPartition):
        """The task an input partition belongs to: the join's partition number, or for an
        input of the repartition hop, that hop's task (``repartition.hop_task``), unless
        the hop's input is co-partitioned with the join's tasks (``_shared_hop_tasks``).
        """
        role = self.hop_roles.get(tp.topic)
        if role is None or tp.topic in self._shared_hops:
            return tp.partition
        return hop_task(role, tp.partition)

    def _shared_hop_tasks(self) -> None:
        """Hop inputs with as many partitions as the join has tasks share the join task's
        transaction: one per task and batch instead of three (fewer round trips to
        the transaction coordinator before each commit).

        Faust's assignor gives partition ``p`` of every topic with the same partition
        count to one worker (co-partitioning: the inputs, their repartition topics,
        the state changelog), so the hop from input partition ``p`` always moves with
        join task ``p``, and the new owner of task ``p`` registering its transactional
        id fences whoever ran both before. The hop's own ids (used while the counts
        differed, or by an older worker) are fenced too at each assignment
        (``_fence_hop_ids``), so no zombie still holding one can commit."""
        tasks = self.config.topics.partitions
        self._shared_hops = frozenset(topic for topic in self.hop_roles
                                      if self.input_partitions.get(topic) == tasks)
        self._task_alias = {hop_task(self.hop_roles[topic], p): p
                            for topic in self._shared_hops for p in range(tasks)}

    # ------------------------------------------------------------- rebalances
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

    def on_assigned(self, assigned=None) -> None:
        """The group has a new assignment: the next batch waits for its table recovery.

        ``assigned``: the whole new assignment (Faust's eager rebalances revoke every
        partition first). A task kept from the last one keeps its state in memory; one
        missing from any assignment in between may have been worked on elsewhere."""
        self.generation += 1
        self.ready = False
        if assigned is None:
            self._held.clear()
        else:
            self._held &= {tp.partition for tp in assigned if tp.topic in self.join_roles}

    async def _become_ready(self) -> bool:
        """After table recovery: rebuild the join from the table, assign the feed."""
        group = self.group
        if self.stopping or not group.ready():
            return False
        generation = self.generation
        async with self.lock:
            if generation != self.generation:
                return False
            await self.committer.wait()
            assigned = group.assigned(self.roles)
            for topic in self.hop_roles:
                if topic not in self.input_partitions:
                    self.input_partitions[topic] = await asyncio.to_thread(
                        partition_count, self.opts.bootstrap, topic)
            self._shared_hop_tasks()
            if self.committer.exactly_once:
                # fenced first (table recovery did it already): no zombie commits now
                await self.committer.own_tasks(
                    {self.task_of(tp) for tp in assigned},
                    fence={hop_task(self.hop_roles[tp.topic], tp.partition)
                           for tp in assigned if tp.topic in self._shared_hops})
                positions = await group.fetch_committed(assigned)
            else:
                positions = group.committed(assigned)
            await self._reload()
            self.positions = await self.feed.assign(positions)
            await group.pause(positions)
            self.committer.committed = dict(self.positions)
            self.ready = generation == self.generation
            log.info("reading inputs from %s", {f"{tp.topic}:{tp.partition}": off
                                                for tp, off in self.positions.items()})
            return self.ready

    async def _reload(self) -> None:
        """Rebuild the in-memory join for the current assignment: with the memory store
        from the join state of the tasks it kept plus the changelog of those it gained
        (``_restore_tasks``), with RocksDB from Faust's recovered table."""
        old = self.proc
        self.proc = JoinProcessor(self.config, self.pii, self.clock)
        assigned = {(self.join_roles[tp.topic], tp.partition)
                    for tp in self.group.assigned(self.join_roles)}
        tasks = {task for _, task in assigned}
        if self.hop_roles:  # event time per (input partition, task): see repartition
            inputs = {role: self.input_partitions[topic]
                      for topic, role in self.hop_roles.items()}
            assigned = {(role, (origin, task)) for role, task in assigned
                        for origin in range(inputs[role])}
        self._marked.clear()
        self.proc.watermark.assign(assigned)
        kinds = {v: k for k, v in KIND_PREFIX.items()}
        n = 0
        if self.reads_changelog:
            n = await self._restore_tasks(old, tasks)
        else:
            for key, value in self.group.table_items():
                kind = kinds.get(key[:2])
                if kind is not None and value is not None:  # None: a deleted key
                    self.proc.join.restore(kind, key[2:], value)
                    n += 1
        del old
        gc.collect()
        gc.freeze()  # the loaded state is long-lived: keep the collector from rescanning it
        log.info("join state loaded: %d entries, inputs %s", n, sorted(assigned))

    async def _restore_tasks(self, old: JoinProcessor, tasks: set) -> int:
        """Memory store: move the state of the tasks kept since the last assignment from
        ``old`` (no Kafka read), read the changelog of the others; the entries loaded."""
        generation = self.generation
        kept, gained = self._held & tasks, tasks - self._held
        join, restore = old.join, self.proc.join.restore
        n = 0
        t0 = time.perf_counter()
        if kept:
            for key, p in join.pending.items():
                if p.partition in kept:
                    restore(REQUEST, key, p.to_json())
                    n += 1
            for key, m in join.done.items():
                if m.partition in kept:
                    restore(REQUEST, key, m.to_json())
                    n += 1
            for key, entries in join.early.items():
                if entries and entries[0].partition in kept:
                    restore(EARLY, key, [e.to_json() for e in entries])
                    n += 1
        moved = n
        t1 = time.perf_counter()
        read = {}
        if gained:
            tps = [TopicPartition(self.committer.changelog, t) for t in sorted(gained)]
            latest, read = await read_latest(self.opts.bootstrap, tps,
                                             read_committed=self.opts.exactly_once,
                                             tansu=self.opts.tansu)
            kinds = {v.encode(): k for k, v in KIND_PREFIX.items()}
            loads = orjson.loads
            for raw_key in list(latest):
                _, value = latest.pop(raw_key)
                key = loads(raw_key)
                kind = kinds.get(key[:2].encode())
                if kind is not None:
                    restore(kind, key[2:], loads(value))
                    n += 1
        # a rebalance meanwhile: what was read may be stale by the next assignment
        self._held = set(tasks) if generation == self.generation else set()
        log.info("join state of tasks %s kept in memory (%d entries, %.3f s); tasks %s read "
                 "from the changelog (%d records, %d live keys, %.3f s)", sorted(kept), moved,
                 t1 - t0, sorted(gained), sum(read.values()), n - moved,
                 time.perf_counter() - t1)
        return n

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
        while not self.group.should_stop:
            if not self.ready and not await self._become_ready():
                await asyncio.sleep(0.05)
                continue
            generation = self.generation
            t0 = time.perf_counter()
            records = await self.feed.getmany(timeout_ms=200,
                                              max_records=self.opts.batch_size)
            if self.first_event_at is not None:
                self.seconds["fetch"] += time.perf_counter() - t0
            if not records:
                async with self.lock:  # nothing fetched is waiting: skip markers
                    if generation == self.generation and self.ready:
                        await self._skip_markers()
                continue
            async with self.lock:
                if generation != self.generation or not self.ready:
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
        if self.committer.exactly_once:
            # the batch before is committed before this one's transactions begin: what
            # its commit made visible (its forwards to our repartition partitions) and
            # what else came meanwhile joins this batch, not the next (one cycle less)
            t1 = time.perf_counter()
            fresh = self.committer.busy and bool(self._forwarded_to.intersection(positions))
            await self.committer.wait()
            t2 = time.perf_counter()
            more = await self.feed.getmany(
                timeout_ms=TOP_UP_WAIT_MS if fresh else 0,
                max_records=max(0, self.opts.batch_size - sum(map(len, records.values()))),
                wait_for=self._forwarded_to)
            waited = time.perf_counter() - t1
            self.seconds["wait_commit"] += t2 - t1
            self.seconds["top_up_fetch"] += waited - (t2 - t1)
            if more:
                self.topped_up += sum(map(len, more.values()))
                outputs.extend(await self._process(more))
        await self._skip_markers()
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
        """Encode the batch's outputs and state changes; hand them to the committer."""
        committer = self.committer
        t0 = time.perf_counter()
        tasks = {self.task_of(tp) for tp in self.positions}
        await committer.open_batch(tasks)
        pub = committer.publishers()
        first = self.sent_labeled == 0
        self.metrics.observe(self.proc, await self._publish(pub, outputs))
        if first and self.sent_labeled:  # a start-up milestone (bench_recovery reads it)
            log.info("first labels handed to the producer: %d", self.sent_labeled)
        t1 = time.perf_counter()
        state = committer.publishers()
        store_writes = encode_changes(self.proc.join.take_dirty(), KIND_PREFIX,
                                      committer.changelog, state, committer.keeps_store)
        t2 = time.perf_counter()
        prefix = "" if from_input else "timer_"
        self.seconds[prefix + "publish"] += t1 - t0
        self.seconds[prefix + "persist"] += t2 - t1
        batch = Batch(pub, state, store_writes, dict(self.positions), from_input=from_input,
                      tasks=tasks,
                      closed=DRAINED if self.drained else self.proc.join.closed_time)
        self._closed_submitted = self.proc.join.closed_time
        self._closed_submitted_at = time.monotonic()
        if from_input:
            self._input_submitted_at = self._closed_submitted_at
        await committer.submit(batch)

    def _owns_every_input(self) -> bool:
        """A drain is a one-worker bounded replay: it finishes only once this worker holds
        every input partition (after a crash, the dead member's partitions come back to
        the group when its session expires; draining without them would end too early),
        and has read each to its end."""
        want = 2 * self.config.topics.partitions + sum(
            self.input_partitions[topic] for topic in self.hop_roles)
        return len(self.positions) >= want and all(
            self._at_end(tp) for tp in self.positions)

    async def _skip_markers(self) -> None:
        """Move positions past what the feed skipped (transaction markers, aborted
        records): only between batches, when every record it returned is processed."""
        positions, position = self.positions, self.feed.position
        for tp, offset in positions.items():
            now = await position(tp)
            if now > offset:
                positions[tp] = now

    def _at_end(self, tp: TopicPartition) -> bool:
        hw = self.feed.highwater(tp)
        return hw is not None and self.positions.get(tp, 0) >= hw

    def _markers(self, records: Optional[dict] = None) -> list:
        """Watermark markers of the hop's inputs whose progress (largest event time, at
        its end or not) changed since their last marker, even an empty one's that
        reached its end (``records``: only those just read)."""
        if not self.hop_roles:
            return []
        out = []
        repartitioner = self.proc.repartitioner
        for tp in self.positions:
            role = self.hop_roles.get(tp.topic)
            if role is None or (records is not None and tp not in records):
                continue
            progress = (repartitioner.max_ts(role, tp.partition), self._at_end(tp))
            if self._marked.get(tp) != progress:
                self._marked[tp] = progress
                out.append((tp, repartitioner.markers(role, tp.partition, progress[1])))
        return out

    def _closed_moved(self) -> bool:
        """The closed time moved since the last batch (at most once a second: an idle
        join's closed time moves with the clock, and each move is a watermark report)."""
        return (self.proc.join.closed_time != self._closed_submitted
                and time.monotonic() - self._closed_submitted_at >= 1.0)

    def _input_durable(self) -> None:
        self.last_event_at = time.monotonic()

    async def on_timer(self) -> None:
        """Idle inputs and the drain: finalize what the clock alone closes.

        While input batches flow they do all of it (markers, the clock's tick, the
        closed time): a timer batch then would only add a commit cycle (under exactly
        once, a transaction per task) in front of the next input batch."""
        if not self.ready:
            return
        if time.monotonic() - self._stats_written_at >= 5.0:
            self._write_stats()
        if (not self.opts.drain and self._input_submitted_at is not None
                and time.monotonic() - self._input_submitted_at < TIMER_QUIET_S):
            return
        async with self.lock:
            if not self.ready:
                return
            outputs = self._markers()
            self._update_caught_up()
            outputs.extend(self.proc.tick())
            if (self.opts.drain and not self.drained and self._owns_every_input()
                    and self.proc.watermark.all_caught_up(self.opts.drain_quiet_ms)):
                outputs.extend(self.proc.drain())
                self.drained = True
                log.info("draining at input ends %s", {
                    f"{tp.topic}:{tp.partition}": (self.feed.highwater(tp), off)
                    for tp, off in self.positions.items()})
            # a moved closed time is a batch too: the dataset sink learns of it (a report)
            if (outputs or self.proc.join.has_changes or self.committer.committed != self.positions
                    or self.drained or self._closed_moved()):
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
        """Where the batch loop's time went and how large the join's state is, for
        benchmarks (``DLABEL_WORKER_STATS``: a path; rewritten every 5 s and at the end
        of a drain)."""
        self._stats_written_at = time.monotonic()
        path = os.environ.get("DLABEL_WORKER_STATS")
        if path:
            join = self.proc.join
            tmp = f"{path}.tmp"  # readers poll the file: never show them half of it
            with open(tmp, "w") as f:
                json.dump({"seconds": dict(self.seconds), "batches": self.batches,
                           "records": sum(self.proc.records_in.values()),
                           "state": {"pending": len(join.pending), "done": len(join.done),
                                     "early": len(join.early)},
                           "labeled_sent": self.sent_labeled, "topped_up": self.topped_up,
                           "at": time.time()}, f)
            os.replace(tmp, path)

    def _update_caught_up(self) -> None:
        """Tell the watermark which inputs have reached their end (only those may idle).

        The end is the high watermark of our feed's last fetch (right on every broker,
        unlike ListOffsets on Tansu); the position is what this worker has processed.
        """
        set_caught_up = self.proc.watermark.set_caught_up
        if not self.hop_roles:
            for tp in self.positions:
                set_caught_up(self.join_roles[tp.topic], tp.partition, self._at_end(tp))
            return
        # through the hop: an input partition is at its end for a task once the task's
        # repartition partition is read to its end and the hop's last marker said so
        hop_at_end = self.proc.hop_at_end
        for tp in self.positions:
            role = self.join_roles.get(tp.topic)
            if role is None:
                continue
            task_at_end = self._at_end(tp)
            for origin in range(self.input_partitions[self._hop_topic[role]]):
                key = (origin, tp.partition)
                set_caught_up(role, key, task_at_end and hop_at_end.get((role, key), False))

    # ------------------------------------------------------------- outputs
    async def _publish(self, pubs: TaskPublishers, outputs) -> dict:
        """Queue the outputs on ``pubs``; returns the labeled count per label value."""
        topics = self.config.topics
        labeled, for_task = topics.labeled, pubs.for_task
        labels: dict = {}
        forwarded_to = self._forwarded_to = set()
        for o in outputs:
            if type(o) is tuple:  # the hop's forwards (and markers) from one input
                tp, forwards = o
                pub = for_task(self.task_of(tp))
                target = self._repartition_topic[self.hop_roles[tp.topic]]
                for f in forwards:
                    pub.add(target, f.task, f.key, f.value, f.headers)
                    if f.key is not None:  # an event, not a watermark marker
                        forwarded_to.add(TopicPartition(target, f.task))
            elif type(o) is LabeledOut:
                ex = o.example
                for_task(o.partition).add(labeled, o.partition, ex["request_id"].encode(),
                                          encode_labeled(ex))
                label = ex["label"]
                labels[label] = labels.get(label, 0) + 1
                self.sent_labeled += 1
            elif type(o) is DeadLetter:
                task = o.partition if o.task is None else self._task_alias.get(o.task, o.task)
                await for_task(task).add_any_partition(topics.dead_letter, None, o.encode())
        return labels


#: Exactly once: how long a batch waits, once the batch before is committed, for the
#: events that batch forwarded to this worker's repartition partitions to be fetched
#: (they become visible with the commit's markers, a few milliseconds after it).
TOP_UP_WAIT_MS = 20

#: How long a stopping worker waits for the batch in flight to become durable.
STOP_WAIT_S = 10.0

#: The timer leaves the batches to the input loop while it submitted one this recently.
TIMER_QUIET_S = 0.5

#: Young-generation threshold of the cyclic garbage collector in the worker.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cyclic garbage less often than CPython's default (every 700 allocations).

    The worker allocates a few containers per record (parsed JSON, events, outputs),
    and the default thresholds made the collector take ~30% of the in-process join's
    time (41k -> 57k events/s with these, in-process, 100k requests). The join's state
    holds no reference cycles: it is freed by reference counting as before; only
    cyclic garbage (asyncio, aiokafka) waits a little longer.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), max(middle, 20), old)
