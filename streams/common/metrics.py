"""Prometheus metrics of every long-running dlabel process (names follow the conventions:
``dlabel_`` prefix, ``_total`` counters, units in names).

Each process serves its own registry over HTTP (``--metrics-port``): the join worker on
the port given, the dataset sink (a child process of ``dlabel worker``) on the next
port, the jobs runner on its own. Metrics are process-local and restart at zero, as
Prometheus expects of counters.
"""
from __future__ import annotations

import logging
from typing import Optional

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("dlabel.metrics")

BROKER_UP = Gauge("dlabel_broker_up", "1 while the broker answers this process's probe, else 0")

# join worker
EVENTS_IN = Counter("dlabel_events_in_total", "Records consumed from an input topic", ["topic"])
LABELED = Counter("dlabel_labeled_total", "Labeled examples published", ["label"])
DEAD_LETTERS = Counter("dlabel_dead_letters_total", "Records sent to the dead-letter topic",
                       ["reason"])
PENDING = Gauge("dlabel_join_pending_requests", "Requests waiting for their label")
EARLY = Gauge("dlabel_join_early_feedback", "Feedback buffered before its request")
JOIN_CLOSED_TIME = Gauge("dlabel_join_closed_time_ms",
                         "The join's closed time (watermark - allowed lateness), epoch ms")
WATERMARK_LAG = Gauge("dlabel_watermark_lag_seconds",
                      "Newest event time seen minus the watermark")
JOIN_OUTCOMES = Counter("dlabel_join_outcomes_total",
                        "What the join made of events: labeled, corrections, "
                        "negatives_sampled_out, feedback_outside_window (outside its "
                        "request's label window by event time), feedback_after_final...",
                        ["outcome"])
FEEDBACK_DELAY = Histogram("dlabel_feedback_delay_seconds",
                           "Labeling feedback time minus its request's time, inside the label "
                           "window or after it (compare the buckets with join.label_window: "
                           "the share of clicks a window catches)",
                           buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700,
                                    3600, 7200, 14400, 21600, 43200, 86400))
BATCH_SECONDS = Histogram("dlabel_join_batch_seconds", "Time to process an input batch and hand it to the committer")

# dataset sink
SINK_ROWS = Counter("dlabel_sink_rows_total", "Rows committed to Parquet")
SINK_DUPLICATES = Counter("dlabel_sink_duplicates_total", "Repeated labeled examples dropped")
SINK_LATE = Counter("dlabel_sink_late_total", "Labeled examples for an already closed window")
WINDOW_CORRECTIONS = Counter("dlabel_window_versions_total",
                             "New versions of closed windows made by corrections")
WINDOW_STATS = Gauge("dlabel_window_stat", "Label-quality statistics of the window last "
                     "closed or corrected (see the manifest's stats)", ["stat"])
SINK_COMMIT_SECONDS = Histogram("dlabel_sink_commit_seconds", "Time to commit buffered rows")
SINK_CLOSED_TIME = Gauge("dlabel_sink_closed_time_ms",
                         "The join's closed time as the sink trusts it, epoch ms")
WINDOWS_CLOSED = Counter("dlabel_windows_closed_total", "Dataset windows closed")
WINDOW_CLOSE_SECONDS = Histogram("dlabel_window_close_latency_seconds",
                                 "Trusted closed time past a window's close -> its windows event sent")
SINK_STALLED = Gauge("dlabel_sink_stalled", "1 while the sink cannot commit (e.g. disk trouble)")

# jobs runner
JOB_SECONDS = Histogram("dlabel_job_duration_seconds", "Retraining job durations",
                        buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800))
JOBS = Counter("dlabel_jobs_total", "Retraining jobs by outcome", ["outcome"])
CHAMPION_METRIC = Gauge("dlabel_champion_metric", "Champion metrics on the latest window",
                        ["metric", "slice"])
CHAMPION_VERSION = Gauge("dlabel_champion_version", "Registry version number of the champion")
DRIFT_FLAGGED = Gauge("dlabel_drift_flagged", "1 when a feature drifted past its threshold",
                      ["feature"])


def serve(port: Optional[int], what: str) -> None:
    """Serve this process's metrics on ``port`` (no-op for None)."""
    if port is None:
        return
    start_http_server(port)
    log.info("%s metrics on http://0.0.0.0:%d/metrics", what, port)


class JoinMetrics:
    """Exports a join worker's counters and gauges after each batch (cheap: per batch,
    from the processor's own cumulative counts, never per record)."""

    def __init__(self, topics: dict[str, str]) -> None:
        self.topics = topics  # role -> topic name
        self._records: dict[str, int] = {}
        self._dead: dict[str, int] = {}
        self._outcomes: dict[str, int] = {}

    def observe(self, proc, labels: dict) -> None:
        """After a batch: ``proc``'s cumulative counts, ``labels`` = {label: examples sent}."""
        for role, n in proc.records_in.items():
            delta = n - self._records.get(role, 0)
            if delta > 0:
                EVENTS_IN.labels(topic=self.topics.get(role, role)).inc(delta)
            self._records[role] = n
        for reason, n in proc.dead_letters.items():
            delta = n - self._dead.get(reason, 0)
            if delta > 0:
                DEAD_LETTERS.labels(reason=reason).inc(delta)
            self._dead[reason] = n
        for label, n in labels.items():
            LABELED.labels(label=str(label)).inc(n)
        join = proc.join
        for outcome, n in join.counts.items():
            delta = n - self._outcomes.get(outcome, 0)
            if delta > 0:
                JOIN_OUTCOMES.labels(outcome=outcome).inc(delta)
            self._outcomes[outcome] = n
        delays = join.feedback_delays
        while delays:
            FEEDBACK_DELAY.observe(delays.popleft() / 1000)
        PENDING.set(len(join.pending))
        EARLY.set(len(join.early))
        if join.closed_time is not None:
            JOIN_CLOSED_TIME.set(join.closed_time)
        wm = proc.watermark.last
        newest = proc.watermark.newest_ts()
        if wm is not None and newest is not None:
            WATERMARK_LAG.set(max(0, newest - wm) / 1000)


def observe_window_stats(stats: dict) -> None:
    """Export a window's manifest ``stats`` (numbers only; delay quantiles by name)."""
    for name, value in stats.items():
        if isinstance(value, dict):
            for q, v in value.items():
                WINDOW_STATS.labels(stat=f"{name}_{q}").set(v)
        elif isinstance(value, (int, float)):
            WINDOW_STATS.labels(stat=name).set(value)
