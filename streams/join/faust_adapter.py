"""The join worker: a Faust app running the event-time join on changelog-backed state.

Faust owns the consumer group (an agent is declared on the requests and feedback
topics, so their partitions and the state table's changelog are assigned together),
the rebalances and the table with its recovery. The input records themselves do not
go through Faust's per-record stream path: ``streams.join.batch_loop.JoinRunner`` reads them in
large batches with its own consumer, assigned what Faust's group gives this worker,
and ``streams.join.batch_commit.BatchCommitter`` makes each batch durable in order (outputs
acked, state written, offsets committed), so a crash at any point loses nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import faust

from schemas.config import PipelineConfig
from schemas.pii import PiiHasher
from streams.kafka.input_feed import keep_inputs_from_faust
from streams.kafka import clients as kafka_clients
from streams.join.batch_loop import JoinRunner
from streams.join.closed_time_reporter import ClosedTimeReporter

log = logging.getLogger("dlabel.worker")


@dataclass
class WorkerOptions:
    """Run-time knobs of the worker that are not part of the pipeline config."""

    bootstrap: str
    drain: bool = False            # exit once all input is consumed (bounded replay)
    drain_quiet_ms: int = 1500     # ... and every input has been quiet this long
    batch_size: int = 2000
    session_timeout_s: float = 10.0
    web_port: Optional[int] = None  # Faust starts its web server anyway: give it a port
    tansu: bool = False             # embedded-broker work-arounds (tansu_quirks)


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
        from streams.kafka.tansu_quirks import install_faust_recovery_fix
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
        # the runner publishes thousands of records per batch: fewer, larger requests
        producer_max_batch_size=256 * 1024,
        producer_max_request_size=4 * 1024 * 1024,
        web_enabled=False,
        web_host="127.0.0.1",
        web_port=opts.web_port or 0,
        autodiscover=False,
        processing_guarantee="at_least_once",
        broker_credentials=kafka_clients.faust_credentials(config.kafka),
    )
    inputs = app.topic(config.topics.requests, config.topics.feedback,
                       key_serializer="raw", value_serializer="raw")
    table = app.Table(state_table_name(config), partitions=config.topics.partitions,
                      key_type=str, value_type=None)
    runner = JoinRunner(config, opts, app, table, pii, clock)
    runner.after_outputs.append(ClosedTimeReporter(config, runner.roles).hook)
    app.dlabel_runner = runner  # for tests and the CLI summary
    # Before anything starts: Faust's fetcher must never read the input partitions
    # (installed in a task it raced with the fetcher's first fetch after a restart).
    keep_inputs_from_faust(app.consumer, runner.roles)

    @app.agent(inputs)
    async def join_agent(stream):
        # Declared so that Faust's group subscribes the inputs and co-partitions the
        # table with them; the records are read by the runner. Should Faust ever hand
        # one over anyway, it is ignored: never acked, so Faust commits nothing for it.
        warned = False
        async for _ in stream.noack():
            if not warned:
                log.warning("Faust delivered an input record that the runner reads itself; "
                            "ignoring it (and any more)")
                warned = True

    @app.task
    async def input_loop():
        try:
            await runner.run()
        except Exception as exc:  # Faust would log and go on without it: stop instead
            log.exception("join loop failed; stopping the worker")
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

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        await runner.on_revoked()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs):
        runner.on_assigned()

    return app
