"""The one module that knows Faust: the join worker's app, and every Faust internal we use.

Faust owns the consumer group (an agent is declared on the requests and feedback
topics, so their partitions and the state table's changelog are assigned together),
the rebalances and the changelog-backed table with its recovery. The input records
themselves do not go through Faust's per-record stream path: ``BatchLoop`` reads them
in large batches with its own consumer and ``BatchCommitter`` makes each batch durable
in order. Both talk to Faust only through ``FaustGroup`` below.

Where dlabel needs more than Faust's public API, the internal is used here and nowhere
else, and listed in ``FAUST_INTERNALS``; ``tests/test_faust_adapter.py`` checks each
of them against the installed Faust and fails naming the one an upgrade changed.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional

import faust
from aiokafka.structs import TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery, RecoveryStats
from faust.types import TP

from schemas.config import KafkaSecurity, PipelineConfig
from schemas.errors import DlabelError
from schemas.pii import PiiHasher
from streams.join.batch_loop import BatchLoop
from streams.join.closed_time_reporter import ClosedTimeReporter
from streams.kafka import clients as kafka_clients
from streams.kafka.group_offsets import committed_offsets
from streams.kafka.transactional_reads import last_committed_offsets
from streams.kafka.tansu_quirks import MemberSlot, fetch_end_offsets, leave_in_generation_zero

log = logging.getLogger("dlabel.worker")

#: Every Faust internal used here: (where it is defined, attribute, how we use it).
#: Instance attributes are checked on a built app by tests/test_faust_adapter.py.
FAUST_INTERNALS = (
    ("faust.transport.consumer.Consumer", "_getmany",
     "wrapped: Faust's fetcher must skip the input partitions"),
    ("faust.transport.consumer.Consumer", "_commit",
     "commits the input offsets as the group member"),
    ("app.consumer", "_committed_offset",
     "committed input offsets after a rebalance's seek"),
    ("app.consumer", "_thread", "the consumer thread, to pause the inputs in it"),
    ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_ensure_consumer",
     "its aiokafka consumer, to pause the inputs"),
    ("faust.transport.drivers.aiokafka.Producer", "_producer",
     "the aiokafka producer that batches are sent with"),
    ("faust.stores.rocksdb.Store", "_db_for_partition",
     "RocksDB store: write a batch's state to the local database"),
    ("faust.tables.recovery.Recovery", "_build_highwaters",
     "changelog ends: none for the memory store (the loop reads it), fetch high "
     "watermarks on Tansu, last committed records under exactly once"),
    ("faust.tables.recovery.Recovery", "active_stats",
     "recovery statistics that skip the changelog ends left unknown (memory store)"),
    ("faust.Worker", "_schedule_shutdown", "stops the worker once a drain is done"),
    ("faust.transport.drivers.aiokafka.AIOKafkaConsumerThread", "_create_worker_consumer",
     "exactly once: Faust's consumer (table recovery) reads read_committed"),
    ("app.consumer", "in_transaction", "the switch Faust reads to pick read_committed"),
    ("faust.tables.TableManager", "on_start",
     "started without its fixed 1 s sleep (start-up to first label)"),
    ("faust.tables.TableManager", "_update_channels", "called by that on_start"),
    ("faust.tables.TableManager", "recovery", "started by that on_start"),
)


@dataclass
class WorkerOptions:
    """Run-time knobs of the join worker that are not part of the pipeline config."""

    bootstrap: str
    drain: bool = False            # exit once all input is consumed (bounded replay)
    drain_quiet_ms: int = 1500     # ... and every input has been quiet this long
    batch_size: int = 2000
    session_timeout_s: float = 6.0
    #: how long a rebalance waits for members to rejoin: a restarted worker's dead
    #: predecessor is dropped after this, not after its whole session (see README;
    #: Kafka only: Tansu never reads it, see ``tansu_quirks``)
    rebalance_timeout_s: float = 3.0
    web_port: Optional[int] = None  # Faust starts its web server anyway: give it a port
    tansu: bool = False             # embedded-broker work-arounds (tansu_quirks)
    exactly_once: bool = False      # transactions (brokers that have them: not Tansu)
    #: Tansu: where this worker records its member id for the worker restarted after it
    #: (``tansu_quirks.evict_predecessor``)
    member_slot: Optional[MemberSlot] = None


def state_table_name(config: PipelineConfig) -> str:
    """Name of the join state's Faust table."""
    return f"{config.pipeline}-join-state"


def app_id(config: PipelineConfig) -> str:
    """The Faust app id, which is also the join worker's consumer group."""
    return f"dlabel-{config.pipeline}"


def changelog_topic(config: PipelineConfig) -> str:
    """Name of the join state's changelog topic (create it before the worker starts)."""
    return f"{app_id(config)}-{state_table_name(config)}-changelog"


def faust_credentials(sec: Optional[KafkaSecurity] = None):
    """The ``broker_credentials`` of a Faust app (None for PLAINTEXT)."""
    sec = sec or kafka_clients.current_security()
    if sec.uses_sasl:  # SASL_SSL when a TLS context is given, else SASL_PLAINTEXT
        return faust.SASLCredentials(username=sec.sasl_username, password=sec.sasl_password,
                                     ssl_context=kafka_clients.ssl_context(sec),
                                     mechanism=sec.sasl_mechanism)
    if sec.uses_ssl:
        return faust.SSLCredentials(kafka_clients.ssl_context(sec))
    return None


class FaustGroup:
    """What the batch loop and the committer need from Faust, under plain names."""

    def __init__(self, app: faust.App, table, bootstrap: str) -> None:
        self.app, self.table, self.bootstrap = app, table, bootstrap

    @property
    def group_id(self) -> str:
        """The consumer group of the join workers."""
        return self.app.conf.id

    @property
    def should_stop(self) -> bool:
        return self.app.should_stop

    def ready(self) -> bool:
        """The assignment is settled and the table recovered."""
        return bool(self.app.tables.actives_ready) and not self.app.rebalancing

    def assigned(self, topics: Iterable[str]) -> list[TopicPartition]:
        """This member's partitions of ``topics``."""
        topics = frozenset(topics)
        return [TopicPartition(tp.topic, tp.partition)
                for tp in self.app.consumer.assignment() if tp.topic in topics]

    def committed(self, tps: Iterable[TopicPartition]) -> dict[TopicPartition, Optional[int]]:
        """The group's committed offsets of ``tps`` (None: nothing committed)."""
        committed = self.app.consumer._committed_offset  # refreshed by the seek after recovery
        return {tp: committed.get(TP(tp.topic, tp.partition)) or None for tp in tps}

    async def fetch_committed(self, tps: Iterable[TopicPartition]
                              ) -> dict[TopicPartition, Optional[int]]:
        """The group's committed offsets of ``tps``, read from the coordinator now."""
        return await asyncio.to_thread(committed_offsets, self.bootstrap, self.group_id, tps)

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> bool:
        """Commit ``{tp: next offset to read}`` as the group member; False if rebalanced.

        Only a member of the group (with its generation) may commit for it on a real
        Kafka cluster, so the commit goes through Faust's consumer.
        """
        if not offsets:
            return True
        return bool(await self.app.consumer._commit(
            {TP(tp.topic, tp.partition): off for tp, off in offsets.items()}))

    async def pause(self, tps: Iterable[TopicPartition]) -> None:
        """Pause ``tps`` in Faust's own aiokafka consumer, so that it does not prefetch them.

        Only saves memory and broker work; correctness rests on ``keep_inputs_from_faust``.
        """
        tps = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        thread = getattr(self.app.consumer, "_thread", None)
        if not tps or thread is None:
            return

        def pause_assigned() -> None:
            aio = thread._ensure_consumer()
            assigned = aio.assignment()
            aio.pause(*[tp for tp in tps if tp in assigned])

        try:
            await thread.call_thread(pause_assigned)
        except Exception as exc:  # an assignment that moved on meanwhile: harmless
            log.debug("could not pause inputs in Faust's consumer: %r", exc)

    def kafka_producer(self):
        """The started aiokafka producer under Faust's producer."""
        return self.app.producer._producer

    async def flush(self) -> None:
        await self.app.producer.flush()

    async def crash(self, exc: BaseException) -> None:
        """Stop the worker on an error (Faust would log it and go on)."""
        await self.app.crash(exc)

    @property
    def changelog(self) -> str:
        return self.table.changelog_topic.get_topic_name()

    def table_items(self):
        """The recovered table's ``(key, value)`` pairs."""
        return self.table.data.items()

    @property
    def keeps_local_store(self) -> bool:
        """Whether the table has a local database (RocksDB) that batches must write too."""
        return hasattr(self.table.data, "_db_for_partition")

    def write_local_store(self, writes, changelog_ends: Mapping[tuple[str, int], int]) -> None:
        """Write ``[(partition, key, value or None)]`` to the RocksDB store, then record the
        changelog offsets it now holds (as Faust's own ``_on_changelog_sent`` does)."""
        store = self.table.data
        db_for_partition = store._db_for_partition
        for partition, key, value in writes:
            db = db_for_partition(partition)
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        for (topic, partition), offset in changelog_ends.items():
            if topic == self.changelog:
                store.set_persisted_offset(TP(topic, partition), offset)


def keep_inputs_from_faust(consumer, topics: Iterable[str]) -> None:
    """Make Faust's fetcher skip the partitions of ``topics`` (they are read by InputFeed).

    Faust still subscribes to them (an agent is declared on them) so that its group
    assignment and table co-partitioning include them; it just never fetches them.
    An empty set of partitions means "all" to aiokafka, so it is never passed on.
    """
    topics = frozenset(topics)
    fetch = consumer._getmany

    async def getmany_without_inputs(active_partitions, timeout):
        if active_partitions is None:  # client-only app: not the worker
            return await fetch(active_partitions=active_partitions, timeout=timeout)
        wanted = {tp for tp in active_partitions if tp.topic not in topics}
        if not wanted:
            await asyncio.sleep(min(timeout, 0.2))
            return {}
        return await fetch(active_partitions=wanted, timeout=timeout)

    consumer._getmany = getmany_without_inputs


_highwaters_patched = False


def patch_table_recovery() -> None:
    """Take over where Faust's table recovery starts and ends, per worker app.

    Faust builds each changelog partition's end with ``Recovery._build_highwaters``
    before it replays the changelog; the worker's loop (``app.dlabel_loop``) decides:

    - memory store: Faust replays nothing (every end "unknown"); the batch loop reads
      the changelog of the tasks it gains itself, in bulk (``BatchLoop._reload``):
      Faust's per-record replay ran at 4-7k records/s, most of a restart;
    - exactly once (RocksDB store): register the tasks' transactional producers first
      (fencing the previous owner aborts its open transaction, so no zombie commits
      after recovery looked) and end at each changelog's last committed record (a
      changelog written in transactions ends with a commit marker, which recovery
      never receives);
    - Tansu (RocksDB store): ends from fetch high watermarks (ListOffsets under-reports,
      see ``streams.kafka.tansu_quirks``).
    """
    global _highwaters_patched
    if _highwaters_patched:
        return
    build = Recovery._build_highwaters

    async def build_highwaters(self, consumer, tps, destination, title) -> None:
        loop = getattr(self.app, "dlabel_loop", None)
        if loop is None or not tps:
            await build(self, consumer, tps, destination, title)
            return
        if loop.reads_changelog:
            destination.clear()  # None: nothing for Faust to replay (see active_remaining)
            destination.update({tp: None for tp in tps})
            return
        by_kafka_tp = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        if loop.opts.exactly_once:
            await loop.committer.own_tasks({tp.partition for tp in tps})
            last = await last_committed_offsets(loop.opts.bootstrap, by_kafka_tp)
            destination.clear()
            destination.update({by_kafka_tp[tp]: offset for tp, offset in last.items()})
            log.info("changelog ends for %s partitions (last committed records): %s", title,
                     {f"{tp.topic}:{tp.partition}": off for tp, off in last.items()})
        elif loop.opts.tansu:
            ends: Mapping = await fetch_end_offsets(loop.opts.bootstrap, by_kafka_tp)
            # Faust stores "last offset", i.e. end - 1 (see Recovery._build_highwaters).
            destination.clear()
            destination.update({by_kafka_tp[tp]: end - 1 for tp, end in ends.items()})
            log.info("changelog ends for %s partitions from fetch high watermarks: %s",
                     title, {f"{tp.topic}:{tp.partition}": end for tp, end in ends.items()})
        else:
            await build(self, consumer, tps, destination, title)

    def active_stats(self):
        # Faust's own subtracts an unknown (None) end when a partition still has an
        # offset from an earlier assignment, and the recovery service crashes with it
        offsets = self.active_offsets
        return {tp: RecoveryStats(end, offsets[tp], end - offsets[tp])
                for tp, end in self.active_highwaters.items()
                if end is not None and offsets.get(tp) is not None and end != offsets[tp]}

    Recovery._build_highwaters = build_highwaters
    Recovery.active_stats = active_stats
    _highwaters_patched = True


_table_start_patched = False


def start_tables_at_once() -> None:
    """Skip the fixed one-second sleep Faust's table manager takes when it starts.

    ``TableManager.on_start`` sleeps 1 s before it subscribes the tables' changelogs
    and starts recovery; every worker start waited for it before joining the group.
    The worker declares its one table before the app starts, so nothing is gained by
    waiting.
    """
    global _table_start_patched
    if _table_start_patched:
        return

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()

    TableManager.on_start = on_start
    _table_start_patched = True


def read_committed_in_faust(app: faust.App) -> None:
    """Make Faust's own consumer (the changelog recovery) read only committed records.

    Faust picks ``read_committed`` only for its own exactly-once mode, which would also
    start its transactional producers; dlabel has its own, so the switch is set just
    while the consumer is built.
    """
    thread = app.consumer._thread
    create = thread._create_worker_consumer

    def create_read_committed(transport):
        faust_consumer = thread.consumer
        saved = faust_consumer.in_transaction
        faust_consumer.in_transaction = True
        try:
            return create(transport)
        finally:
            faust_consumer.in_transaction = saved

    thread._create_worker_consumer = create_read_committed


def build_app(config: PipelineConfig, opts: WorkerOptions, pii: Optional[PiiHasher],
              clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> faust.App:
    """Build the Faust app of the join worker for ``config`` (its loop is ``app.dlabel_loop``)."""
    patch_table_recovery()
    start_tables_at_once()
    app = faust.App(
        app_id(config),
        broker=f"kafka://{opts.bootstrap}",
        store="rocksdb://" if config.store == "rocksdb" else "memory://",
        datadir=config.state_dir,
        topic_partitions=config.topics.partitions,
        topic_replication_factor=config.topics.replication_factor,
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=opts.session_timeout_s,
        broker_heartbeat_interval=max(0.3, opts.session_timeout_s / 10),
        broker_rebalance_timeout=min(opts.rebalance_timeout_s, opts.session_timeout_s),
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        broker_max_poll_records=opts.batch_size,
        stream_buffer_maxsize=max(16_384, opts.batch_size * 4),
        producer_acks=-1,
        # the loop publishes thousands of records per batch: fewer, larger requests
        producer_max_batch_size=256 * 1024,
        producer_max_request_size=4 * 1024 * 1024,
        web_enabled=False,
        web_host="127.0.0.1",
        web_port=opts.web_port or 0,
        autodiscover=False,
        processing_guarantee="at_least_once",
        broker_credentials=faust_credentials(config.kafka),
    )
    table = app.Table(state_table_name(config), partitions=config.topics.partitions,
                      key_type=str, value_type=None)
    loop = BatchLoop(config, opts, FaustGroup(app, table, opts.bootstrap), pii, clock)
    # the group assigns every topic the loop reads: the join's inputs (co-partitioned
    # with the table) and, with the repartition hop, the input topics as they are
    inputs = app.topic(*loop.roles, key_serializer="raw", value_serializer="raw")
    loop.after_outputs.append(ClosedTimeReporter(config, loop.join_roles).hook)
    app.dlabel_loop = loop  # for tests and the CLI summary
    # Before anything starts: Faust's fetcher must never read the input partitions
    # (installed in a task it raced with the fetcher's first fetch after a restart).
    keep_inputs_from_faust(app.consumer, loop.roles)
    if opts.exactly_once:
        read_committed_in_faust(app)
    if opts.tansu:
        leave_in_generation_zero()
    _declare_agents(app, inputs, loop, opts.member_slot)
    return app


def group_member_id(app: faust.App) -> Optional[str]:
    """This worker's member id in its consumer group (None before it joined)."""
    thread = getattr(app.consumer, "_thread", None)
    if thread is None:
        return None
    try:
        coordinator = thread._ensure_consumer()._coordinator  # aiokafka's GroupCoordinator
    except Exception:  # the consumer not started (or stopped): no member
        return None
    return getattr(coordinator, "member_id", None) or None


def _declare_agents(app: faust.App, inputs, loop: BatchLoop,
                    member_slot: Optional[MemberSlot] = None) -> None:
    @app.agent(inputs)
    async def join_agent(stream):
        # Declared so that Faust's group subscribes the inputs and co-partitions the
        # table with them; the records are read by the loop. Should Faust ever hand
        # one over anyway, it is ignored: never acked, so Faust commits nothing for it.
        warned = False
        async for _ in stream.noack():
            if not warned:
                log.warning("Faust delivered an input record that the batch loop reads "
                            "itself; ignoring it (and any more)")
                warned = True

    @app.task
    async def input_loop():
        try:
            await loop.run()
        except Exception as exc:  # Faust would log and go on without it: stop instead
            log.exception("join loop failed; stopping the worker")
            await app.crash(exc)
            raise

    @app.timer(interval=0.5)
    async def idle_timer():
        try:
            await loop.on_timer()
        except Exception as exc:
            log.exception("join timer failed; stopping the worker")
            await app.crash(exc)
            raise

    @app.on_before_shutdown.connect
    async def on_shutdown(sender, **kwargs):
        # before Faust stops the producer: the batch in flight finishes first
        await loop.stop()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        await loop.on_revoked()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs):
        loop.on_assigned(assigned)
        if member_slot is not None:
            member = group_member_id(app)
            if member:
                member_slot.record(member)


def run_app(app: faust.App, loglevel: str = "WARNING") -> BatchLoop:
    """Run the join worker's app in this process until Ctrl-C, SIGTERM or a finished drain.

    Returns its batch loop (for the summary); raises what crashed the app.
    """
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    loop: BatchLoop = app.dlabel_loop
    loop.on_drained = lambda: worker._schedule_shutdown(signal.SIGTERM)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    if app.crash_reason is not None:
        raise DlabelError(f"the join worker stopped on an error: {app.crash_reason!r}")
    return loop
