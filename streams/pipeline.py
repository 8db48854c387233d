"""``dlabel worker``: the join worker in this process and the dataset sink in a child.

The top of the stream side: it prepares the topics, then runs the join
(``streams.join``) and the sink (``streams.dataset``) together or alone.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import Optional

from schemas.config import PipelineConfig
from schemas.errors import ConfigError, DlabelError
from schemas.pii import PiiHasher, load_pii_key
from streams.common import metrics
from streams.join.faust_adapter import WorkerOptions, app_id, build_app, changelog_topic, run_app
from streams.kafka import clients as kafka_clients
from streams.kafka.broker import free_port
from streams.kafka.probe import BrokerProbe
from streams.kafka.tansu_quirks import evict_predecessor, is_tansu
from streams.kafka.topics import ensure_topics

log = logging.getLogger("dlabel.pipeline")

#: The join worker's consumer-group session, in seconds (was 10): the smallest a default
#: Kafka broker accepts (``group.min.session.timeout.ms``). A member that dies without
#: leaving (SIGKILL, a lost node) keeps its partitions that long unless a restarted
#: worker rejoins first (Kafka: ``WorkerOptions.rebalance_timeout_s`` then bounds the
#: wait; Tansu: the restarted worker drops it, ``tansu_quirks.evict_predecessor``);
#: a stalled process (SIGSTOP, swapping) loses them after it. Heartbeats come from
#: Faust's consumer thread, so a busy batch loop does not miss them. Tansu answers a
#: JoinGroup only after half the group's session, in whole seconds (3 s; its rebalance
#: timeout is never read, see ``streams.kafka.tansu_quirks``): 2 s would make that 1 s,
#: but the fault tests' freeze sampling (a worker SIGSTOPped most of the time) then
#: costs the frozen worker its partitions.
SESSION_TIMEOUT_S = 6.0


def run_pipeline(config: PipelineConfig, only: Optional[str] = None, drain: bool = False,
                 loglevel: str = "WARNING", batch_size: int = 2000,
                 session_timeout_s: float = SESSION_TIMEOUT_S, metrics_port: Optional[int] = None,
                 guarantee: str = "auto") -> dict:
    """Run the join worker and the dataset sink (``only``: "join" or "sink" alone).

    ``guarantee`` of the labeled topic: "auto" (exactly once where the broker has
    transactions, else at least once), "exactly_once" or "at_least_once".

    The sink runs in a child process (the join keeps one core busy). Metrics: the join
    on ``metrics_port``, the sink on ``metrics_port + 1`` (``only="sink"``: on
    ``metrics_port``). With ``drain`` both stop when the input is consumed and every
    window is closed. Returns the join's summary with the sink's under ``"sink"``.
    """
    kafka_clients.configure(config.kafka)
    if only == "sink":
        kafka_clients.check_connection(config.bootstrap_servers)
        prepare(config, config.bootstrap_servers)
        from streams.dataset.sink import run_sink
        return {"sink": run_sink(config, drain=drain, metrics_port=metrics_port)}
    load_pii_key(config)  # refuse to start without a PII key before touching the broker
    kafka_clients.check_connection(config.bootstrap_servers)  # a refused TLS/SASL login: now
    metrics.serve(metrics_port, "join worker")
    probe = BrokerProbe(config.bootstrap_servers).start()
    try:
        return _run_join_and_sink(config, only, drain, loglevel, batch_size, session_timeout_s,
                                  metrics_port, guarantee)
    finally:
        probe.stop()


def _run_join_and_sink(config: PipelineConfig, only: Optional[str], drain: bool, loglevel: str,
                       batch_size: int, session_timeout_s: float,
                       metrics_port: Optional[int], guarantee: str) -> dict:
    if only == "join":
        return run_join_worker(config, drain=drain, loglevel=loglevel, batch_size=batch_size,
                               session_timeout_s=session_timeout_s, guarantee=guarantee)
    prepare(config, config.bootstrap_servers)
    # imported here: the join process itself never runs the sink (pyarrow and the
    # dataset code cost ~0.3 s of its start-up); the spawned child imports it
    from streams.dataset.sink import sink_process_main
    ctx = multiprocessing.get_context("spawn")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    sink_port = metrics_port + 1 if metrics_port is not None else None
    sink = ctx.Process(target=sink_process_main,
                       args=(config, drain, level, child_conn, sink_port),
                       name="dlabel-sink", daemon=False)
    sink.start()
    child_conn.close()
    stopping = threading.Event()
    threading.Thread(target=_stop_without_sink, args=(sink, drain, stopping),
                     name="dlabel-sink-watch", daemon=True).start()
    try:
        summary = run_join_worker(config, drain=drain, loglevel=loglevel,
                                  batch_size=batch_size, session_timeout_s=session_timeout_s,
                                  guarantee=guarantee)
    except BaseException:
        stopping.set()
        sink.terminate()
        sink.join(10)
        raise
    stopping.set()
    if not drain:
        sink.terminate()  # SIGTERM: the sink finishes its poll and exits
    try:
        result = parent_conn.recv() if parent_conn.poll(None if drain else 30) else None
    except EOFError:  # the sink child died without sending its summary
        result = None
    sink.join(30)
    if result is None or not result.get("ok"):
        raise DlabelError(f"the dataset sink stopped on an error: "
                          f"{(result or {}).get('error', 'it exited without a summary')}")
    summary["sink"] = result["summary"]
    return summary


def _stop_without_sink(sink, drain: bool, stopping: threading.Event) -> None:
    """The join must not go on without its sink: when the sink child dies (SIGKILL, the
    OOM killer, a crash), stop this worker too, so that its supervisor restarts both."""
    sink.join()
    if stopping.is_set() or (drain and sink.exitcode == 0):
        return
    log.error("the dataset sink (pid %s) exited with code %s; stopping the join worker so "
              "that its supervisor restarts both", sink.pid, sink.exitcode)
    os.kill(os.getpid(), signal.SIGTERM)  # the Faust worker shuts down in order


def prepare(config: PipelineConfig, bootstrap: str) -> bool:
    """Create every topic the worker uses; return True when the broker is Tansu."""
    ensure_topics(bootstrap, config, compacted=[changelog_topic(config)])
    return is_tansu(bootstrap)


GUARANTEES = ("auto", "exactly_once", "at_least_once")


def _exactly_once(guarantee: str, tansu: bool) -> bool:
    """Whether the worker writes in transactions; logs the guarantee when it is not."""
    if guarantee not in GUARANTEES:
        raise ConfigError(f"processing guarantee {guarantee!r} is not one of {GUARANTEES}; "
                          "pass --guarantee auto (exactly once where the broker has "
                          "transactions)")
    if tansu and guarantee == "exactly_once":
        raise ConfigError("exactly_once needs a broker with transactions (Apache Kafka, "
                          "Redpanda, Confluent, MSK); the embedded Tansu broker has none: use "
                          "--guarantee auto or at_least_once, or dlabel broker --engine kafka")
    if tansu:
        log.warning("at-least-once output: the broker (Tansu) has no transactions; consumers "
                    "of the labeled topic may see a label repeated after a crash")
        return False
    if guarantee == "at_least_once":
        log.warning("at-least-once output (--guarantee at_least_once): consumers of the "
                    "labeled topic may see a label repeated after a crash")
        return False
    return True


def run_join_worker(config: PipelineConfig, drain: bool = False, loglevel: str = "WARNING",
                    web_port: Optional[int] = None, batch_size: int = 2000,
                    session_timeout_s: float = SESSION_TIMEOUT_S,
                    guarantee: str = "auto") -> dict:
    """Run the join worker in this process until Ctrl-C (or, with ``drain``, until caught up).

    Returns a summary: records in per topic, labeled sent, dead letters by reason.
    """
    bootstrap = config.bootstrap_servers
    key = load_pii_key(config)
    pii = PiiHasher(key) if key else None
    tansu = prepare(config, bootstrap)
    exactly_once = _exactly_once(guarantee, tansu)
    # Tansu keeps a dead predecessor in the group until its session ends: drop it first
    slot = evict_predecessor(bootstrap, app_id(config), config.state_dir) if tansu else None
    opts = WorkerOptions(bootstrap=bootstrap, drain=drain, tansu=tansu, exactly_once=exactly_once,
                         batch_size=batch_size, member_slot=slot,
                         session_timeout_s=session_timeout_s,
                         web_port=web_port or free_port("127.0.0.1"))
    loop = run_app(build_app(config, opts, pii), loglevel=loglevel)
    proc = loop.proc
    return {
        "requests": proc.records_in["requests"],
        "feedback": proc.records_in["feedback"],
        "labeled_sent": loop.sent_labeled,
        "dead_letters": dict(sorted(proc.dead_letters.items())),
        "pending": len(proc.join.pending),
        "counts": dict(sorted(proc.join.counts.items())),
        "batches": loop.batches,
        "busy_seconds": round((loop.last_event_at or 0) - (loop.first_event_at or 0), 3),
    }
