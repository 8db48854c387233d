"""Helpers for the in-window update tests: labeled-topic rows from synthetic windows."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from schemas.config import PipelineConfig
from schemas.config_estimator import UpdateSpec
from streams.dev.synthetic_windows import ctr_window, write_window
from tests.jobs_support import H, START, on_tmp


def with_updates(cfg: PipelineConfig, tmp_path: Path, every_rows: int = 200,
                 tolerance: float = 0.05, guard_rows: int = 1000, **model) -> PipelineConfig:
    """``cfg`` on ``tmp_path`` with in-window updates every ``every_rows`` rows."""
    cfg = on_tmp(cfg, tmp_path, **model)
    return dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, updates=UpdateSpec(None, every_rows, tolerance, guard_rows)))


def topic_rows(df: pd.DataFrame) -> list[dict]:
    """A window's rows as the labeled topic carries them (times as epoch ms, NaN as null)."""
    out = []
    for rec in df.to_dict("records"):
        row = {}
        for k, v in rec.items():
            if isinstance(v, pd.Timestamp):
                v = int(v.value // 1_000_000)
            elif isinstance(v, float) and np.isnan(v):
                v = None
            elif isinstance(v, np.integer):
                v = int(v)
            row[k] = v
        row.setdefault("label_version", 1)
        row.setdefault("sample_weight", 1.0)
        out.append(row)
    return out


def ctr_rows(i: int, rows: int = 600, seed: int = 1, **drift) -> tuple[int, pd.DataFrame]:
    """(start, frame) of synthetic ctr window number ``i``."""
    start = START + i * H
    return start, ctr_window(start, H, rows, seed, **drift)


def close_window(cfg: PipelineConfig, start: int, df: pd.DataFrame) -> None:
    """Write the window as the sink does when it closes (parts, then the manifest)."""
    write_window(cfg.dataset.path, cfg.pipeline, start, H, df)
