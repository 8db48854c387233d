"""The dataset sink on the real embedded broker: Parquet windows equal the oracle."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pytest

from schemas.dataset_schema import arrow_schema, parse_window_dir
from streams.dev.simulate import generate, produce
from streams.common.storage import LocalStorage
from streams.dataset.manifest import list_windows, read_manifest
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import PII_KEY, load, run_drain, write_pipeline
from tests.waiting import read_to_end, wait_until

pytestmark = pytest.mark.broker


def dataset_rows(path: Path) -> pd.DataFrame:
    """The dataset as pandas reads it (the README's two lines)."""
    return pd.read_parquet(path, partitioning=None)


def windows_events(bootstrap: str, topic: str) -> list[dict]:
    """Every event of the windows topic, duplicates included."""
    return [json.loads(r.value) for r in read_to_end(bootstrap, topic)]


def started(caplog) -> int:
    """How many sinks logged that they started (took the lock, recovered, sent unsent events)."""
    return sum(r.getMessage().startswith("sink started at") for r in caplog.records)


@pytest.mark.parametrize("scenario,partitions", [("ctr", 4), ("airport", 2)])
def test_dataset_equals_oracle_and_windows_close(any_broker, tmp_path, unique_name, scenario,
                                                 partitions):
    broker = any_broker
    path = write_pipeline(tmp_path, scenario, broker.url, unique_name, partitions=partitions,
                          dataset={"window": "1m", "flush_rows": 200})
    cfg = load(path)
    events = generate(cfg, scenario, 1500, seed=11)
    produce(broker.bootstrap, cfg, events)

    summary = run_drain(path, tmp_path / "worker.log")
    assert summary["sink"]["rows"] > 0, summary

    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
    data = Path(cfg.dataset.path)

    df = dataset_rows(data)
    assert df.request_id.is_unique
    assert_examples_match(expected, read_dataset_examples(data))

    # pyarrow.dataset and DuckDB read the same rows
    table = ds.dataset(data, format="parquet", partitioning=None).to_table()
    assert sorted(table.column("request_id").to_pylist()) == sorted(df.request_id)
    duck = duckdb.sql(f"select request_id, label from read_parquet('{data}/*/*.parquet', "
                      "hive_partitioning=false)").df()
    assert sorted(duck.request_id) == sorted(df.request_id)
    assert table.schema.equals(arrow_schema(cfg), check_metadata=False)

    # every window closed, one manifest each, and one windows event per window
    storage = LocalStorage(str(data))
    windows = list_windows(storage)
    assert len(windows) > 1 and all(w["status"] == "closed" for w in windows)
    assert sum(w["rows"] for w in windows) == len(df)
    for w in windows:
        manifest = read_manifest(storage, w["dir"])
        start = parse_window_dir(w["dir"])
        rows = df[df.window_start == pd.Timestamp(start, unit="ms", tz="UTC")]
        assert manifest["rows"] == len(rows)
        lo = pd.Timestamp(start, unit="ms", tz="UTC")
        assert ((rows.request_ts >= lo) & (rows.request_ts < lo + pd.Timedelta(minutes=1))).all()
        assert sum(f["rows"] for f in manifest["files"]) == len(rows)
        if cfg.label.kind == "binary":
            assert manifest["positives"] == int(rows.label.sum())
    events_out = windows_events(broker.bootstrap, cfg.topics.windows)
    assert sorted(e["window_start"] for e in events_out) == sorted(w["window_start"] for w in windows)
    for e in events_out:
        assert Path(e["manifest"]).is_file() and e["pipeline"] == cfg.pipeline
    # readers never see temp files
    assert not [p for p in data.rglob("*") if p.name.startswith(".")]


def test_windows_event_lost_in_a_crash_is_sent_on_restart_once(broker, make_config, tmp_path,
                                                                caplog):
    """A crash after a manifest and before its windows event: the restarted sink sends it."""
    import dataclasses
    import logging
    import threading
    from streams.dataset.writer import DatasetWriter
    from streams.pipeline import prepare
    from streams.dataset.sink import DatasetSink, SinkOptions
    from tests.test_dataset_writer import T0, example

    cfg = make_config("ctr", broker=broker.url, partitions=1)
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(tmp_path / "d")))
    prepare(cfg, broker.bootstrap)
    writer = DatasetWriter(cfg, LocalStorage(cfg.dataset.path), lambda: 0)
    writer.recover([0])
    writer.add(0, 0, example("a", T0 + 1, 1))
    writer.commit_all()
    writer.close(writer.ready_windows(2 ** 62)[0], cfg.topics.labeled)  # ... and crash here

    def run_sink_until_started(n: int) -> None:
        """Run a sink until it logged its start (after sending unsent events), then stop it."""
        sink = DatasetSink(cfg, SinkOptions(bootstrap=broker.bootstrap))
        thread = threading.Thread(target=sink.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: started(caplog) == n or not thread.is_alive(),
                       what=f"sink {n} to start")
            assert started(caplog) == n, "the sink stopped before it started"
        finally:
            sink.stop()
            thread.join(60)
        assert not thread.is_alive()

    with caplog.at_level(logging.INFO, logger="dlabel.sink"):
        run_sink_until_started(1)
        assert len(windows_events(broker.bootstrap, cfg.topics.windows)) == 1
        run_sink_until_started(2)  # a restart with nothing unsent sends nothing
    events_out = windows_events(broker.bootstrap, cfg.topics.windows)
    assert len(events_out) == 1
    assert events_out[0]["rows"] == 1 and events_out[0]["positives"] == 1


def _produce_labeled(bootstrap: str, cfg, examples: list[bytes]) -> None:
    """Labeled records on partition 0 plus every input's 'drained' watermark report."""
    from kafka import KafkaProducer
    from schemas.closed_time_report import DRAINED, encode_report, input_names
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    last = None
    for value in examples:
        last = producer.send(cfg.topics.labeled, value=value, partition=0).get(timeout=30)
    for name in input_names(cfg):
        producer.send(cfg.topics.closed_time, key=name.encode(), partition=0,
                      value=encode_report(name, DRAINED, {0: last.offset + 1})).get(timeout=30)
    producer.close()


def test_unwritable_dataset_path_stalls_the_sink_then_it_resumes(broker, make_config, tmp_path,
                                                                  caplog):
    """A regular file where a window directory must go: commits fail with a real OS error."""
    import dataclasses
    import logging
    import threading
    from kafka import KafkaAdminClient
    from schemas.dataset_schema import window_dir
    from streams.common import metrics
    from streams.pipeline import prepare
    from streams.dataset.sink import DatasetSink, SinkOptions, sink_group
    from tests.test_dataset_writer import T0, example

    cfg = make_config("ctr", broker=broker.url, partitions=1)
    data = tmp_path / "d"
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(data)))
    prepare(cfg, broker.bootstrap)
    _produce_labeled(broker.bootstrap, cfg, [example(f"r{i}", T0 + i * 1000, i % 2) for i in range(50)])
    blocker = data / window_dir(T0 - T0 % cfg.dataset.window_ms)
    data.mkdir()
    blocker.write_text("in the way")

    sink = DatasetSink(cfg, SinkOptions(bootstrap=broker.bootstrap, drain=True, retry_s=0.3))
    failed_commits: list[OSError] = []
    commit_all = sink.writer.commit_all

    def counted_commit_all():
        try:
            return commit_all()
        except OSError as e:
            failed_commits.append(e)
            raise
    sink.writer.commit_all = counted_commit_all
    result = {}
    thread = threading.Thread(target=lambda: result.update(sink.run()), daemon=True)
    with caplog.at_level(logging.INFO, logger="dlabel.sink"):
        thread.start()
        try:
            wait_until(lambda: sink.stalled is not None or not thread.is_alive(),
                       what="the sink to notice the unwritable path")
            assert sink.stalled is not None, "the sink did not notice the unwritable path"
            stalled_at = len(failed_commits)
            wait_until(lambda: len(failed_commits) >= stalled_at + 3 or not thread.is_alive(),
                       what="three more failed commits while stalled")
            assert sink.stalled is not None and metrics.SINK_STALLED._value.get() == 1
            admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
            try:
                offsets = admin.list_group_offsets(sink_group(cfg))
                assert not any(offsets.values()), \
                    f"offsets committed while the data was not: {offsets}"
            finally:
                admin.close()
            assert thread.is_alive()
            blocker.unlink()  # the operator fixes the path
            thread.join(120)  # drain mode: it ends by itself once everything is written
            assert not thread.is_alive(), "the sink did not resume and drain"
        finally:
            sink.stop()  # after a failure above: do not leave the sink running
            thread.join(60)
    assert result["rows"] == 50 and result["windows_closed"] == 1
    errors = [r for r in caplog.records if "cannot write to" in r.getMessage()]
    assert len(errors) == 1 and "not committing offsets" in errors[0].getMessage()
    assert any("resuming" in r.getMessage() for r in caplog.records)
    assert metrics.SINK_STALLED._value.get() == 0
    assert len(pd.read_parquet(data, partitioning=None)) == 50


def test_a_second_sink_stands_by_and_takes_over(broker, make_config, tmp_path, caplog):
    """Two sinks on one dataset (e.g. two `dlabel worker` on one host): one writes, the
    other waits on the dataset's lock; when the first stops, the second takes over."""
    import dataclasses
    import logging
    import threading
    from streams.pipeline import prepare
    from streams.dataset.sink import DatasetSink, SinkOptions
    from tests.test_dataset_writer import T0, example

    cfg = make_config("ctr", broker=broker.url, partitions=1)
    data = tmp_path / "d"
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(data)))
    prepare(cfg, broker.bootstrap)
    first = DatasetSink(cfg, SinkOptions(bootstrap=broker.bootstrap, retry_s=0.2))
    second = DatasetSink(cfg, SinkOptions(bootstrap=broker.bootstrap, drain=True, retry_s=0.2))
    results = {}
    t1 = threading.Thread(target=lambda: results.update(first=first.run()), daemon=True)
    t2 = threading.Thread(target=lambda: results.update(second=second.run()), daemon=True)
    with caplog.at_level(logging.INFO, logger="dlabel.sink"):
        t1.start()
        try:
            wait_until(lambda: started(caplog) == 1 or not t1.is_alive(), what="the first sink")
            assert started(caplog) == 1 and t1.is_alive()
            t2.start()
            wait_until(lambda: any("standing by" in r.getMessage() for r in caplog.records)
                       or started(caplog) > 1 or not t2.is_alive(),
                       what="the second sink to stand by")
            assert t2.is_alive() and started(caplog) == 1  # waiting on the lock, not running
            _produce_labeled(broker.bootstrap, cfg,
                             [example(f"r{i}", T0 + i, 1) for i in range(30)])
            # the first sink writes the rows and closes their window (it sends its event)
            wait_until(lambda: first.sent or not t1.is_alive(), what="the first sink's window")
            assert len(first.sent) == 1
            first.stop()
            t1.join(60)
            t2.join(120)  # drain mode: it ends by itself once it took over and found all done
            assert not t1.is_alive() and not t2.is_alive()
        finally:
            first.stop()  # after a failure above: do not leave the sinks running
            second.stop()
            t1.join(60)
            if t2.ident is not None:  # started
                t2.join(60)
    assert any("took over" in r.getMessage() for r in caplog.records) and started(caplog) == 2
    df = pd.read_parquet(data, partitioning=None)
    assert len(df) == 30 and df.request_id.is_unique
    assert len(windows_events(broker.bootstrap, cfg.topics.windows)) == 1  # not sent again
