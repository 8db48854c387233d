"""Crash anywhere: SIGKILL the join worker, the dataset sink and the jobs runner at random
moments of a long simulated stream, restart each, and check at the end that

- the Parquet dataset equals the oracle row for row (0 lost, 0 duplicated),
- every closed window has exactly one manifest and one windows event key,
- every window was trained exactly once (one registry version per window).

Each process runs in its own session and is killed with its whole process group, as a
container runtime would (the jobs runner's job subprocess dies with it).

The full run (>= 20 kills) is `python -m pytest -m faults`; the default suite runs a
small variant (one kill of each process).
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs.registry import Registry
from schemas.pii import PiiHasher
from streams.dev.simulate import generate, produce
from streams.common.storage import LocalStorage
from streams.dev.tail import read_topic
from streams.dataset.manifest import list_windows, read_manifest
from tests.oracle import assert_matches_oracle, oracle_labels
from tests.pipeline_runs import (PII_KEY, dataset_examples, dead_letters, kill_group, load,
                                 run_drain, worker_cmd, worker_env, write_pipeline)

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=worker_env(),
                            cwd=ROOT, start_new_session=True)


def _jobs_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", "-v", "jobs", "-c", str(path), *args]


def _labeled_count(bootstrap: str, topic: str) -> int:
    return sum(1 for _ in read_topic(bootstrap, topic, idle_timeout_s=0.5))


def run_fault_scenario(broker, tmp_path: Path, name: str, kills: int, requests: int,
                       seed: int) -> dict:
    path = write_pipeline(tmp_path, "ctr", broker.url, name, partitions=3,
                          dataset={"flush_rows": 300, "flush_interval": "2s"})
    cfg = load(path)
    # ~14 h of event time in hourly windows; produced in chunks while processes die
    events = generate(cfg, "ctr", requests, seed=seed, rate_per_s=requests / (14 * 3600))
    # consecutive in arrival order: later chunks carry later event times (nothing late)
    size = -(-len(events) // 6)
    chunks = [events[i:i + size] for i in range(0, len(events), size)]
    logs = {role: tmp_path / f"{role}.log" for role in ("join", "sink", "jobs")}
    cmds = {"join": worker_cmd(path, "--only", "join"),
            "sink": worker_cmd(path, "--only", "sink"),
            "jobs": _jobs_cmd(path)}
    procs = {role: _start(cmd, logs[role]) for role, cmd in cmds.items()}
    rnd = random.Random(seed)
    killed: Counter = Counter()
    recoveries = []
    try:
        produce(broker.bootstrap, cfg, chunks[0])
        next_chunk = 1
        for k in range(kills):
            time.sleep(rnd.uniform(1.0, 4.0))
            if next_chunk < len(chunks) and k % max(1, kills // (len(chunks) - 1)) == 0:
                produce(broker.bootstrap, cfg, chunks[next_chunk])
                next_chunk += 1
            # one kill of each in the small run; random victims in the long one
            victim = ("join", "sink", "jobs")[k % 3] if kills <= 3 else rnd.choice(
                ("join", "sink", "jobs"))
            for role, proc in procs.items():
                assert proc.poll() is None, f"{role} died on its own:\n" \
                    f"{logs[role].read_text(errors='replace')[-3000:]}"
            before = _labeled_count(broker.bootstrap, cfg.topics.labeled) if victim == "join" else 0
            kill_group(procs[victim], signal.SIGKILL)
            killed[victim] += 1
            t0 = time.monotonic()
            procs[victim] = _start(cmds[victim], logs[victim])
            if victim == "join" and next_chunk < len(chunks):
                produce(broker.bootstrap, cfg, chunks[next_chunk])
                next_chunk += 1
                deadline = t0 + 90
                while (_labeled_count(broker.bootstrap, cfg.topics.labeled) <= before
                       and time.monotonic() < deadline):
                    time.sleep(0.2)
                recoveries.append(time.monotonic() - t0)
        for chunk in chunks[next_chunk:]:
            produce(broker.bootstrap, cfg, chunk)
        time.sleep(2)
    finally:
        for proc in procs.values():
            kill_group(proc, signal.SIGKILL)

    # finish: drain join + sink, then run the pending jobs
    summary = run_drain(path, tmp_path / "drain.log", timeout=300)
    done = subprocess.run(_jobs_cmd(path, "--until-idle"), env=worker_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # nothing was late (chunks follow arrival order), so the oracle holds for everything
    late = [d for d in dead_letters(broker.bootstrap, cfg.topics.dead_letter) if d["reason"] == "late"]
    assert not late, late[:3]
    # the dataset equals the oracle, each request once
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    expected = oracle_labels(cfg, reqs, fbs, PiiHasher(PII_KEY.encode()))
    assert_matches_oracle(expected, dataset_examples(cfg.dataset.path))

    # one manifest per closed window, every closed window announced
    storage = LocalStorage(cfg.dataset.path)
    windows = list_windows(storage)
    assert windows and all(w["status"] == "closed" for w in windows)
    for w in windows:
        assert read_manifest(storage, w["dir"])["rows"] == w["rows"]
    announced = {json.loads(r.value)["window_start"]
                 for r in read_topic(broker.bootstrap, cfg.topics.windows, idle_timeout_s=1.0)}
    assert announced == {w["window_start"] for w in windows}

    # every window trained exactly once
    reg = Registry(cfg.model.path)
    records = reg.window_records()
    assert set(records) == announced, (sorted(records), sorted(announced))
    assert all(r["status"] == "trained" for r in records.values()), records
    trained_by = Counter(reg.lineage(v).get("window") for v in reg.versions())
    assert trained_by == Counter({w: 1 for w in announced}), trained_by
    return {"kills": dict(killed), "events": len(events), "rows": len(expected),
            "windows": len(windows), "recovery_s_max": max(recoveries, default=None),
            "sink": summary["sink"]}


def test_kill_each_process_once_loses_and_duplicates_nothing(broker, tmp_path, unique_name):
    result = run_fault_scenario(broker, tmp_path, unique_name, kills=3, requests=3000, seed=3)
    assert result["kills"] == {"join": 1, "sink": 1, "jobs": 1}
    print("fault run:", result)


@pytest.mark.faults
def test_twenty_four_random_kills(broker, tmp_path, unique_name):
    result = run_fault_scenario(broker, tmp_path, unique_name, kills=24, requests=12000, seed=8)
    assert sum(result["kills"].values()) >= 20
    print("fault run:", json.dumps(result))
