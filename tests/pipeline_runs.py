"""Helpers for tests that run real `dlabel worker` processes against the embedded broker."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from schemas.config import load_config
from schemas.records import decode_dead_letter
from tests.waiting import read_to_end

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PII_KEY = "test-pii-key"


def write_pipeline(tmp_path: Path, scenario: str, broker_url: str, name: str,
                   partitions: int = 4, store: str = "memory", dataset: dict | None = None,
                   **join) -> Path:
    """Write a pipeline YAML for ``scenario`` with unique topics under ``tmp_path``."""
    data = yaml.safe_load((EXAMPLES / f"{scenario}.yaml").read_text())
    data["pipeline"] = name
    data["broker"] = broker_url
    data["topics"] = {role: f"{name}.{role.replace('_', '-')}" for role in
                      ("requests", "feedback", "labeled", "dead_letter", "windows")}
    data["topics"]["partitions"] = partitions
    # No input goes idle during a test: the watermark then only moves with event time,
    # and nothing the simulator makes is late (its disorder is under the allowed lateness).
    data["join"].update({"idle_timeout": "1h", **join})
    data["dataset"]["path"] = str(tmp_path / "data")
    data["dataset"].update(dataset or {})
    data["model"]["path"] = str(tmp_path / "models")
    data["state_dir"] = str(tmp_path / "state")
    data["store"] = store
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(path: Path):
    return load_config(path, environ={"DLABEL_PII_KEY": PII_KEY})


def worker_cmd(config_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", "-v", "worker", "-c", str(config_path), *args]


def worker_env() -> dict:
    return {**os.environ, "DLABEL_PII_KEY": PII_KEY, "PYTHONUNBUFFERED": "1"}


def start_worker(config_path: Path, log_path: Path, *args: str) -> subprocess.Popen:
    """Start `dlabel worker` as a child process, its output going to ``log_path``."""
    log = open(log_path, "ab")
    # its own session: a crash test kills the whole group (join worker and dataset sink)
    return subprocess.Popen(worker_cmd(config_path, *args), stdout=log, stderr=subprocess.STDOUT,
                            env=worker_env(), cwd=str(Path(__file__).resolve().parent.parent),
                            start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = 9, timeout: float = 60) -> None:
    """SIGKILL (or ``sig``) a worker started by ``start_worker`` and all its children;
    a group still there ``timeout`` seconds after another signal gets SIGKILL."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(30)


def run_drain(config_path: Path, log_path: Path, timeout: float = 180) -> dict:
    """Run `dlabel worker --drain` to completion; return its JSON summary."""
    proc = start_worker(config_path, log_path, "--drain")
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text(errors="replace")
    assert rc == 0, f"worker exited {rc}:\n{text[-3000:]}"
    last = text.strip().splitlines()[-1]
    return json.loads(last[last.index("{"):])  # mode may prefix a terminal escape


#: logged by the join worker once per assignment it reads, with the partitions it reads
ASSIGNED = "reading inputs from"


def assignments(log: Path) -> list[set[str]]:
    """The input partitions of each assignment a worker read, in order."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if ASSIGNED in line:
            out.append(set(ast.literal_eval(line[line.index(ASSIGNED) + len(ASSIGNED):].strip())))
    return out


def labeled_records(bootstrap: str, topic: str) -> tuple[dict[str, dict], dict[str, list[bytes]]]:
    """Labeled topic, read to its end: ``{request_id: example}`` (the first copy) plus
    every raw copy per id (the join is at least once: repeats must be identical)."""
    copies: dict[str, list[bytes]] = defaultdict(list)
    for rec in read_to_end(bootstrap, topic, timeout=180):
        copies[json.loads(rec.value)["request_id"]].append(rec.value)
    return {rid: json.loads(vals[0]) for rid, vals in copies.items()}, copies


def dead_letters(bootstrap: str, topic: str) -> list[dict]:
    """The dead-letter topic, read to its end."""
    return [decode_dead_letter(rec.value) for rec in read_to_end(bootstrap, topic, timeout=180)]
