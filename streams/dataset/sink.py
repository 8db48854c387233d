"""The dataset sink process: labeled topic -> Parquet windows -> windows topic.

A plain kafka-python loop (no Faust: the sink keeps no table, its state is the dataset).
It reads every partition of the labeled topic from the positions recorded in the
dataset's ``_sink/`` state, and the whole (tiny, compacted) closed-time report topic. Per
poll: feed the ``DatasetWriter``; trust the reports it has read past; commit on size or
age; close the windows the join's closed time has passed (commit, manifest, then the
windows event); and send rejected records to the dead-letter topic.

One sink serves the whole labeled topic (Parquet writing is cheap next to the join);
a second one would write the same files, so run one per pipeline.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from schemas.config import PipelineConfig
from schemas.dataset_schema import window_dir
from schemas.records import DeadLetter
from streams.kafka import clients as kafka_clients
from streams.common import metrics
from streams.common.logs import setup_logging
from streams.kafka.probe import BrokerProbe
from streams.kafka.topics import ensure_topics
from streams.dataset.writer import STATE_DIR, DatasetWriter
from streams.common.storage import open_storage
from schemas.closed_time_report import DRAINED, decode_report, input_names
from streams.dataset.closed_time import SinkClosedTime
from streams.dataset.manifest import MANIFEST, read_manifest, window_event

log = logging.getLogger("dlabel.sink")

SENT_STATE = f"{STATE_DIR}/windows-sent.json"
LOCK = f"{STATE_DIR}/active.lock"


@dataclass
class SinkOptions:
    """Run-time knobs of the sink that are not part of the pipeline config."""
    bootstrap: str
    drain: bool = False          # exit once the join drained and every window is closed
    poll_ms: int = 200
    max_records: int = 5000
    parent_pid: Optional[int] = None  # as a child of `dlabel worker`: stop when it is gone
    retry_s: float = 5.0             # while the dataset path cannot be written
    metrics_port: Optional[int] = None


def sink_group(config: PipelineConfig) -> str:
    """The consumer group the sink commits its positions to (for lag monitoring)."""
    return f"dlabel-{config.pipeline}-sink"


class DatasetSink:
    """Runs the dataset sink until stopped (or drained)."""

    def __init__(self, config: PipelineConfig, opts: SinkOptions,
                 clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> None:
        self.config, self.opts, self.clock = config, opts, clock
        self.storage = open_storage(config.dataset.path)
        self.writer = DatasetWriter(config, self.storage, clock)
        self.closed_time = SinkClosedTime(input_names(config))
        self.sent: list[str] = []
        self.close_latency_ms: list[int] = []
        self.stopping = False
        self.stalled: Optional[str] = None  # why commits fail, while they do
        self.iceberg = None  # the Iceberg table closed windows go to (dataset.iceberg)

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        """Consume until ``stop()`` (or until drained); return a summary."""
        t = self.config.topics
        self.consumer = KafkaConsumer(
            bootstrap_servers=self.opts.bootstrap, group_id=sink_group(self.config),
            enable_auto_commit=False, auto_offset_reset="earliest",
            isolation_level="read_committed",  # exactly once upstream: committed labels only
            client_id=f"dlabel-{self.config.pipeline}-sink", max_poll_records=self.opts.max_records,
            **kafka_clients.kafka_python(self.config.kafka))
        self.producer = KafkaProducer(bootstrap_servers=self.opts.bootstrap, acks="all",
                                      enable_idempotence=False, linger_ms=5,
                                      client_id=f"dlabel-{self.config.pipeline}-sink",
                                      **kafka_clients.kafka_python(self.config.kafka))
        try:
            labeled = [TopicPartition(t.labeled, p) for p in range(t.partitions)]
            reports = TopicPartition(t.closed_time, 0)
            self.consumer.assign(labeled + [reports])
            if not self._take_lock():
                return self.summary()
            resume = self.writer.recover(list(range(t.partitions)))
            for tp in labeled:
                self.consumer.seek(tp, resume[tp.partition])
            self.consumer.seek_to_beginning(reports)
            self.sent = json.loads(self.storage.read(SENT_STATE) or b"[]")
            self._open_iceberg()
            self._send_unsent_events()
            log.info("sink started at %s", {f"{t.labeled}:{p}": o for p, o in resume.items()})
            while not self.stopping:
                self._poll_once()
                if self._parent_gone():
                    log.warning("sink: the worker process is gone; stopping")
                    break
                if self.opts.drain and self._drained():
                    log.info("sink drained: every window closed")
                    break
        finally:
            self.producer.flush()
            self.producer.close()
            self.consumer.close(autocommit=False)
            if getattr(self, "_lock_fd", None) not in (None, -1):
                os.close(self._lock_fd)
                self._lock_fd = None
        return self.summary()

    def stop(self) -> None:
        """Ask the sink loop to finish its current poll and return."""
        self.stopping = True

    def _parent_gone(self) -> bool:
        """As a child of `dlabel worker`: whether that worker has exited."""
        return self.opts.parent_pid is not None and os.getppid() != self.opts.parent_pid

    def _take_lock(self) -> bool:
        """One active sink per dataset: a second one (e.g. of a second `dlabel worker` on
        the same host) stands by until the first one exits, then takes over."""
        fd = self.storage.try_lock(LOCK)
        if fd is None:
            log.warning("sink: another sink holds %s; standing by", self.storage.uri(LOCK))
            while fd is None and not self.stopping:
                if self._parent_gone():
                    raise SystemExit(0)
                time.sleep(self.opts.retry_s)
                fd = self.storage.try_lock(LOCK)
            if fd is not None:
                log.warning("sink: took over %s", self.storage.uri(LOCK))
        self._lock_fd = fd
        return fd is not None

    def summary(self) -> dict:
        """What the sink did: the writer's counts, windows sent, close latencies (ms)."""
        lat = sorted(self.close_latency_ms)
        return {**self.writer.counts, "windows_sent": len(self.sent),
                "close_latency_ms_max": lat[-1] if lat else None,
                "close_latency_ms_median": lat[len(lat) // 2] if lat else None}

    # ------------------------------------------------------------------ one step
    def _poll_once(self) -> None:
        if self.stalled is not None:
            time.sleep(self.opts.retry_s)
            self._write_step()
            return
        t = self.config.topics
        batches = self.consumer.poll(timeout_ms=self.opts.poll_ms,
                                     max_records=self.opts.max_records)
        rejected = []
        for tp, records in batches.items():
            if tp.topic == t.closed_time:
                for r in records:
                    try:
                        self.closed_time.report(*decode_report(r.value))
                    except ValueError as e:
                        log.warning("ignoring a bad closed-time report at offset %d: %s", r.offset, e)
                continue
            for r in records:
                bad = self.writer.add(tp.partition, r.offset, r.value)
                if bad is not None:
                    rejected.append(bad)
        if rejected:
            self._dead_letter(rejected)
        self.closed_time.update(self.writer.positions)
        closed = self.closed_time.current()
        if closed is not None:
            metrics.SINK_CLOSED_TIME.set(closed)
        self._write_step()

    def _write_step(self) -> None:
        """Commit when due and close ready windows; on a storage error, stall and retry.

        While stalled the sink reads nothing more (a commit must be retried over the very
        same offsets) and commits no offsets; it says why in one log line, and again
        when it resumes.
        """
        try:
            if self.writer.due() or self.stalled is not None or self._draining_rows():
                self._commit()
            self._close_ready()
        except OSError as e:
            if self.stalled is None:
                log.error("sink: cannot write to %s (%s); not committing offsets, input "
                          "paused, retrying every %.1fs", self.config.dataset.path, e,
                          self.opts.retry_s)
                metrics.SINK_STALLED.set(1)
            self.stalled = str(e)
            return
        if self.stalled is not None:
            log.warning("sink: writing to %s works again; resuming", self.config.dataset.path)
            metrics.SINK_STALLED.set(0)
            self.stalled = None

    def _commit(self) -> None:
        counts = self.writer.counts
        before = counts["rows"], counts["duplicates"], counts["late"]
        with metrics.SINK_COMMIT_SECONDS.time():
            self.writer.commit_all()
        metrics.SINK_ROWS.inc(counts["rows"] - before[0])
        metrics.SINK_DUPLICATES.inc(counts["duplicates"] - before[1])
        metrics.SINK_LATE.inc(counts["late"] - before[2])
        offsets = {TopicPartition(self.config.topics.labeled, p): OffsetAndMetadata(o, "", -1)
                   for p, o in self.writer.committed.items()}
        if offsets:
            try:
                self.consumer.commit(offsets)
            except Exception as e:  # monitoring only: the dataset's _sink/ state is the truth
                log.warning("sink: consumer-group offset commit failed (%s); continuing", e)

    def _close_ready(self) -> None:
        self._apply_corrections()
        ready = self.writer.ready_windows(self.closed_time.current())
        if not ready:
            return
        now = self.clock()
        self._commit()
        for window in ready:
            manifest = self.writer.close(window, self.config.topics.labeled)
            self._commit_to_iceberg(manifest)
            self._send_event(window_dir(window), manifest)
            self.close_latency_ms.append(self.clock() - now)
            metrics.WINDOWS_CLOSED.inc()
            metrics.observe_window_stats(manifest["stats"])
            metrics.WINDOW_CLOSE_SECONDS.observe((self.clock() - now) / 1000)
            log.info("window %s closed: %d rows, %s positives", manifest["window_start"],
                     manifest["rows"], manifest["positives"])

    def _apply_corrections(self) -> None:
        """Closed windows with committed corrections: their next version, then its event."""
        for window in self.writer.corrected_windows():
            manifest = self.writer.apply_corrections(window)
            if manifest is None:
                continue
            self._commit_to_iceberg(manifest)
            self._send_event(window_dir(window), manifest)
            metrics.WINDOW_CORRECTIONS.inc()
            metrics.observe_window_stats(manifest["stats"])
            log.info("window %s corrected: version %d, %d corrections in all",
                     manifest["window_start"], manifest["version"],
                     manifest["stats"]["corrections"])

    def _send_event(self, dirname: str, manifest: dict) -> None:
        event = window_event(manifest, self.storage.uri(f"{dirname}/{MANIFEST}"))
        self.producer.send(self.config.topics.windows, key=manifest["window_start"].encode(),
                           value=json.dumps(event, sort_keys=True).encode()).get(timeout=30)
        sent = _sent_key(dirname, manifest)
        if sent not in self.sent:
            self.sent.append(sent)
            self.storage.write_atomic(SENT_STATE, json.dumps(self.sent).encode())

    def _send_unsent_events(self) -> None:
        """After a crash between a manifest and its event: commit the window to the
        Iceberg table (once: the table knows its windows) and send the event now."""
        for start in sorted(self.writer.closed):
            dirname = window_dir(start)
            manifest = read_manifest(self.storage, dirname)
            if manifest is not None and _sent_key(dirname, manifest) not in self.sent:
                log.info("sink: sending the windows event of %s again", dirname)
                self._commit_to_iceberg(manifest)
                self._send_event(dirname, manifest)

    def _open_iceberg(self) -> None:
        """With ``dataset.iceberg``: load the catalog, create or evolve the table."""
        spec = self.config.dataset.iceberg
        if spec is None:
            return
        from streams.dataset.iceberg_table import IcebergWindows  # pyiceberg: optional
        catalog = spec.catalog_properties()
        uri = catalog.get("uri", "")
        if uri.startswith("sqlite:///"):  # SQLite creates the file, not its directory
            os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
        self.iceberg = IcebergWindows(spec.table, catalog, self.writer.schema,
                                      self.config.pipeline)
        self.iceberg.ensure_table()

    def _commit_to_iceberg(self, manifest: dict) -> None:
        if self.iceberg is not None:
            from streams.dataset.iceberg_table import window_file_uris, window_version_uris
            uris = (window_version_uris if self.writer.corrections_on
                    else window_file_uris)(self.storage, manifest)
            if self.iceberg.commit_window(manifest, uris):
                log.info("window %s committed to Iceberg table %s", manifest["window_start"],
                         self.config.dataset.iceberg.table)

    def _dead_letter(self, rejected: list[DeadLetter]) -> None:
        futures = [self.producer.send(self.config.topics.dead_letter, value=r.encode())
                   for r in rejected]
        for f in futures:
            f.get(timeout=30)

    def _draining_rows(self) -> bool:
        """Draining and the join is done: rows still buffered (corrections of closed
        windows) are committed now, not after ``dataset.flush_interval``."""
        return (self.opts.drain and self.writer.buffered_rows > 0
                and self.closed_time.current() == DRAINED)

    def _drained(self) -> bool:
        return (self.closed_time.current() == DRAINED and not self.writer.open_ids
                and not self.writer.redo and not self.writer.buffered_rows
                and not self.writer.corrected_windows())


def _sent_key(dirname: str, manifest: dict) -> str:
    """How ``windows-sent.json`` names a sent windows event: the directory for version 1
    (as before versions existed), ``<dir>@v<n>`` for a later version."""
    version = manifest.get("version", 1)
    return dirname if version == 1 else f"{dirname}@v{version}"


def run_sink(config: PipelineConfig, drain: bool = False, parent_pid: Optional[int] = None,
             metrics_port: Optional[int] = None) -> dict:
    """Run the dataset sink in this process until Ctrl-C (or drained)."""
    kafka_clients.configure(config.kafka)
    ensure_topics(config.bootstrap_servers, config)
    sink = DatasetSink(config, SinkOptions(bootstrap=config.bootstrap_servers, drain=drain,
                                           parent_pid=parent_pid))
    metrics.serve(metrics_port, "dataset sink")
    probe = BrokerProbe(config.bootstrap_servers).start()
    previous = signal.signal(signal.SIGTERM, lambda *_: sink.stop())
    try:
        return sink.run()
    except KeyboardInterrupt:
        return sink.summary()
    finally:
        probe.stop()
        signal.signal(signal.SIGTERM, previous)


def sink_process_main(config: PipelineConfig, drain: bool, loglevel: str, conn,
                      metrics_port: Optional[int] = None) -> None:
    """Entry point of the sink as a child process of ``dlabel worker`` (spawned)."""
    setup_logging(loglevel)
    try:
        summary = run_sink(config, drain=drain, parent_pid=os.getppid(),
                           metrics_port=metrics_port)
        conn.send({"ok": True, "summary": summary})
    except BaseException as e:  # report to the parent, which fails the command
        log.exception("the dataset sink failed")
        conn.send({"ok": False, "error": repr(e)})
        raise SystemExit(1)
    finally:
        conn.close()
