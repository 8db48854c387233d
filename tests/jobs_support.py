"""Helpers for the retraining tests: configs on tmp paths, synthetic closed windows."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from schemas.config import DatasetSpec, PipelineConfig
from streams.dev.synthetic_windows import ctr_window, write_window

H = 3_600_000
START = 1_794_999_600_000  # 2026-11-18T11:00:00Z
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
AIRPORT_FEATURES = (("checkpoint", "str"), ("hour", "int"), ("passengers_in_line", "int"),
                    ("fast_track", "bool"))


def on_tmp(cfg: PipelineConfig, tmp_path: Path, **model: object) -> PipelineConfig:
    """``cfg`` with its dataset and registry under ``tmp_path`` (and model fields replaced)."""
    return dataclasses.replace(
        cfg, dataset=DatasetSpec(str(tmp_path / "data"), H),
        model=dataclasses.replace(cfg.model, path=str(tmp_path / "models"), **model))


def write_ctr_windows(cfg: PipelineConfig, n: int, rows: int = 1500, seed: int = 1,
                      first: int = 0, **drift: object) -> list[int]:
    """Write ``n`` closed ctr windows starting at window ``first``; their starts."""
    starts = [START + (first + i) * H for i in range(n)]
    for s in starts:
        write_window(cfg.dataset.path, cfg.pipeline, s, H, ctr_window(s, H, rows, seed, **drift))
    return starts


def airport_window(start_ms: int, rows: int, seed: int) -> pd.DataFrame:
    """Labeled airport examples: waiting seconds grow with the line length."""
    rng = np.random.default_rng([seed, start_ms // 1000])
    ts = np.sort(start_ms + rng.integers(0, H, rows))
    cp = rng.choice(np.array(["A", "B", "C", "D"], dtype=object), rows)
    line = rng.integers(0, 60, rows)
    fast = rng.random(rows) < 0.15
    wait = 20 + line * np.where(fast, 3.0, 9.0) * rng.lognormal(0, 0.2, rows)
    return pd.DataFrame({
        "request_id": [f"a{start_ms:x}-{i}" for i in range(rows)],
        "request_ts": pd.to_datetime(ts, unit="ms", utc=True),
        "window_start": pd.to_datetime(np.full(rows, start_ms), unit="ms", utc=True),
        "label": wait.astype("float64"),
        "label_ts": pd.to_datetime(ts + (wait * 1000).astype("int64"), unit="ms", utc=True),
        "prediction": pd.Series(20 + line * 8.0, dtype="float64"), "model_version": "v1",
        "checkpoint": cp, "hour": ((ts // H) % 24).astype("int64"),
        "passengers_in_line": line.astype("int64"),
        "fast_track": pd.Series(fast, dtype="boolean").mask(rng.random(rows) < 0.02),
    })


def write_airport_windows(cfg: PipelineConfig, n: int, rows: int = 800) -> list[int]:
    starts = [START + i * H for i in range(n)]
    for s in starts:
        write_window(cfg.dataset.path, cfg.pipeline, s, H, airport_window(s, rows, 1),
                     features=AIRPORT_FEATURES, kind="regression")
    return starts


def write_yaml(cfg: PipelineConfig, scenario: str, path: Path, **model: object) -> Path:
    """A YAML config file like the example, with this config's paths and topics."""
    data = yaml.safe_load((EXAMPLES / f"{scenario}.yaml").read_text())
    data["pipeline"] = cfg.pipeline
    data["broker"] = cfg.broker
    data["topics"].update(requests=cfg.topics.requests, feedback=cfg.topics.feedback,
                          labeled=cfg.topics.labeled, dead_letter=cfg.topics.dead_letter,
                          windows=cfg.topics.windows)
    data["dataset"]["path"] = cfg.dataset.path
    data["model"]["path"] = cfg.model.path
    data["model"].update(model)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# the columns issue 14 added to labeled rows, as (name, type) after the features (the
# sink puts them before; readers select by name)
LABEL_QUALITY = (("label_delay_ms", "int"), ("label_version", "int"), ("sample_weight", "float"))


def sampled(df: pd.DataFrame, rate: float) -> pd.DataFrame:
    """``df`` as the sink writes it with ``label.negative_sample_rate: rate``: negatives
    kept by ``schemas.records.negative_kept``, ``sample_weight`` 1/rate for them (1 for
    positives), label version 1, delay of the positives."""
    from schemas.records import negative_kept
    keep = (df["label"] == 1) | df["request_id"].map(lambda r: negative_kept(r, rate))
    out = df[keep.to_numpy()].reset_index(drop=True)
    delay = (out["label_ts"] - out["request_ts"]).dt.total_seconds() * 1000
    return out.assign(label_delay_ms=pd.Series(delay.round(), dtype="Int64").where(
                          out["label"] == 1),
                      label_version=1,
                      sample_weight=np.where(out["label"] == 1, 1.0, 1.0 / rate))


def write_sampled_ctr_windows(cfg: PipelineConfig, n: int, rate: float, rows: int = 1500,
                              seed: int = 1, **drift: object) -> list[int]:
    """``write_ctr_windows`` as negative sampling at ``rate`` writes them."""
    from streams.dev.synthetic_windows import CTR_FEATURES
    starts = [START + i * H for i in range(n)]
    for s in starts:
        write_window(cfg.dataset.path, cfg.pipeline, s, H,
                     sampled(ctr_window(s, H, rows, seed, **drift), rate),
                     features=CTR_FEATURES + LABEL_QUALITY)
    return starts


def set_window_version(cfg: PipelineConfig, start: int, df: pd.DataFrame, version: int) -> Path:
    """Rewrite a closed window with ``df`` as data version ``version`` (what corrections
    do: new files, the manifest replaced with ``"version": version``); its manifest."""
    import json
    path = write_window(cfg.dataset.path, cfg.pipeline, start, H, df)
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "version": version}))
    return path
