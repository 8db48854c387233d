"""`dlabel demo`: the whole labeled stream on an embedded broker, in one command."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import yaml

from schemas.config import load_config
from streams.broker import EmbeddedBroker
from streams.simulate import generate, produce
from streams.tail import read_topic

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_demo(scenario: str, n_requests: int, seed: int, workdir: str,
             echo: Callable[[str], None] = print) -> dict:
    """Start a broker, simulate ``n_requests``, run the worker until drained, summarize."""
    from streams.runtime import run_pipeline
    from streams.storage import open_storage
    from streams.window_manifest import list_windows
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(log_path=str(work / "broker.log")) as broker:
        broker.start()
        echo(f"embedded broker on {broker.url}")
        data = yaml.safe_load((EXAMPLES / f"{scenario}.yaml").read_text())
        data["broker"] = broker.url
        data["dataset"]["path"] = str(work / "data" / data["pipeline"])
        data["model"]["path"] = str(work / "models" / data["pipeline"])
        data["state_dir"] = str(work / "state")
        cfg_path = work / f"{scenario}.yaml"
        cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
        cfg = load_config(cfg_path, broker=broker.url)
        t0 = time.monotonic()
        events = generate(cfg, scenario, n_requests, seed)
        produce(broker.bootstrap, cfg, events)
        echo(f"simulated {n_requests} requests: {len(events)} events in "
             f"{time.monotonic() - t0:.1f}s")
        t1 = time.monotonic()
        summary = run_pipeline(cfg, drain=True, session_timeout_s=2.0)
        elapsed = time.monotonic() - t1
        labels = Counter()
        ids = set()
        for rec in read_topic(broker.bootstrap, cfg.topics.labeled, idle_timeout_s=1.0):
            ex = json.loads(rec.value)
            if ex["request_id"] not in ids:
                ids.add(ex["request_id"])
                labels["positive" if ex["label"] == 1 else "other"] += 1
        summary["labeled_unique"] = len(ids)
        echo(f"worker drained in {elapsed:.1f}s")
        echo(f"requests read:   {summary['requests']}")
        echo(f"feedback read:   {summary['feedback']}")
        echo(f"labeled:         {len(ids)}")
        if cfg.label.kind == "binary":
            echo(f"  positives:     {labels['positive']} "
                 f"({labels['positive'] / max(1, len(ids)):.1%})")
        echo("dead-lettered:   " + (", ".join(f"{k} {v}" for k, v in summary["dead_letters"].items())
                                   or "none"))
        windows = list_windows(open_storage(cfg.dataset.path))
        echo(f"dataset windows under {cfg.dataset.path}:")
        for w in windows:
            rate = "" if w["label_rate"] is None else f", label rate {w['label_rate']:.3f}"
            echo(f"  {w['window_start']}  {w['status']}  {w['rows']} rows{rate}, "
                 f"{w['files']} file(s)")
        summary["windows"] = windows
        echo(f"config written to {cfg_path}; `dlabel tail -c {cfg_path}` reads the labeled topic "
             "while the broker runs")
        return summary
