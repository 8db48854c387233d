r"""Compaction at close: its cost per closed window, and what it buys readers.

    python benchmarks/bench_compaction.py --windows 24 --rows-per-window 100000 --runs 3

Per run, production's ``DatasetWriter`` (what the sink runs; no broker) takes
``--windows`` hourly windows of labeled examples from 4 labeled partitions, committing
every ``--flush-rows`` rows (the sink's ``dataset.flush_rows``), so each window holds
many small staged files, as at a production flush rate. Then, window by window:
  1. the close as it was before compaction: the manifest alone, built from the window's
     small files (``build_manifest`` over them);
  2. the close now: compaction into data files + manifest (``DatasetWriter.close``).
And the read time of the whole dataset with DuckDB, of the small files (before) and of
the compacted files through the README's default glob (after), in the same run.
Medians over runs; nothing is asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from schemas.config import load_config  # noqa: E402
from schemas.dataset_schema import window_dir  # noqa: E402
from streams.common.storage import LocalStorage  # noqa: E402
from streams.dataset.compaction import source_offsets, staged_files  # noqa: E402
from streams.dataset.manifest import build_manifest  # noqa: E402
from streams.dataset.writer import DatasetWriter  # noqa: E402

HOUR = 3_600_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR


def fill(writer: DatasetWriter, windows: int, per_window: int) -> None:
    """Feed ``windows`` x ``per_window`` examples over 4 partitions, in time order."""
    offsets = [0, 0, 0, 0]
    n = windows * per_window
    for i in range(n):
        ts = T0 + i * (windows * HOUR // n)
        p = i % 4
        writer.add(p, offsets[p], json.dumps({
            "request_id": f"r{i:09d}", "request_ts": ts, "window_start": ts - ts % HOUR,
            "label": int(i % 17 == 0), "label_ts": ts + 5000, "prediction": 0.1,
            "model_version": "v1", "hour": (ts // HOUR) % 24,
            "category": ("books", "toys", "garden")[i % 3], "price": 10.0 + i % 50,
            "user_email": None}).encode())
        offsets[p] += 1
        if writer.due():
            writer.commit_all()
    writer.commit_all()


def duckdb_seconds(files_glob: str | list[str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = duckdb.sql(f"select count(*), sum(price) from read_parquet({files_glob!r})").fetchall()[0][0]
    return time.perf_counter() - t0, n


def one_run(args, work: Path) -> dict:
    cfg = load_config(ROOT / "examples" / "ctr.yaml")
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(
        cfg.dataset, path=str(work / "data"), flush_rows=args.flush_rows))
    storage = LocalStorage(cfg.dataset.path)
    writer = DatasetWriter(cfg, storage, clock=lambda: 0)
    writer.recover([0, 1, 2, 3])
    fill(writer, args.windows, args.rows_per_window)
    windows = sorted(writer.open_ids)
    small = [str(Path(cfg.dataset.path) / window_dir(w) / n) for w in windows
             for n in staged_files(storage, window_dir(w))]
    before_read, rows_before = duckdb_seconds(small)
    manifest_only, close, files_per_window = [], [], []
    for w in windows:
        name = window_dir(w)
        names = staged_files(storage, name)
        files_per_window.append(len(names))
        t0 = time.perf_counter()  # as before: the manifest read its counts from the files
        tables = [pq.read_table(io.BytesIO(storage.read(f"{name}/{n}")),
                                columns=["request_ts", "label"]) for n in names]
        build_manifest(cfg, w, writer.schema, [{"path": n, "rows": 0} for n in names],
                       source_offsets(names, cfg.topics.labeled), pa.concat_tables(tables))
        manifest_only.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        writer.close(w, cfg.topics.labeled)
        close.append(time.perf_counter() - t0)
    after_read, rows_after = duckdb_seconds(f"{cfg.dataset.path}/**/*.parquet")
    assert rows_before == rows_after == args.windows * args.rows_per_window
    per_100k = 100_000 / args.rows_per_window
    return {"small_files_per_window": statistics.median(files_per_window),
            "close_before_s": statistics.median(manifest_only),
            "close_after_s": statistics.median(close),
            "compaction_s_per_100k_rows": statistics.median(
                c - m for c, m in zip(close, manifest_only)) * per_100k,
            "duckdb_read_small_s": before_read, "duckdb_read_compacted_s": after_read}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=24)
    ap.add_argument("--rows-per-window", type=int, default=100_000)
    ap.add_argument("--flush-rows", type=int, default=2_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(one_run(args, Path(tmp)))
        print(json.dumps({"run": run, **{k: round(v, 4) for k, v in rows[-1].items()}}),
              flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\n{args.windows} hourly windows x {args.rows_per_window:,} rows, flush every "
          f"{args.flush_rows:,} rows over 4 partitions; median of {args.runs} runs\n")
    print("| small files per window | close before (manifest only) s | close now (compaction + "
          "manifest) s | compaction s per 100k rows | DuckDB read, small files s | "
          "DuckDB read, compacted s |")
    print("|---|---|---|---|---|---|")
    print(f"| {med['small_files_per_window']:.0f} | {med['close_before_s']:.3f} | "
          f"{med['close_after_s']:.3f} | {med['compaction_s_per_100k_rows']:.3f} | "
          f"{med['duckdb_read_small_s']:.3f} | {med['duckdb_read_compacted_s']:.3f} |")


if __name__ == "__main__":
    main()
