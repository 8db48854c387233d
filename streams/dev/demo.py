"""`dlabel demo`: the whole loop on an embedded broker, in one command.

Simulated traffic -> join worker -> labeled topic -> Parquet windows -> windows topic ->
retraining jobs -> model registry -> report. For the ctr scenario: about a day of
traffic in hourly windows, with a concept drift halfway (men's dress shoes stop being
clicked), so that the per-window table shows production degrading on that slice and
the retrained model catching up.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import yaml

from schemas.config import load_config
from streams.kafka.broker import EmbeddedBroker
from streams.dev.simulate import DEFAULT_START_MS, ConceptDrift, generate, produce

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DAY_MS = 24 * 3_600_000
DRIFT_SLICE = ("category", "mens_dress_shoes")


def write_demo_config(scenario: str, broker_url: str, work: Path) -> Path:
    """The example pipeline with its paths under ``work`` and the demo's broker."""
    data = yaml.safe_load((EXAMPLES / f"{scenario}.yaml").read_text())
    data["broker"] = broker_url
    data["dataset"]["path"] = str(work / "data" / data["pipeline"])
    data["model"]["path"] = str(work / "models" / data["pipeline"])
    data["state_dir"] = str(work / "state")
    path = work / f"{scenario}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


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
        events = generate(cfg, scenario, n_requests, seed, rate_per_s=n_requests / (DAY_MS / 1000),
                          drift=drift)
        produce(broker.bootstrap, cfg, events)
        echo(f"simulated {n_requests} requests over 24 h of event time: {len(events)} events "
             f"in {time.monotonic() - t0:.1f}s" + (f"; from hour 12 on, {DRIFT_SLICE[1]} is "
                                                   "never clicked" if drift else ""))

        t1 = time.monotonic()
        summary = run_pipeline(cfg, drain=True, session_timeout_s=2.0)
        echo(f"join + dataset sink drained in {time.monotonic() - t1:.1f}s: "
             f"{summary['requests']} requests, {summary['feedback']} feedback read, "
             f"{summary['sink']['rows']} labeled rows in Parquet")
        echo("dead-lettered: " + (", ".join(f"{k} {v}" for k, v in summary["dead_letters"].items())
                                  or "none"))
        windows = list_windows(open_storage(cfg.dataset.path))
        closed = [w for w in windows if w["status"] == "closed"]
        echo(f"dataset: {len(closed)} closed window(s) under {cfg.dataset.path} "
             f"(`dlabel datasets -c {cfg_path}` lists them)")
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
