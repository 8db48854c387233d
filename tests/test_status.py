"""`dlabel status` against a pipeline that ran on the real embedded broker."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.dev.simulate import generate, produce
from tests.pipeline_runs import load, run_drain, worker_env, write_pipeline

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


def status(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", "status", "-c", str(path), *args],
                          capture_output=True, text=True, env=worker_env(), cwd=ROOT, timeout=120)


def test_status_shows_lag_watermark_windows_and_models(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=2,
                          dataset={"window": "1m"})
    cfg = load(path)
    produce(broker.bootstrap, cfg, generate(cfg, "ctr", 400, seed=5))

    before = json.loads(status(path, "--json").stdout)
    join_lag = [r for r in before["lag"] if r["topic"] == cfg.topics.requests]
    assert join_lag and all(r["committed"] is None and r["lag"] > 0 for r in join_lag)
    assert before["closed_time"]["closed"] is None and before["windows"]["closed"] == 0

    run_drain(path, tmp_path / "worker.log")

    after = json.loads(status(path, "--json").stdout)
    lag = {(r["group"], r["topic"], r["partition"]): r["lag"] for r in after["lag"]}
    assert len(lag) == 2 * 3 and all(v == 0 for v in lag.values()), lag
    assert after["closed_time"]["closed"] == "drained" and not after["closed_time"]["unreported_inputs"]
    assert after["windows"]["closed"] >= 1 and after["windows"]["open"] == 0
    assert after["windows"]["rows_closed"] == 400
    assert after["models"]["champion"] is None and after["models"]["last_job"] is None

    text = status(path)
    assert text.returncode == 0, text.stderr
    assert "join closed time: drained" in text.stdout
    assert f"{cfg.topics.labeled}" in text.stdout and "champion: -" in text.stdout
