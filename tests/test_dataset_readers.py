"""The dataset as the data ecosystem reads it: every reader with its defaults gets the
same rows, ``window_start`` a UTC timestamp and every column its declared type.

The dataset is written by production's ``DatasetWriter`` (what the sink runs): two
labeled partitions over three windows, every window closed (so compacted). The reader
one-liners below are the ones the README shows.
"""
from __future__ import annotations

import dataclasses
import shutil

import pyarrow as pa
import pytest

from schemas.dataset_schema import arrow_schema
from streams.common.storage import LocalStorage
from tests.test_dataset_writer import write_closed

MIN = 60_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % (10 * MIN)
N = 90


def example(i: int) -> dict:
    ts = T0 + i * MIN // 3
    return {"request_id": f"r{i:03d}", "request_ts": ts, "window_start": ts - ts % (10 * MIN),
            "label": int(i % 3 == 0), "label_ts": ts + 1000, "prediction": 0.25 if i % 2 else None,
            "model_version": "m1", "label_delay_ms": 1000 if i % 3 == 0 else None,
            "label_version": 1 + (i % 7 == 0), "sample_weight": 1.0 if i % 3 == 0 else 2.0,
            "hour": 10 + i % 5, "category": ["shoes", "toys"][i % 2],
            "price": 9.5 + i, "user_email": None}


@pytest.fixture
def dataset(make_config, tmp_path):
    """A closed, compacted dataset; returns (path, config)."""
    cfg = make_config("ctr", partitions=2)
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(
        cfg.dataset, path=str(tmp_path / "data"), window_ms=10 * MIN, flush_rows=7))
    write_closed(cfg, LocalStorage(cfg.dataset.path), (example(i) for i in range(N)))
    return cfg.dataset.path, cfg


def _expected_ids() -> list[str]:
    return [f"r{i:03d}" for i in range(N)]


def _kind(t: pa.DataType) -> str:
    """A type as a reader may render it: string or large_string, a UTC timestamp of any
    unit (DuckDB's TIMESTAMPTZ is microseconds) are the same kind."""
    if pa.types.is_timestamp(t):
        return f"timestamp {'UTC' if t.tz in ('UTC', 'Etc/UTC', '+00:00') else t.tz}"
    if pa.types.is_large_string(t) or pa.types.is_string(t):
        return "string"
    return str(t)


def _check_arrow(table: pa.Table, cfg) -> None:
    want = arrow_schema(cfg)
    assert table.schema.names == want.names
    for f in want:
        assert _kind(table.schema.field(f.name).type) == _kind(f.type), f.name
    table = table.sort_by("request_id")
    assert table.column("request_id").to_pylist() == _expected_ids()
    ws = table.column("window_start").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_pylist()
    assert ws == [example(i)["window_start"] for i in range(N)]


def test_pandas_reads_the_dataset_with_its_defaults(dataset):
    path, cfg = dataset
    import pandas as pd
    df = pd.read_parquet(path)
    assert str(df["window_start"].dtype) == "datetime64[ms, UTC]"
    assert sorted(df["request_id"]) == _expected_ids() and len(df) == N
    assert str(df["label"].dtype) == "int64" and str(df["price"].dtype) == "float64"
    _check_arrow(pa.Table.from_pandas(df, preserve_index=False), cfg)


def test_pyarrow_dataset_reads_it_with_its_defaults(dataset):
    path, cfg = dataset
    import pyarrow.dataset as ds
    table = ds.dataset(path).to_table()
    _check_arrow(table, cfg)


def test_duckdb_reads_it_with_its_defaults(dataset):
    path, cfg = dataset
    import duckdb
    rel = duckdb.sql(f"select * from read_parquet('{path}/**/*.parquet')")
    types = dict(zip(rel.columns, (str(t) for t in rel.types)))
    assert types["window_start"] == "TIMESTAMP WITH TIME ZONE"
    assert types["label"] == "BIGINT" and types["request_ts"] == "TIMESTAMP WITH TIME ZONE"
    _check_arrow(rel.to_arrow_table(), cfg)


def test_polars_reads_it_with_its_defaults(dataset):
    path, cfg = dataset
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(f"{path}/**/*.parquet")
    assert str(df.schema["window_start"]) == "Datetime(time_unit='ms', time_zone='UTC')"
    _check_arrow(df.to_arrow(), cfg)


@pytest.mark.slow
def test_spark_reads_it_with_its_defaults(dataset, tmp_path):
    path, cfg = dataset
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("Spark needs Java")
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[1]").appName("dlabel-readers")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        # Spark recurses only into key=value directories: the window directories are
        # named by a glob (or .option("recursiveFileLookup", "true"))
        df = spark.read.parquet(f"{path}/window-*")
        types = dict(df.dtypes)
        assert types["window_start"] == "timestamp" and types["label"] == "bigint"
        rows = sorted(r["request_id"] for r in df.select("request_id").collect())
        assert rows == _expected_ids()
        assert df.count() == N
    finally:
        spark.stop()
