"""An answer to drift: how a job adapts when its window drifted (``model.on_drift``).

jobs.drift compares the window with the previous one. When it flags something (a
feature, the label rate overall, or the label rate of a slice value), the challenger
this job trains adapts faster, and the decision records how:

- ``none``: nothing changes (the challenger learns as on any window).
- ``recency`` (default): the incremental step weighs this window's rows more. Rows of a
  slice value whose label rate drifted weigh ``SLICE_WEIGHT`` (the model must unlearn
  what it knew of that slice within a window, not within ten); when the whole window
  drifted (a feature, or the overall label rate), every row weighs ``WINDOW_WEIGHT``.
  Rows of slices that did not drift learn as usual, so the stationary part of the
  model is not disturbed.
- ``refit``: a new model is fit on the last ``model.refit_windows`` windows
  (jobs.training), a window ``k`` windows older weighing ``REFIT_DECAY ** k``, the
  drifted slices of this window as in ``recency``.

Weights multiply each row's ``sample_weight``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from schemas.config import PipelineConfig
from jobs.metrics import slice_values

SLICE_WEIGHT = 20.0
WINDOW_WEIGHT = 3.0
REFIT_DECAY = 0.5


@dataclass(frozen=True)
class Adaptation:
    """How this job's challenger adapts: ``mode`` (recency | refit), the drift flags
    that triggered it, the drifted slice values, and whether the whole window drifted."""
    mode: str
    trigger: tuple[str, ...]
    slices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    whole_window: bool = False

    def scale(self, df: pd.DataFrame) -> np.ndarray:
        """Recency weights of this window's rows (multiplying ``sample_weight``)."""
        w = np.full(len(df), WINDOW_WEIGHT if self.whole_window else 1.0)
        for feature, values in self.slices.items():
            if feature in df.columns:
                hit = np.isin(slice_values(df[feature]), list(values))
                w = np.where(hit, np.maximum(w, SLICE_WEIGHT), w)
        return w

    def refit_scale(self, ages: np.ndarray, df: pd.DataFrame) -> np.ndarray:
        """Weights of a refit's rows: ``REFIT_DECAY ** age`` (age in windows, 0 = this
        window), this window's rows as in ``scale``."""
        w = REFIT_DECAY ** ages.astype("float64")
        now = ages == 0
        w[now] = self.scale(df[now])
        return w

    def facts(self) -> dict[str, Any]:
        """The ``adaptation`` entry of the decision."""
        return {"on_drift": self.mode, "trigger": list(self.trigger),
                "slices": {f: list(v) for f, v in self.slices.items()},
                "whole_window": self.whole_window, "slice_weight": SLICE_WEIGHT,
                "window_weight": WINDOW_WEIGHT if self.whole_window else 1.0,
                **({"refit_decay": REFIT_DECAY} if self.mode == "refit" else {})}


def adaptation(config: PipelineConfig, drift: dict[str, Any] | None) -> Adaptation | None:
    """The adaptation ``model.on_drift`` asks for given this window's ``drift``
    (jobs.drift output), or None when nothing drifted or on_drift is ``none``."""
    mode = config.model.on_drift
    if mode == "none" or not drift or not drift.get("flagged"):
        return None
    slices: dict[str, tuple[str, ...]] = {}
    for feature, per in (drift.get("label") or {}).get("slices", {}).items():
        hit = tuple(v for v, d in per.items() if d.get("flagged"))
        if hit:
            slices[feature] = hit
    whole = bool(drift["label"].get("flagged")) or any(
        d.get("flagged") for d in drift.get("features", {}).values())
    return Adaptation(mode, tuple(drift["flagged"]), slices, whole)
