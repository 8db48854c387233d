"""How a job's challenger learns: incrementally from the champion, or refit on recent windows.

- ``model.training: incremental`` (the default): a copy of the champion (or a new model)
  learns the window's training rows with ``partial_fit``; its lineage is the champion's
  windows plus this one.
- ``model.training: refit``: a new model is fit on the last ``model.refit_windows``
  windows: the closed windows before this one (all their rows, read through their
  manifests) and this window's training rows (its holdout stays out); its lineage is
  exactly those windows.

With an ``Adaptation`` (jobs.adapt: drift was flagged on this window) the rows learn
with its recency weights: ``recency`` weighs this window's rows (its drifted slices'
most) more in the incremental step; ``refit`` fits a new model on the recent windows,
the older ones weighing less.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from schemas.config import PipelineConfig
from jobs import dataset as ds
from jobs.adapt import Adaptation
from jobs.models import AnyModel, new_model

log = logging.getLogger("dlabel.jobs.training")


@dataclass(frozen=True)
class Trained:
    """A challenger and what it learned from: ``windows`` and ``manifests`` are the earlier
    windows of a refit (names, manifest paths), None for incremental training."""
    model: AnyModel
    rows: int
    windows: list[str] | None = None
    manifests: list[str] | None = None

    def facts(self, mode: str, this_window: str) -> dict[str, Any]:
        """The ``training`` entry of metrics.json."""
        return {"mode": mode, "rows": self.rows,
                "windows": (self.windows or []) + [this_window] if mode == "refit" else
                [this_window]}


def recent_windows(config: PipelineConfig, start_ms: int) -> list[ds.Window]:
    """The closed windows a refit adds to this one: the latest ``refit_windows - 1``
    before ``start_ms``, oldest first."""
    keep = config.model.refit_windows - 1
    if keep <= 0:
        return []
    earlier = [w for w in ds.closed_windows(config.dataset.path) if w < start_ms][-keep:]
    return [ds.open_window(config.dataset.path, w) for w in earlier]


def train_challenger(config: PipelineConfig, champion: AnyModel | None, train: pd.DataFrame,
                     start_ms: int, adapt: Adaptation | None = None) -> Trained:
    """The challenger of the window starting at ``start_ms``, trained on ``train`` (and,
    for a refit, the windows before it) from ``champion`` (the model incremental
    training continues; None: a new model), adapting to drift when ``adapt`` says so."""
    refit = config.model.training == "refit" or (adapt is not None and adapt.mode == "refit")
    if not refit:
        challenger = champion.copy() if champion else new_model(config)
        challenger.partial_fit(train, adapt.scale(train) if adapt else None)
        return Trained(challenger, len(train))
    windows = recent_windows(config, start_ms)
    frames = [df for df in (ds.read_window(w) for w in windows) if len(df)]
    ages = [len(frames) - i for i, f in enumerate(frames) for _ in range(len(f))]
    frames.append(train)
    ages += [0] * len(train)
    data = pd.concat(frames, ignore_index=True) if len(frames) > 1 else train
    data = data.assign(_age=ages) if len(frames) > 1 else train.assign(_age=0)
    data = data.sort_values(["request_ts", "request_id"], kind="stable").reset_index(drop=True)
    log.info("refit on %d rows of %d window(s)", len(data), len(windows) + 1)
    scale = adapt.refit_scale(data["_age"].to_numpy(), data) if adapt else None
    model = new_model(config).fit(data.drop(columns="_age"), scale)
    return Trained(model, len(data), [w.name for w in windows],
                   [str(w.manifest_path) for w in windows])
