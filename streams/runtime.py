"""Running the join worker as a process: topics, broker quirks, the Faust worker loop."""
from __future__ import annotations

import logging
import signal
from typing import Optional

from schemas.config import PipelineConfig
from schemas.errors import DlabelError
from schemas.pii import PiiHasher, load_pii_key
from streams.broker import free_port
from streams.topics import ensure_topics
from streams.worker import WorkerOptions, build_app, changelog_topic

log = logging.getLogger("dlabel.runtime")


def prepare(config: PipelineConfig, bootstrap: str) -> bool:
    """Create every topic the worker uses; return True when the broker is Tansu."""
    from streams.tansu_quirks import is_tansu
    ensure_topics(bootstrap, config, compacted=[changelog_topic(config)])
    return is_tansu(bootstrap)


def run_worker(config: PipelineConfig, drain: bool = False, loglevel: str = "WARNING",
               web_port: Optional[int] = None, batch_size: int = 2000,
               session_timeout_s: float = 10.0) -> dict:
    """Run the join worker in this process until Ctrl-C (or, with ``drain``, until caught up).

    Returns a summary: records in per topic, labeled sent, dead letters by reason.
    """
    import faust

    bootstrap = config.bootstrap_servers
    key = load_pii_key(config)
    pii = PiiHasher(key) if key else None
    tansu = prepare(config, bootstrap)
    opts = WorkerOptions(bootstrap=bootstrap, drain=drain, tansu=tansu, batch_size=batch_size,
                         session_timeout_s=session_timeout_s,
                         web_port=web_port or free_port("127.0.0.1"))
    app = build_app(config, opts, pii)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
                          override_logging=False)
    runner = app.dlabel_runner
    runner.on_drained = lambda: worker._schedule_shutdown(signal.SIGTERM)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass
    if app.crash_reason is not None:
        raise DlabelError(f"the join worker stopped on an error: {app.crash_reason!r}")
    proc = runner.proc
    return {
        "requests": proc.records_in["requests"],
        "feedback": proc.records_in["feedback"],
        "labeled_sent": runner.sent_labeled,
        "dead_letters": dict(sorted(proc.dead_letters.items())),
        "pending": len(proc.join.pending),
        "counts": dict(sorted(proc.join.counts.items())),
        "batches": runner.batches,
        "busy_seconds": round((runner.last_event_at or 0) - (runner.first_event_at or 0), 3),
    }
