"""The join worker: a Faust app running the event-time join on changelog-backed state.

One agent reads the requests and feedback topics together (so that one actor owns the
join state), in batches. For each batch, in this order:

1. run every record through the ``JoinProcessor`` (parse, watermark, join);
2. send the labeled examples and dead letters, and wait until the broker acked them;
3. report the join's watermark for the dataset sink (``watermark_reports``), at most
   about once a second, once the examples it covers were acked;
4. write the state the batch changed to the changelog-backed table (with the input
   partition of each key, so that state moves with its partition);
5. acknowledge the batch's events to Faust, which flushes the producer before it
   commits their offsets.

A crash anywhere before 5 replays the batch from the last committed offset; state
written in 4 only ever reflects outputs already acked, so nothing is lost, and a
replayed request whose label was already sent is sent again as an identical copy.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import faust

from schemas.config import PipelineConfig
from schemas.pii import PiiHasher
from schemas.records import dead_letter, encode_labeled
from streams import kafka_clients
from streams.join import DONE, EARLY, PENDING, DeadLetterOut, LabeledOut
from streams.processor import FEEDBACK, REQUESTS, JoinProcessor
from streams.watermark_reports import DRAINED, encode_report

log = logging.getLogger("dlabel.worker")

_KIND_PREFIX = {PENDING: "p:", EARLY: "e:", DONE: "d:"}


@dataclass
class WorkerOptions:
    """Run-time knobs of the worker that are not part of the pipeline config."""

    bootstrap: str
    drain: bool = False            # exit once all input is consumed (bounded replay)
    drain_quiet_ms: int = 1500     # ... and every input has been quiet this long
    batch_size: int = 2000
    batch_within_s: float = 0.1
    session_timeout_s: float = 10.0
    web_port: Optional[int] = None  # Faust starts its web server anyway: give it a port
    tansu: bool = False             # embedded-broker work-arounds (tansu_quirks)
    report_every_s: float = 1.0     # watermark reports for the dataset sink, at most this often


def state_table_name(config: PipelineConfig) -> str:
    return f"{config.pipeline}-join-state"


def app_id(config: PipelineConfig) -> str:
    return f"dlabel-{config.pipeline}"


def changelog_topic(config: PipelineConfig) -> str:
    """Name of the join state's changelog topic (create it before the worker starts)."""
    return f"{app_id(config)}-{state_table_name(config)}-changelog"


def build_app(config: PipelineConfig, opts: WorkerOptions, pii: Optional[PiiHasher],
              clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> faust.App:
    """Build the Faust app of the join worker for ``config``."""
    if opts.tansu:
        from streams.tansu_quirks import install_faust_recovery_fix
        install_faust_recovery_fix(opts.bootstrap)
    store = "rocksdb://" if config.store == "rocksdb" else "memory://"
    app = faust.App(
        app_id(config),
        broker=f"kafka://{opts.bootstrap}",
        store=store,
        datadir=config.state_dir,
        topic_partitions=config.topics.partitions,
        topic_replication_factor=config.topics.replication_factor,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=opts.session_timeout_s,
        broker_heartbeat_interval=max(0.3, opts.session_timeout_s / 10),
        broker_rebalance_timeout=opts.session_timeout_s,
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        broker_max_poll_records=opts.batch_size,
        stream_buffer_maxsize=max(16_384, opts.batch_size * 4),
        producer_acks=-1,
        web_enabled=False,
        web_host="127.0.0.1",
        web_port=opts.web_port or 0,
        autodiscover=False,
        processing_guarantee="at_least_once",
        broker_credentials=kafka_clients.faust_credentials(config.kafka),
    )
    inputs = app.topic(config.topics.requests, config.topics.feedback,
                       key_serializer="raw", value_serializer="raw")
    labeled = app.topic(config.topics.labeled, key_serializer="raw", value_serializer="raw")
    dead = app.topic(config.topics.dead_letter, key_serializer="raw", value_serializer="raw")
    reports = app.topic(config.topics.watermarks, key_serializer="raw", value_serializer="raw")
    table = app.Table(state_table_name(config), partitions=config.topics.partitions,
                      key_type=str, value_type=None)
    runner = JoinRunner(config, opts, app, table, labeled, dead, pii, clock, reports)
    app.dlabel_runner = runner  # for tests and the CLI summary

    @app.agent(inputs)
    async def join_agent(stream):
        try:
            # noack_take: Faust must not commit a batch's offsets before step 3 is done
            # (take_events acks each event as it enters the buffer).
            async for events in stream.noack_take(opts.batch_size, within=opts.batch_within_s):
                await runner.on_batch(events)
                for event in events:
                    await stream.ack(event)
        except Exception as exc:  # Faust would log and go on without its agent: stop instead
            log.exception("join agent failed; stopping the worker")
            await app.crash(exc)
            raise

    @app.timer(interval=0.5)
    async def watermark_timer():
        try:
            await runner.on_timer()
        except Exception as exc:
            log.exception("watermark timer failed; stopping the worker")
            await app.crash(exc)
            raise

    @app.on_rebalance_complete.connect
    async def on_rebalance(sender, **kwargs):
        runner.needs_reload = True

    return app


class JoinRunner:
    """Glue between Faust (records, table, topics) and the pure JoinProcessor."""

    def __init__(self, config, opts, app, table, labeled_topic, dead_topic, pii, clock,
                 reports_topic=None):
        self.config, self.opts, self.app = config, opts, app
        self.reports_topic = reports_topic
        self.labeled_ends: dict[int, int] = {}  # labeled partition -> last acked offset + 1
        self.reported: Optional[int] = None
        self.reported_at = 0.0
        self.table, self.labeled_topic, self.dead_topic = table, labeled_topic, dead_topic
        self.pii, self.clock = pii, clock
        self.roles = {config.topics.requests: REQUESTS, config.topics.feedback: FEEDBACK}
        self.proc = JoinProcessor(config, pii, clock)
        self.lock = asyncio.Lock()
        self.needs_reload = True
        self.drained = False
        self.last_offsets: dict[tuple[str, int], int] = {}
        self.sent_labeled = 0
        self.batches = 0
        self.first_event_at: Optional[float] = None  # monotonic, for throughput figures
        self.last_event_at: Optional[float] = None
        self.on_drained: Optional[Callable[[], None]] = None

    # ------------------------------------------------------------- lifecycle
    def _reload(self) -> None:
        """Rebuild the in-memory join from the recovered table (after any rebalance)."""
        self.proc = JoinProcessor(self.config, self.pii, self.clock)
        # Faust warns and flushes synchronously past 100 buffered changelog sends;
        # one batch of ours writes more than that.
        self.app.producer.buffer.max_messages = max(10_000, 4 * self.opts.batch_size)
        assigned = self._assigned_inputs()
        self.proc.watermark.assign(assigned)
        kinds = {v: k for k, v in _KIND_PREFIX.items()}
        n = 0
        for key, value in self.table.data.items():
            kind = kinds.get(key[:2])
            if kind is not None and value is not None:  # None: a deleted key
                self.proc.join.restore(kind, key[2:], value)
                n += 1
        self.needs_reload = False
        log.info("join state loaded: %d entries, inputs %s", n, sorted(assigned))

    def _assigned_inputs(self) -> set[tuple[str, int]]:
        out = set()
        for tp in self.app.consumer.assignment():
            role = self.roles.get(tp.topic)
            if role:
                out.add((role, tp.partition))
        return out

    # ------------------------------------------------------------- processing
    async def on_batch(self, events) -> None:
        now = time.monotonic()
        self.batches += 1
        if self.first_event_at is None:
            self.first_event_at = now
        self.last_event_at = now
        async with self.lock:
            if self.needs_reload:
                self._reload()
            outputs = []
            process = self.proc.process
            for event in events:
                msg = event.message
                role = self.roles[msg.topic]
                self.last_offsets[(role, msg.partition)] = msg.offset
                outputs.extend(process(role, msg.partition, msg.offset, msg.value))
            self._update_caught_up()
            outputs.extend(self.proc.tick())
            await self._publish(outputs)
            await self._report_watermark()
            self._persist()

    async def on_timer(self) -> None:
        if not self.app.consumer.assignment():
            return
        async with self.lock:
            if self.needs_reload:
                # An input with nothing left to read brings no batch to reload on.
                if not self.app.tables.actives_ready:
                    return  # table recovery still under way
                self._reload()
            self._update_caught_up()
            outputs = self.proc.tick()
            if (self.opts.drain and not self.drained
                    and self.proc.watermark.all_caught_up(self.opts.drain_quiet_ms)):
                outputs.extend(self.proc.drain())
                self.drained = True
                consumer = self.app.consumer
                log.info("draining at input ends %s", {
                    f"{tp.topic}:{tp.partition}": (consumer.highwater(tp),
                                                   self.last_offsets.get((self.roles[tp.topic], tp.partition)),
                                                   consumer._committed_offset.get(tp))
                    for tp in consumer.assignment() if tp.topic in self.roles})
            if outputs or self.proc.join._dirty:
                await self._publish(outputs)
            await self._report_watermark()
            self._persist()
        if self.drained:
            log.info("drained: all input consumed, every pending request finalized")
            await self.app.producer.flush()
            await self.app.consumer.commit()
            if self.on_drained is not None:
                self.on_drained()

    def _update_caught_up(self) -> None:
        """Tell the watermark which inputs have reached their end (only those may idle).

        The end is the high watermark of the last fetch response (right on every broker,
        unlike ListOffsets on Tansu). The position is what this worker has *processed*
        (the last offset it handled, or the committed offset it resumed from), never
        the fetcher's position, which runs ahead into Faust's buffers.
        """
        consumer = self.app.consumer
        committed = consumer._committed_offset  # Faust: next offset to read, per TP
        for tp in consumer.assignment():
            role = self.roles.get(tp.topic)
            if role is None:
                continue
            hw = consumer.highwater(tp)
            last = self.last_offsets.get((role, tp.partition), -1)
            position = max(last + 1, committed.get(tp) or 0)
            self.proc.watermark.set_caught_up(role, tp.partition, hw is not None and position >= hw)

    async def _report_watermark(self) -> None:
        """Tell the dataset sink how far the join has labeled (see ``watermark_reports``)."""
        closed = DRAINED if self.drained else self.proc.join.closed_time
        if self.reports_topic is None or closed is None or closed == self.reported:
            return
        now = time.monotonic()
        if not self.drained and now - self.reported_at < self.opts.report_every_s:
            return
        futures = []
        for role, partition in sorted(self._assigned_inputs()):
            name = f"{role}:{partition}"
            futures.append(await self.reports_topic.send(
                key=name.encode(), value=encode_report(name, closed, self.labeled_ends),
                partition=0))
        if futures:
            await asyncio.gather(*futures)
        self.reported, self.reported_at = closed, now

    async def _publish(self, outputs) -> None:
        futures = []
        labeled = []
        for o in outputs:
            if isinstance(o, LabeledOut):
                fut = await self.labeled_topic.send(
                    key=o.example["request_id"].encode(), value=encode_labeled(o.example),
                    partition=o.partition)
                self.sent_labeled += 1
                labeled.append(fut)
            elif isinstance(o, DeadLetterOut):
                src = o.source
                topic = self.config.topics.requests if src.role == REQUESTS else self.config.topics.feedback
                fut = await self.dead_topic.send(
                    key=None, value=dead_letter(o.reason, o.detail, topic, src.partition,
                                                src.offset, o.original))
            else:
                continue
            futures.append(fut)
        if futures:
            await asyncio.gather(*futures)
        ends = self.labeled_ends
        for fut in labeled:
            meta = fut.result()
            if meta.offset + 1 > ends.get(meta.partition, 0):
                ends[meta.partition] = meta.offset + 1

    def _persist(self) -> None:
        """Write changed join state to the table (after the outputs it reflects were acked).

        The watermark is not persisted: after a restart it is rebuilt from the replayed
        input, so a record read again is never judged late against a watermark that its
        first reading had already moved.
        """
        table = self.table
        write = _store_writer(table.data)
        for (kind, key), (partition, value) in self.proc.join.take_dirty().items():
            tkey = _KIND_PREFIX[kind] + key
            write(partition, tkey, value)
            table.send_changelog(partition, tkey, value)


def _store_writer(store):
    """``write(partition, key, value_or_None)`` into a Faust store outside an event.

    Faust's own ``store[key] = value`` takes the partition from the current event,
    which a batch does not have; the memory store is a plain mapping, the RocksDB
    store keeps one database per partition.
    """
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:
        def write(partition: int, key: str, value) -> None:
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        return write

    def write_rocksdb(partition: int, key: str, value) -> None:
        db = db_for_partition(partition)
        raw_key = store._encode_key(key)
        if value is None:
            db.delete(raw_key)
        else:
            db.put(raw_key, store._encode_value(value))
    return write_rocksdb

