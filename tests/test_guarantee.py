"""The labeled topic's guarantee per broker: chosen at start, refused where impossible."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipeline_runs import worker_cmd, worker_env, write_pipeline

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


def _run(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(worker_cmd(path, *args), capture_output=True, text=True, cwd=ROOT,
                          env=worker_env(), timeout=180)


def test_exactly_once_on_tansu_is_refused_with_the_fix(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=1)
    result = _run(path, "--only", "join", "--drain", "--guarantee", "exactly_once")
    assert result.returncode != 0
    err = result.stderr
    assert "exactly_once needs a broker with transactions" in err
    assert "--engine kafka" in err and "at_least_once" in err


def test_tansu_runs_at_least_once_and_says_so(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=1)
    result = _run(path, "--only", "join", "--drain")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("at-least-once output: the broker (Tansu) has no transactions") == 1


def test_unknown_guarantee_is_refused_by_the_cli(tmp_path):
    path = write_pipeline(tmp_path, "ctr", "kafka://127.0.0.1:1", "x", partitions=1)
    result = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "-c", str(path),
                             "--guarantee", "twice"], capture_output=True, text=True, cwd=ROOT,
                            env=worker_env(), timeout=60)
    assert result.returncode == 2 and "twice" in result.stderr
