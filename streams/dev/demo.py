"""`dlabel demo`: the whole loop on an embedded broker, in one command.

Simulated traffic -> join worker -> labeled topic -> Parquet windows -> windows topic ->
retraining jobs -> model registry -> report. For the ctr scenario: about a day of
traffic in hourly windows, with a concept drift halfway (men's dress shoes stop being
clicked), so that the per-window table shows production degrading on that slice and
the retrained model catching up.

Corrections are on (``join.correction_window`` 24h) and 5% of the ctr clicks arrive
late, as a mobile client that buffered them sends them: after their request's label
was final, but inside its label window by event time. In a replay of topics written
up front, "after the label was final" would depend on how far the worker reads one
topic ahead of the other, so the demo makes it literal: a running ``dlabel worker``
labels the day until all but the last windows are closed, stops, the late clicks are
produced, and the drain that follows turns them into corrections (new window versions).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from schemas.config import PipelineConfig, load_config
from schemas.errors import DlabelError
from streams.kafka.broker import EmbeddedBroker
from streams.dev.simulate import DEFAULT_START_MS, ConceptDrift, generate, produce

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DAY_MS = 24 * 3_600_000
DRIFT_SLICE = ("category", "mens_dress_shoes")
CORRECTION_WINDOW = "24h"
#: the share of (ctr) clicks a buffering mobile client sends after the label is final
LATE_CLICK_FRACTION = 0.05


def write_demo_config(scenario: str, broker_url: str, work: Path) -> Path:
    """The example pipeline with its paths under ``work``, the demo's broker and
    corrections on (``join.correction_window``)."""
    data = yaml.safe_load((EXAMPLES / f"{scenario}.yaml").read_text())
    data["broker"] = broker_url
    data["join"]["correction_window"] = CORRECTION_WINDOW
    data["dataset"]["path"] = str(work / "data" / data["pipeline"])
    data["model"]["path"] = str(work / "models" / data["pipeline"])
    data["state_dir"] = str(work / "state")
    path = work / f"{scenario}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def corrections_line(closed: list[dict]) -> str:
    """One line on corrections from the closed windows' manifests (``list_windows``):
    labels corrected after they were final, and the windows they gave a new version."""
    fixed = sum((w.get("stats") or {}).get("corrections") or 0 for w in closed)
    versioned = [w for w in closed if (w.get("version") or 1) > 1]
    top = max((w.get("version") or 1 for w in closed), default=1)
    return (f"corrections: {fixed} label(s) corrected after they were final; "
            f"{len(versioned)} window(s) rewritten as a new version (highest v{top})")


def day_windows(cfg: PipelineConfig, events: list) -> set[int]:
    """The dataset windows the simulated requests fall in."""
    w = cfg.dataset.window_ms
    return {e.ts - e.ts % w for e in events if e.kind == "request"}


def dead_letter_counts(bootstrap: str, cfg: PipelineConfig) -> dict[str, int]:
    """Dead letters per reason, read from the dead-letter topic (both runs' letters)."""
    from schemas.records import decode_dead_letter
    from streams.dev.tail import read_topic

    counts: dict[str, int] = {}
    for record in read_topic(bootstrap, cfg.topics.dead_letter, idle_timeout_s=2.0):
        try:
            reason = decode_dead_letter(record.value)["reason"]
        except ValueError:
            reason = "unreadable"
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def label_live(cfg: PipelineConfig, cfg_path: Path, work: Path, closed_at_least: int,
               timeout_s: float = 600.0) -> int:
    """Run ``dlabel worker`` (not draining) until the dataset has ``closed_at_least``
    closed windows, then stop it (SIGTERM to its process group); the closed count."""
    from streams.common.storage import open_storage
    from streams.dataset.manifest import list_windows

    storage = open_storage(cfg.dataset.path)
    log_path = work / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker", "-c",
                                 str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            closed = sum(w["status"] == "closed" for w in list_windows(storage))
            if closed >= closed_at_least:
                return closed
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise DlabelError(f"the demo's worker closed only {closed} windows "
                                  f"(exit code {proc.poll()}); its log ends:\n{tail}")
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_demo(scenario: str, n_requests: int, seed: int, workdir: str,
             echo: Callable[[str], None] = print, retrain: bool = True) -> dict:
    """Start a broker, simulate a day of traffic, run the pipeline until drained, then
    retrain on every closed window and write the report."""
    from jobs.loop import retrain_until_idle
    from streams.pipeline import run_pipeline
    from streams.common.storage import open_storage
    from streams.dataset.manifest import list_windows

    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=str(work / "broker.log")) as broker:
        broker.start()
        echo(f"embedded broker on {broker.url}")
        cfg_path = write_demo_config(scenario, broker.url, work)
        cfg = load_config(cfg_path, broker=broker.url)

        t0 = time.monotonic()
        drift = None
        if scenario == "ctr":
            drift = ConceptDrift(at_ms=DEFAULT_START_MS + DAY_MS // 2)
        late = LATE_CLICK_FRACTION if scenario == "ctr" else 0.0
        events = generate(cfg, scenario, n_requests, seed, rate_per_s=n_requests / (DAY_MS / 1000),
                          drift=drift, late_click_fraction=late)
        late_events = [e for e in events if e.kind == "late_feedback"]
        if late_events:
            events = [e for e in events if e.kind != "late_feedback"]
        produce(broker.bootstrap, cfg, events)
        echo(f"simulated {n_requests} requests over 24 h of event time: "
             f"{len(events) + len(late_events)} events in {time.monotonic() - t0:.1f}s"
             + (f"; from hour 12 on, {DRIFT_SLICE[1]} is never clicked" if drift else ""))

        t1 = time.monotonic()
        if late_events:
            closed = label_live(cfg, cfg_path, work, len(day_windows(cfg, events)) - 2)
            produce(broker.bootstrap, cfg, late_events)
            echo(f"a running worker labeled the day until {closed} windows were closed; then "
                 f"{len(late_events)} clicks arrived that a mobile client had buffered (after "
                 f"their labels were final; join.correction_window {CORRECTION_WINDOW})")
        summary = run_pipeline(cfg, drain=True, session_timeout_s=2.0)
        if late_events:
            echo(f"join + dataset sink drained in {time.monotonic() - t1:.1f}s (the running "
                 f"worker, then a drain that read the {summary['feedback']} late clicks)")
            dead = dead_letter_counts(broker.bootstrap, cfg)
        else:
            echo(f"join + dataset sink drained in {time.monotonic() - t1:.1f}s: "
                 f"{summary['requests']} requests, {summary['feedback']} feedback read, "
                 f"{summary['sink']['rows']} labeled rows in Parquet")
            dead = summary["dead_letters"]
        echo("dead-lettered: " + (", ".join(f"{k} {v}" for k, v in sorted(dead.items()))
                                  or "none"))
        windows = list_windows(open_storage(cfg.dataset.path))
        closed = [w for w in windows if w["status"] == "closed"]
        echo(f"dataset: {len(closed)} closed window(s), "
             f"{sum(w['rows'] or 0 for w in closed)} labeled rows under {cfg.dataset.path} "
             f"(`dlabel datasets -c {cfg_path}` lists them)")
        echo(corrections_line(closed))
        summary["windows"] = windows

        if retrain:
            t2 = time.monotonic()
            sliced = DRIFT_SLICE if scenario == "ctr" else (None, None)
            loop = retrain_until_idle(cfg, sliced[0], sliced[1], echo=echo)
            echo(f"retraining took {time.monotonic() - t2:.1f}s")
            summary["retraining"] = {"rows": loop["rows"], "report": str(loop["report"])}
        echo(f"config: {cfg_path}; the broker stops with the demo (`dlabel broker` keeps one "
             "running for `dlabel tail`)")
        return summary
