"""``dataset.iceberg`` end to end: the worker's sink commits each closed window to an
Iceberg table (SQL catalog on SQLite), one snapshot per window; a repeated close after a
crash between the window's manifest and its event adds nothing; the table scans equal to
the oracle."""
from __future__ import annotations

import json

import pytest

from streams.dev.simulate import generate, produce
from streams.kafka.topics import ensure_topics
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import PII_KEY, load, run_drain, write_pipeline

pyiceberg = pytest.importorskip("pyiceberg")
pytestmark = pytest.mark.broker


def _rows(table) -> list[dict]:
    """The table's rows in the labeled topic's JSON form (times as epoch ms)."""
    arrow = table.scan().to_arrow()
    out = []
    for row in arrow.to_pylist():
        for k, v in row.items():
            if hasattr(v, "timestamp"):
                row[k] = int(v.timestamp() * 1000)
        out.append(row)
    return out


@pytest.mark.timeout(600)
def test_closed_windows_become_one_snapshot_each(broker, tmp_path, unique_name):
    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog/catalog.db",
               "warehouse": f"file://{tmp_path}/warehouse"}
    table_name = f"labels.{unique_name.replace('-', '_')}"
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=2,
                          dataset={"iceberg": {"table": table_name, "catalog": catalog}})
    cfg = load(path)
    events = generate(cfg, "ctr", 1500, seed=21, rate_per_s=0.2)  # ~2 h: 3 hourly windows
    ensure_topics(broker.bootstrap, cfg)
    produce(broker.bootstrap, cfg, events)
    summary = run_drain(path, tmp_path / "drain.log")
    assert summary["sink"]["windows_closed"] >= 2

    from pyiceberg.catalog import load_catalog
    table = load_catalog("dlabel", **catalog).load_table(table_name)
    expected = expected_examples(path, [e.value for e in events if e.role == "requests"],
                                 [e.value for e in events if e.role == "feedback"],
                                 PII_KEY.encode())
    assert_examples_match(expected, _rows(table))
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
    snapshots = [s.summary for s in table.snapshots()]
    windows = [s["dlabel.window_start"] for s in snapshots]
    assert len(windows) == len(set(windows)) == summary["sink"]["windows_closed"]
    assert all(json.loads(s["dlabel.source_offsets"]) for s in snapshots if int(s["dlabel.rows"]))

    # a crash between the manifests and their windows events: the restart closes them
    # again (Iceberg commit, then the event); the table adds no snapshot
    (tmp_path / "data" / "_sink" / "windows-sent.json").unlink()
    log = tmp_path / "again.log"
    run_drain(path, log)
    assert "sending the windows event" in log.read_text()
    table = load_catalog("dlabel", **catalog).load_table(table_name)
    assert [s.summary["dlabel.window_start"] for s in table.snapshots()] == windows
    assert_examples_match(expected, _rows(table))
