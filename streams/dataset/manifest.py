"""A closed window's ``_manifest.json``, the windows-topic event, and reading them back.

The manifest is written last, atomically, and never rewritten: its presence is what
makes a window closed. It lists the window's files (relative names) with their rows,
the label counts, the request-time range, the Arrow schema and the source offsets.
"""
from __future__ import annotations

import io
import json
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from schemas.dataset_schema import MANIFEST, iso_utc, parse_window_dir, unify
from streams.dataset.compaction import staged_files

FORMAT = 1


def manifest_exists(storage, dirname: str) -> bool:
    """True when the window directory ``dirname`` has its manifest (it is closed)."""
    return MANIFEST in storage.list_dir(dirname)


def build_manifest(config: PipelineConfig, window: int, schema: pa.Schema,
                   files: list[dict[str, Any]], source_offsets: dict[str, list[int]],
                   data: pa.Table) -> dict[str, Any]:
    """The manifest of a window: its data files (``[{"path", "rows"}]``), the
    labeled-topic offsets they were made from, and counts from ``data``, their rows
    (compaction has them in memory: the files are not read back)."""
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
    }


def write_manifest(storage, dirname: str, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically, unless the window already has one."""
    if manifest_exists(storage, dirname):
        return
    storage.write_atomic(f"{dirname}/{MANIFEST}",
                         json.dumps(manifest, indent=2, sort_keys=True).encode())


def read_manifest(storage, dirname: str) -> Optional[dict[str, Any]]:
    raw = storage.read(f"{dirname}/{MANIFEST}")
    return json.loads(raw) if raw else None


def window_event(manifest: dict[str, Any], manifest_uri: str) -> dict[str, Any]:
    """The windows-topic event of DESIGN.md for a closed window."""
    return {"pipeline": manifest["pipeline"], "window_start": manifest["window_start"],
            "window_end": manifest["window_end"], "rows": manifest["rows"],
            "positives": manifest["positives"], "manifest": manifest_uri}


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
                        "files": len(manifest["files"]), "dir": name})
        else:
            files = staged_files(storage, name)
            out.append({"window_start": iso_utc(start), "status": "open", "rows": None,
                        "positives": None, "label_rate": None, "files": len(files), "dir": name})
    return out


def read_window(storage, dirname: str, schema: Optional[pa.Schema] = None) -> pa.Table:
    """A closed window's rows, through its manifest's file list (never a glob)."""
    manifest = read_manifest(storage, dirname)
    if manifest is None:
        raise FileNotFoundError(f"window {dirname} has no manifest (it is still open)")
    tables = [pq.read_table(io.BytesIO(storage.read(f"{dirname}/{f['path']}")))
              for f in manifest["files"]]
    if schema is None:
        schema = unify(t.schema for t in tables) if tables else None
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables([t.select([n for n in t.schema.names]).cast(
        pa.schema([schema.field(n) for n in t.schema.names])) for t in tables],
        promote_options="default")
