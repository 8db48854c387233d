"""Closed windows committed to an Iceberg table (``streams.dataset.iceberg_table``).

A real closed dataset is written by production's ``DatasetWriter`` (three 10-minute
windows, two labeled partitions), then committed to a table in a SQL catalog on SQLite.
The table's rows are compared with the Parquet files' rows column by column, as pyiceberg,
Polars and DuckDB read them.
"""
from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyiceberg")
from pyiceberg.catalog.sql import SqlCatalog  # noqa: E402
from pyiceberg.table import Transaction  # noqa: E402

from schemas.config import FeatureSpec  # noqa: E402
from schemas.dataset_schema import arrow_schema  # noqa: E402
from schemas.errors import ConfigError  # noqa: E402
from streams.common.storage import LocalStorage  # noqa: E402
from streams.dataset.iceberg_table import (SOURCE_OFFSETS, IcebergWindows,  # noqa: E402
                                           window_file_uris)
from streams.dataset.writer import DatasetWriter  # noqa: E402

# Polars plans Iceberg scans with pyiceberg unless the polars_iceberg plugin is installed
pytestmark = pytest.mark.filterwarnings("ignore:Iceberg scan planning")

MIN = 60_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % (10 * MIN)
PER_WINDOW = 30
US = pa.timestamp("us", tz="UTC")
KEYS = {"dlabel.pipeline", "dlabel.window_start", "dlabel.window_end", "dlabel.rows",
        "dlabel.source_offsets"}


class Crash(BaseException):
    """The process dies here (no ``except Exception`` runs)."""


def example(i: int, device: bool = False) -> dict:
    ts = T0 + i * MIN // 3
    row = {"request_id": f"r{i:03d}", "request_ts": ts, "window_start": ts - ts % (10 * MIN),
           "label": int(i % 3 == 0), "label_ts": ts + 1000,
           "prediction": 0.25 if i % 2 else None, "model_version": "m1", "hour": 10 + i % 5,
           "category": ["shoes", "toys"][i % 2], "price": 9.5 + i,
           "user_email": None if i % 4 else f"h{i}"}
    if device:
        row["device"] = ["ios", None, "android"][i % 3]
    return row


def write_windows(cfg, rows: range, device: bool = False) -> list[dict]:
    """Feed ``rows`` through a DatasetWriter on ``cfg``'s dataset and close every
    window; the manifests in window order."""
    writer = DatasetWriter(cfg, LocalStorage(cfg.dataset.path), clock=lambda: 0)
    offsets = dict(writer.recover([0, 1]))
    for i in rows:
        p = i % 2
        writer.add(p, offsets.setdefault(p, 0), json.dumps(example(i, device)).encode())
        offsets[p] += 1
        if writer.due():
            writer.commit_all()
    writer.commit_all()
    return [writer.close(w, cfg.topics.labeled) for w in writer.ready_windows(2 ** 62)]


@pytest.fixture
def cfg(make_config, tmp_path):
    c = make_config("ctr", partitions=2)
    return dataclasses.replace(c, dataset=dataclasses.replace(
        c.dataset, path=str(tmp_path / "data"), window_ms=10 * MIN, flush_rows=7))


@pytest.fixture
def windows(cfg):
    """The three closed windows' manifests."""
    manifests = write_windows(cfg, range(3 * PER_WINDOW))
    assert [m["rows"] for m in manifests] == [PER_WINDOW] * 3
    return manifests


@pytest.fixture
def iceberg(cfg, tmp_path):
    """Factory: a fresh IcebergWindows (own catalog connection) on the test's table."""
    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db",
               "warehouse": f"file://{tmp_path}/warehouse"}

    def make(schema: pa.Schema | None = None, pipeline: str | None = None) -> IcebergWindows:
        return IcebergWindows("labels.ctr", catalog, schema or arrow_schema(cfg),
                              pipeline or cfg.pipeline)
    return make


def uris(cfg, manifest: dict) -> list[str]:
    return window_file_uris(LocalStorage(cfg.dataset.path), manifest)


def commit_all(ice: IcebergWindows, cfg, manifests: list[dict]) -> list[bool]:
    ice.ensure_table()
    return [ice.commit_window(m, uris(cfg, m)) for m in manifests]


def file_rows(cfg, manifests: list[dict], schema: pa.Schema) -> pa.Table:
    """The windows' rows read from their Parquet files, in ``schema`` (missing columns null)."""
    tables = []
    for m in manifests:
        for path in uris(cfg, m):
            t = pq.read_table(path)
            tables.append(pa.table({f.name: t.column(f.name) if f.name in t.schema.names
                                    else pa.nulls(len(t), f.type) for f in schema}))
    return pa.concat_tables(tables).sort_by("request_id")


def kind(t: pa.DataType) -> str:
    """A type as an Iceberg reader renders it: any-unit UTC timestamps and string or
    large_string are the same kind."""
    if pa.types.is_timestamp(t):
        return f"timestamp {'UTC' if t.tz in ('UTC', 'Etc/UTC', '+00:00') else t.tz}"
    return "string" if pa.types.is_large_string(t) or pa.types.is_string(t) else str(t)


def assert_same_rows(got: pa.Table, want: pa.Table) -> None:
    """Same columns in the same order, same kinds of type, same values on every row."""
    assert got.schema.names == want.schema.names
    assert got.num_rows == want.num_rows
    got = got.sort_by("request_id")
    for name in want.schema.names:
        a, b = got.column(name), want.column(name)
        assert kind(a.type) == kind(b.type), name
        if pa.types.is_timestamp(b.type):
            a, b = a.cast(US), b.cast(US)
        assert a.to_pylist() == b.to_pylist(), name


def dlabel_snapshots(ice: IcebergWindows) -> list[dict]:
    table = ice.ensure_table()
    table.refresh()
    return [s.summary.additional_properties for s in table.metadata.snapshots]


def test_three_windows_are_three_snapshots_and_the_scan_is_the_files_rows(cfg, windows, iceberg):
    ice = iceberg()
    assert ice.windows_committed() == set()          # no table yet: nothing committed
    assert commit_all(ice, cfg, windows) == [True, True, True]
    table = ice.ensure_table()
    schema = arrow_schema(cfg)
    assert_same_rows(table.scan().to_arrow(), file_rows(cfg, windows, schema))

    summaries = dlabel_snapshots(ice)
    assert len(summaries) == 3
    for summary, m in zip(summaries, windows):
        assert KEYS <= summary.keys()
        assert summary["dlabel.pipeline"] == cfg.pipeline
        assert (summary["dlabel.window_start"], summary["dlabel.window_end"]) == \
            (m["window_start"], m["window_end"])
        assert summary["dlabel.rows"] == str(PER_WINDOW) == summary["added-records"]
        assert json.loads(summary[SOURCE_OFFSETS]) == m["source_offsets"]
    assert ice.windows_committed() == {m["window_start"] for m in windows}

    # zero copy: the table references the dataset's files; one partition value per window
    files = table.inspect.files().to_pylist()
    assert sorted(f["file_path"] for f in files) == \
        sorted("file://" + u for m in windows for u in uris(cfg, m))
    assert sorted(t.file.partition[0] for t in table.scan().plan_files()) == \
        [m["window_start_ms"] * 1000 for m in windows]      # microseconds
    assert not os.path.exists(table.location().removeprefix("file://") + "/data")
    assert str(table.schema().find_field("window_start").field_type) == "timestamptz"
    assert [str(f.transform) for f in table.spec().fields] == ["identity"]
    assert table.properties["commit.retry.num-retries"] == "0"


def test_committing_a_window_again_adds_nothing(cfg, windows, iceberg):
    assert commit_all(iceberg(), cfg, windows) == [True] * 3
    # the same instance, then a fresh one (a restart replaying the windows events)
    for ice in (iceberg(), iceberg()):
        assert commit_all(ice, cfg, windows) == [False] * 3
    assert len(dlabel_snapshots(iceberg())) == 3
    assert iceberg().ensure_table().scan().to_arrow().num_rows == 3 * PER_WINDOW


def test_a_window_whose_history_was_expired_is_recognised_by_its_files(cfg, windows, iceberg,
                                                                       monkeypatch):
    assert commit_all(iceberg(), cfg, windows) == [True] * 3
    import streams.dataset.iceberg_table as mod
    monkeypatch.setattr(mod, "_windows", lambda table: set())  # as if snapshots expired
    assert commit_all(iceberg(), cfg, windows) == [False] * 3
    assert len(dlabel_snapshots(iceberg())) == 3


def test_an_added_feature_evolves_the_table_and_a_fourth_window_commits(cfg, windows, iceberg):
    assert commit_all(iceberg(), cfg, windows) == [True] * 3
    new_cfg = dataclasses.replace(cfg, features=cfg.features + (FeatureSpec("device", "str"),))
    fourth = write_windows(new_cfg, range(3 * PER_WINDOW, 4 * PER_WINDOW), device=True)
    assert len(fourth) == 1
    new_schema = arrow_schema(new_cfg)
    ice = iceberg(new_schema)
    table = ice.ensure_table()
    field = table.schema().find_field("device")
    assert not field.required and table.schema().column_names[-1] == "device"
    assert ice.commit_window(fourth[0], uris(new_cfg, fourth[0])) is True

    got, want = table.scan().to_arrow(), file_rows(cfg, windows + fourth, new_schema)
    assert_same_rows(got, want)
    device = dict(zip(got.column("request_id").to_pylist(), got.column("device").to_pylist()))
    assert all(device[f"r{i:03d}"] is None for i in range(3 * PER_WINDOW))
    assert [device[f"r{i:03d}"] for i in range(3 * PER_WINDOW, 3 * PER_WINDOW + 3)] == \
        ["ios", None, "android"]
    assert len(dlabel_snapshots(ice)) == 4
    pl = pytest.importorskip("polars")
    assert_same_rows(pl.scan_iceberg(table).collect().to_arrow(), want)
    location = table.metadata_location
    assert iceberg(new_schema).ensure_table().metadata_location == location  # no-op
    # the old schema again: the table keeps the column (removal is refused, not applied)
    with pytest.raises(ConfigError, match="removing a feature"):
        iceberg(arrow_schema(cfg)).ensure_table()
    retyped = new_schema.set(new_schema.get_field_index("device"), pa.field("device", pa.int64()))
    with pytest.raises(ConfigError, match="retyping"):
        iceberg(retyped).ensure_table()
    with pytest.raises(ConfigError, match="pipeline"):
        iceberg(new_schema, pipeline="other").ensure_table()
    assert table.schema().find_field("device").field_type == field.field_type


def test_polars_and_duckdb_read_the_same_rows(cfg, windows, iceberg):
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    ice = iceberg()
    commit_all(ice, cfg, windows)
    table = ice.ensure_table()
    want = file_rows(cfg, windows, arrow_schema(cfg))
    assert_same_rows(pl.scan_iceberg(table).collect().to_arrow(), want)

    # DuckDB's iceberg extension is a download: used if installed, else the table's files
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    try:
        con.sql("LOAD iceberg")
        rel = con.sql(f"select * from iceberg_scan('{table.metadata_location}')")
    except duckdb.Error:
        paths = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
        assert len(paths) == 3
        rel = con.sql(f"select * from read_parquet({paths!r}, union_by_name=true)")
    assert_same_rows(rel.to_arrow_table(), want)


def test_a_crash_inside_the_commit_then_a_fresh_instance_commits_the_window_once(
        cfg, windows, iceberg, monkeypatch):
    assert commit_all(iceberg(), cfg, windows[:2]) == [True, True]
    write_metadata = SqlCatalog._write_metadata

    def dies_before_the_catalog_points_at_it(*args, **kwargs):
        write_metadata(*args, **kwargs)     # manifests and the new metadata file exist ...
        raise Crash()                       # ... but the catalog never points at them

    monkeypatch.setattr(SqlCatalog, "_write_metadata",
                        staticmethod(dies_before_the_catalog_points_at_it))
    with pytest.raises(Crash):
        iceberg().commit_window(windows[2], uris(cfg, windows[2]))
    monkeypatch.undo()
    assert windows[2]["window_start"] not in iceberg().windows_committed()

    restarted = iceberg()
    assert restarted.commit_window(windows[2], uris(cfg, windows[2])) is True
    assert restarted.commit_window(windows[2], uris(cfg, windows[2])) is False
    starts = [s["dlabel.window_start"] for s in dlabel_snapshots(iceberg())]
    assert starts == [m["window_start"] for m in windows]
    assert_same_rows(iceberg().ensure_table().scan().to_arrow(),
                     file_rows(cfg, windows, arrow_schema(cfg)))


def test_a_concurrent_commit_of_the_same_window_wins_and_the_other_returns_false(
        cfg, windows, iceberg, monkeypatch):
    first, other = iceberg(), iceberg()
    first.ensure_table()
    other.ensure_table()
    commit = Transaction.commit_transaction
    raced = []

    def other_commits_first(self):
        if not raced:
            raced.append(True)
            assert other.commit_window(windows[0], uris(cfg, windows[0])) is True
        return commit(self)

    monkeypatch.setattr(Transaction, "commit_transaction", other_commits_first)
    assert first.commit_window(windows[0], uris(cfg, windows[0])) is False
    assert raced and len(dlabel_snapshots(iceberg())) == 1


def test_an_empty_window_is_a_snapshot_without_files(cfg, iceberg, tmp_path):
    schema = arrow_schema(cfg)
    storage = LocalStorage(cfg.dataset.path)
    storage.write_atomic("window-x/data-00000.parquet", b"")
    pq.write_table(schema.empty_table(), storage.uri("window-x/data-00000.parquet"))
    manifest = {"window_start": "2026-11-18T11:00:00Z", "window_end": "2026-11-18T11:10:00Z",
                "window_start_ms": T0, "rows": 0, "source_offsets": {},
                "files": [{"path": "data-00000.parquet", "rows": 0}]}
    ice = iceberg()
    ice.ensure_table()
    assert ice.commit_window(manifest, [storage.uri("window-x/data-00000.parquet")]) is True
    assert ice.commit_window(manifest, [storage.uri("window-x/data-00000.parquet")]) is False
    (summary,) = dlabel_snapshots(ice)
    assert summary["dlabel.rows"] == "0" and summary.get("added-data-files", "0") == "0"
    assert ice.ensure_table().scan().to_arrow().num_rows == 0
