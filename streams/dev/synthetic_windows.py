"""Synthetic closed windows in the dataset sink's exact layout (tests, benchmarks).

``ctr_window`` draws labeled CTR examples the way ``streams.dev.simulate`` draws clicks
(same categories, prices, hour effect), with an optional concept drift: from
``drift_at_ms`` on, the ``drift_category`` is clicked ``drift_factor`` times as often
(0: never). ``write_window`` writes them like the sink does: ``part-*.parquet`` files
with the contract's Arrow schema, then ``_manifest.json`` last.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.dataset import MANIFEST, window_dirname, window_iso
from jobs.registry import write_atomic
from streams.dev.simulate import CATEGORIES, CATEGORY_CTR, CATEGORY_PRICE, CATEGORY_WEIGHTS

_TS = pa.timestamp("ms", tz="UTC")
_ARROW = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}
CTR_FEATURES = (("hour", "int"), ("category", "str"), ("price", "float"), ("user_email", "str"))


def ctr_window(start_ms: int, window_ms: int, rows: int, seed: int,
               drift_at_ms: int | None = None, drift_category: str = "mens_dress_shoes",
               drift_factor: float = 0.0) -> pd.DataFrame:
    """``rows`` labeled CTR examples with request times in [start_ms, start_ms + window_ms)."""
    rng = np.random.default_rng([seed, start_ms // 1000])
    ts = np.sort(start_ms + rng.integers(0, window_ms, rows))
    w = np.array(CATEGORY_WEIGHTS, dtype=float)
    cat = rng.choice(len(CATEGORIES), size=rows, p=w / w.sum())
    base_price = np.array(CATEGORY_PRICE)[cat]
    price = np.round(np.exp(np.log(base_price) + 0.6 * rng.standard_normal(rows)), 2)
    hour = (ts // 3_600_000) % 24
    p = np.array(CATEGORY_CTR)[cat] * np.clip(np.sqrt(base_price / price), 0.3, 2.5)
    p *= np.where((hour >= 18) & (hour <= 22), 1.3, np.where((hour >= 1) & (hour <= 6), 0.8, 1.0))
    p = np.minimum(p, 0.9)
    # the model server's logged score knows the world before the drift
    pred = np.minimum(1.0, p * np.exp(0.3 * rng.standard_normal(rows))).round(4)
    if drift_at_ms is not None:
        hit = (np.array(CATEGORIES)[cat] == drift_category) & (ts >= drift_at_ms)
        p = np.where(hit, p * drift_factor, p)
    label = (rng.random(rows) < p).astype("int64")
    price_obj = pd.Series(price, dtype="float64").mask(rng.random(rows) < 0.05)
    users = rng.integers(1, 20000, rows)
    return pd.DataFrame({
        "request_id": [f"{seed:x}-{start_ms:x}-{i:06d}" for i in range(rows)],
        "request_ts": pd.to_datetime(ts, unit="ms", utc=True),
        "window_start": pd.to_datetime(np.full(rows, start_ms), unit="ms", utc=True),
        "label": label,
        "label_ts": pd.to_datetime(ts + 60_000, unit="ms", utc=True),
        "prediction": pd.Series(pred, dtype="float64").mask(rng.random(rows) < 0.01),
        "model_version": "v1",
        "hour": hour.astype("int64"),
        "category": np.array(CATEGORIES, dtype=object)[cat],
        "price": price_obj,
        "user_email": [hashlib.sha256(f"user{u}".encode()).hexdigest()[:32] for u in users],
    })


def arrow_schema(features: tuple[tuple[str, str], ...], kind: str = "binary") -> pa.Schema:
    """The dataset contract's Arrow schema for ``(name, type)`` features."""
    return pa.schema([("request_id", pa.string()), ("request_ts", _TS), ("window_start", _TS),
                      ("label", pa.int64() if kind == "binary" else pa.float64()),
                      ("label_ts", _TS), ("prediction", pa.float64()),
                      ("model_version", pa.string())]
                     + [(n, _ARROW[t]) for n, t in features])


def write_window(root: str | Path, pipeline: str, start_ms: int, window_ms: int,
                 df: pd.DataFrame, features: tuple[tuple[str, str], ...] = CTR_FEATURES,
                 kind: str = "binary", files: int = 2) -> Path:
    """Write ``df`` as a closed window (parquet parts, then the manifest); the manifest path."""
    wdir = Path(root) / window_dirname(start_ms)
    wdir.mkdir(parents=True, exist_ok=True)
    schema = arrow_schema(features, kind)
    entries = []
    for i, part in enumerate(np.array_split(np.arange(len(df)), max(1, files))):
        name = f"part-{i:05d}.parquet"
        table = pa.Table.from_pandas(df.iloc[part], schema=schema, preserve_index=False)
        pq.write_table(table, wdir / name)
        entries.append({"path": name, "rows": table.num_rows})
    binary = kind == "binary"
    positives = int(df["label"].sum()) if binary else None
    ts_ms = df["request_ts"].astype("int64") // 10**6 if len(df) else pd.Series([], dtype="int64")
    manifest: dict[str, Any] = {
        "format": 1, "pipeline": pipeline, "window_start": window_iso(start_ms),
        "window_end": window_iso(start_ms + window_ms), "window_start_ms": start_ms,
        "window_end_ms": start_ms + window_ms, "files": entries, "rows": len(df),
        "positives": positives,
        "label_counts": {"0": len(df) - positives, "1": positives} if binary else {},
        "min_request_ts": int(ts_ms.min()) if len(df) else None,
        "max_request_ts": int(ts_ms.max()) if len(df) else None,
        "schema": schema.to_string(), "source_offsets": {}}
    path = wdir / MANIFEST
    write_atomic(path, json.dumps(manifest, indent=1).encode())
    return path


def window_event(manifest_path: str | Path) -> dict[str, Any]:
    """The windows-topic event the sink publishes for a window with this manifest."""
    m = json.loads(Path(manifest_path).read_text())
    return {"pipeline": m["pipeline"], "window_start": m["window_start"],
            "window_end": m["window_end"], "rows": m["rows"], "positives": m["positives"],
            "manifest": str(manifest_path)}
