"""`dlabel simulate --format ecs|fluentd` on the real broker, through the worker with the
matching example config: Logstash- and Fluentd-shaped, unkeyed events give the oracle's
labels and dataset (the CLI test in test_event_shapes.py stubs the broker out)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.dev.event_shapes import reshape
from streams.dev.simulate import generate
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import (PII_KEY, labeled_records, load, run_drain, worker_env,
                                 write_pipeline)

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fmt", ["ecs", "fluentd"])
def test_simulated_shapes_label_like_the_oracle(broker, tmp_path, unique_name, fmt):
    path = write_pipeline(tmp_path, f"ctr-{fmt}", broker.url, unique_name, partitions=2)
    cfg = load(path)
    out = subprocess.run([sys.executable, "-m", "streams.cli", "simulate", "-c", str(path),
                          "--format", fmt, "--requests", "600", "--seed", "3"],
                         capture_output=True, text=True, env=worker_env(), cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stderr  # the example config reads this shape
    run_drain(path, tmp_path / "drain.log")

    events = reshape(generate(cfg, "ctr", 600, 3), cfg, fmt)
    assert all(e.key is None for e in events)  # unkeyed, as the shippers send them
    expected = expected_examples(path, [e.value for e in events if e.role == "requests"],
                                 [e.value for e in events if e.role == "feedback"],
                                 PII_KEY.encode())
    assert len(expected) > 0.95 * 600  # the shape was read: nearly every request labeled
    labeled, _ = labeled_records(broker.bootstrap, cfg.topics.labeled)
    assert_examples_match(expected, labeled)
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
