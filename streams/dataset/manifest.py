"""A closed window's ``_manifest.json``, the windows-topic event, and reading them back.

The manifest is written last, atomically: its presence is what makes a window closed.
It lists the window's files (relative names) with their rows, the label counts and
statistics (``window_stats``), the request-time range, the Arrow schema, the source
offsets and ``committed``, the sink's positions when it was written (staged files from
later positions are corrections). Version 1 is written once; a correction writes
version 2, 3... over it, after keeping the previous one (``streams.dataset.corrections``).
"""
from __future__ import annotations

import io
import json
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from schemas.dataset_schema import (MANIFEST, MANIFEST_FORMAT, iso_utc, parse_manifest,
                                    parse_window_dir, unify)
from schemas.errors import DatasetError
from streams.dataset.compaction import staged_files

FORMAT = MANIFEST_FORMAT


def manifest_exists(storage, dirname: str) -> bool:
    """True when the window directory ``dirname`` has its manifest (it is closed)."""
    return MANIFEST in storage.list_dir(dirname)


def window_stats(config: PipelineConfig, data: pa.Table) -> dict[str, Any]:
    """Label-quality statistics of a window's rows (issue 14).

    ``requests``: requests the rows stand for (the sum of ``sample_weight``: a sampled
    negative stands for ``1 / rate`` of them); ``join_ratio``: the share of those whose
    label came from feedback (binary: positives; regression: every labeled row, of the
    labeled ones); ``label_delay_ms``: p50/p90/p99 of the delay of feedback-decided
    labels; ``late_in_window_share``: the share of those that came in the last 10% of
    the label window (a window that is too short shows it); ``corrections``: rows whose
    label was corrected after it was final (``label_version`` > 1).
    """
    rows = data.num_rows
    names = data.schema.names

    def col(name: str, default: Any) -> pa.Array:
        if name in names:
            return data.column(name)
        return pa.array([default] * rows)

    weights = pc.fill_null(col("sample_weight", 1.0).cast(pa.float64()), 1.0)
    requests = pc.sum(weights).as_py() or 0.0
    delay = col("label_delay_ms", None).cast(pa.int64())
    decided = pc.drop_null(delay)
    n_decided = len(decided)
    quantiles = None
    if n_decided:
        q = pc.quantile(decided, q=[0.5, 0.9, 0.99], interpolation="lower").to_pylist()
        quantiles = {"p50": q[0], "p90": q[1], "p99": q[2]}
    late = 0.9 * config.join.label_window_ms
    late_share = (pc.sum(pc.greater_equal(decided, late)).as_py() / n_decided
                  if n_decided else None)
    version = pc.fill_null(col("label_version", 1).cast(pa.int64()), 1)
    return {"requests": round(requests, 6),
            "join_ratio": round(n_decided / requests, 6) if requests else None,
            "label_delay_ms": quantiles,
            "late_in_window_share": round(late_share, 6) if late_share is not None else None,
            "corrections": pc.sum(pc.greater(version, 1)).as_py() or 0}


def build_manifest(config: PipelineConfig, window: int, schema: pa.Schema,
                   files: list[dict[str, Any]], source_offsets: dict[str, list[int]],
                   data: pa.Table, committed: dict[int, int] | None = None,
                   version: int = 1) -> dict[str, Any]:
    """The manifest of a window: its data files (``[{"path", "rows"}]``), the
    labeled-topic offsets they were made from, the sink's ``committed`` positions, and
    counts and statistics from ``data``, their rows (compaction has them in memory: the
    files are not read back)."""
    rows = data.num_rows
    positives: Optional[int] = None
    label_counts: dict[str, int] = {}
    min_ts = max_ts = None
    if rows:
        bounds = pc.min_max(data.column("request_ts").cast(pa.int64()))
        min_ts, max_ts = bounds["min"].as_py(), bounds["max"].as_py()
        if config.label.kind == "binary":
            positives = pc.sum(pc.equal(data.column("label"), 1)).as_py() or 0
            label_counts = {"0": rows - positives, "1": positives}
    elif config.label.kind == "binary":
        positives, label_counts = 0, {"0": 0, "1": 0}
    end = window + config.dataset.window_ms
    return {
        "format": FORMAT,
        "pipeline": config.pipeline,
        "window_start": iso_utc(window),
        "window_end": iso_utc(end),
        "window_start_ms": window,
        "window_end_ms": end,
        "files": files,
        "rows": rows,
        "positives": positives,
        "label_counts": label_counts,
        "min_request_ts": min_ts,
        "max_request_ts": max_ts,
        "schema": schema.to_string(show_schema_metadata=False),
        "source_offsets": source_offsets,
        "committed": {str(p): o for p, o in sorted((committed or {}).items())},
        "version": version,
        "stats": window_stats(config, data),
    }


def write_manifest(storage, dirname: str, manifest: dict[str, Any],
                   replace: bool = False) -> None:
    """Write the manifest atomically, unless the window already has one (``replace``:
    a new version replaces it)."""
    if not replace and manifest_exists(storage, dirname):
        return
    storage.write_atomic(f"{dirname}/{MANIFEST}", manifest_bytes(manifest))


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """A manifest as written to storage (indented, sorted keys)."""
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def read_manifest(storage, dirname: str) -> Optional[dict[str, Any]]:
    """The manifest of window directory ``dirname``, or None when it has none (open);
    DatasetError when it is not a valid one (``parse_manifest``)."""
    raw = storage.read(f"{dirname}/{MANIFEST}")
    return parse_manifest(raw, storage.uri(f"{dirname}/{MANIFEST}")) if raw else None


def window_event(manifest: dict[str, Any], manifest_uri: str) -> dict[str, Any]:
    """The windows-topic event of DESIGN.md for a closed window."""
    return {"pipeline": manifest["pipeline"], "window_start": manifest["window_start"],
            "window_end": manifest["window_end"], "rows": manifest["rows"],
            "positives": manifest["positives"], "manifest": manifest_uri,
            "version": manifest.get("version", 1)}


def list_windows(storage) -> list[dict[str, Any]]:
    """Every window of a dataset with its status, from manifests (open ones: the number
    of staged files)."""
    out = []
    for name in storage.list_dir():
        start = parse_window_dir(name)
        if start is None:
            continue
        manifest = read_manifest(storage, name)
        if manifest is not None:
            rows, positives = manifest["rows"], manifest["positives"]
            out.append({"window_start": manifest["window_start"], "status": "closed",
                        "rows": rows, "positives": positives,
                        "label_rate": (positives / rows) if rows and positives is not None else None,
                        "files": len(manifest["files"]), "dir": name,
                        "version": manifest.get("version", 1),
                        "stats": manifest.get("stats")})
        else:
            files = staged_files(storage, name)
            out.append({"window_start": iso_utc(start), "status": "open", "rows": None,
                        "positives": None, "label_rate": None, "files": len(files), "dir": name,
                        "version": None, "stats": None})
    return out


def read_window(storage, dirname: str, schema: Optional[pa.Schema] = None) -> pa.Table:
    """A closed window's rows, through its manifest's file list (never a glob)."""
    manifest = read_manifest(storage, dirname)
    if manifest is None:
        raise DatasetError(f"window {dirname} has no manifest: it is still open; read it "
                           "once its window has closed (`dlabel datasets` lists the closed "
                           "ones)")
    tables = [pq.read_table(io.BytesIO(storage.read(f"{dirname}/{f['path']}")))
              for f in manifest["files"]]
    if schema is None:
        schema = unify(t.schema for t in tables) if tables else None
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables([t.select([n for n in t.schema.names]).cast(
        pa.schema([schema.field(n) for n in t.schema.names])) for t in tables],
        promote_options="default")
