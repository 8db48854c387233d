"""Datasets on S3 through pyarrow's filesystem layer, against moto's S3 server (real HTTP)."""
from __future__ import annotations

import dataclasses
import json

import pyarrow.dataset as ds
import pytest

from streams.kafka.broker import free_port
from streams.common.storage import ObjectStorage, open_storage
from streams.dataset.manifest import list_windows, read_window
from tests.test_dataset_writer import MIN, Crash, labeled_topic, run, write_closed

moto_server = pytest.importorskip("moto.server")


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port("127.0.0.1")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch, unique_name):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    import boto3
    name = unique_name.lower().replace("_", "-")[:50]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def _config(make_config, path):
    cfg = make_config("ctr", partitions=2)
    return dataclasses.replace(cfg, dataset=dataclasses.replace(
        cfg.dataset, path=path, window_ms=10 * MIN, flush_rows=7))


class CrashingObjectStorage(ObjectStorage):
    def __init__(self, uri, crash_at):
        super().__init__(uri)
        self.crash_at, self.writes = crash_at, 0

    def write_atomic(self, rel, data):
        self.writes += 1
        super().write_atomic(rel, data)
        if self.writes == self.crash_at:
            raise Crash(rel)


def test_windows_on_s3_read_back_and_survive_a_crash(make_config, bucket):
    uri = f"s3://{bucket}/datasets/ctr"
    cfg = _config(make_config, uri)
    storage = open_storage(uri)
    assert isinstance(storage, ObjectStorage)
    parts = labeled_topic()
    with pytest.raises(Crash):
        run(cfg, CrashingObjectStorage(uri, crash_at=9), parts, seed=1)
    run(cfg, storage, parts, seed=2)

    windows = list_windows(storage)
    assert [w["status"] for w in windows] == ["closed"] * 3
    assert sum(w["rows"] for w in windows) == 60
    fs, root = storage.filesystem()
    table = ds.dataset(root, filesystem=fs, format="parquet", partitioning=None).to_table()
    ids = table.column("request_id").to_pylist()
    assert len(ids) == 60 and len(set(ids)) == 60
    assert sum(read_window(storage, w["dir"]).num_rows for w in windows) == 60
    # manifests reference objects by relative name and are written last
    manifest = json.loads(storage.read(f"{windows[0]['dir']}/_manifest.json"))
    assert all(storage.read(f"{windows[0]['dir']}/{f['path']}") for f in manifest["files"])


def test_s3_paths_cannot_escape_the_prefix(make_config, bucket):
    from schemas.errors import CommitError
    storage = open_storage(f"s3://{bucket}/x")
    with pytest.raises(CommitError):
        storage.write_atomic("../escape.json", b"{}")


def test_the_whole_path_on_s3_sink_compaction_manifests_and_jobs(make_config, bucket, tmp_path):
    """The sink's writer commits staged files to S3, compacts each closed window there,
    writes its manifest; the retraining jobs read the windows from S3 and train."""
    from jobs.job import run_job
    from jobs.registry import Registry
    from streams.dev.synthetic_windows import ctr_window

    uri = f"s3://{bucket}/datasets/ctr-jobs"
    base = make_config("ctr", partitions=2)
    cfg = dataclasses.replace(
        base, dataset=dataclasses.replace(base.dataset, path=uri, window_ms=60 * MIN,
                                          flush_rows=500),
        model=dataclasses.replace(base.model, path=str(tmp_path / "models")))
    storage = open_storage(uri)
    start = 1_795_000_000_000 - 1_795_000_000_000 % (60 * MIN)
    rows = [{k: (int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v)
             for k, v in row.items()}
            for w in range(2)
            for row in ctr_window(start + w * 60 * MIN, 60 * MIN, 1200, seed=3).to_dict("records")]
    write_closed(cfg, storage, rows)
    windows = list_windows(storage)
    assert [w["status"] for w in windows] == ["closed", "closed"]
    assert [w["files"] for w in windows] == [1, 1]  # compacted on S3
    assert not [n for w in windows for n in storage.list_dir(w["dir"]) if n.startswith(".")]

    records = [run_job(cfg, w["window_start"]) for w in windows]
    assert [r["status"] for r in records] == ["trained", "trained"]
    assert [r["rows"] for r in records] == [1200, 1200]
    lineage = Registry(cfg.model.path).lineage(2)
    assert lineage["manifests"][-1].startswith(f"s3://{bucket}/datasets/ctr-jobs/window-")
