"""The guard of in-window updates: is the updated model still at least as good as the
frozen champion, on the labels that arrive?

Before a batch of labeled rows is learned, both the updated line and the frozen
champion score it (prequential: neither has seen those rows). The guard keeps the
per-row losses of the last ``rows`` rows (log loss for a binary label; for regression
the absolute error, or the squared error when the promotion metric is rmse), weighted by
``sample_weight``. Once it holds ``MIN_ROWS`` rows, the updates are rolled back when
the line's mean loss exceeds the champion's by more than ``tolerance`` (relative):
``line > champion * (1 + tolerance)``.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Optional

import numpy as np
import pandas as pd

from jobs.metrics import EPS, row_weights

MIN_ROWS = 100


def row_losses(kind: str, metric: str, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-row loss of scores ``s`` against labels ``y``: log loss (binary), absolute
    error (regression), squared error when ``metric`` is rmse."""
    if kind == "binary":
        p = np.clip(s, EPS, 1 - EPS)
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    err = s - y
    return err ** 2 if metric == "rmse" else np.abs(err)


class Guard:
    """Rolling prequential losses of the updated line and of the frozen champion."""

    def __init__(self, kind: str, metric: str, tolerance: float, rows: int) -> None:
        self.kind, self.metric, self.tolerance = kind, metric, tolerance
        self.window: deque = deque(maxlen=rows)

    @property
    def loss_name(self) -> str:
        """What the losses are."""
        if self.kind == "binary":
            return "log_loss"
        return "squared_error" if self.metric == "rmse" else "absolute_error"

    def reset(self) -> None:
        """Forget the losses (a new line starts)."""
        self.window.clear()

    def observe(self, df: pd.DataFrame, line: np.ndarray, champion: np.ndarray) -> None:
        """Record both models' losses on ``df``'s rows (scores aligned with them)."""
        y = df["label"].to_numpy(dtype="float64")
        w = row_weights(df)
        a = row_losses(self.kind, self.metric, y, np.asarray(line, dtype="float64"))
        b = row_losses(self.kind, self.metric, y, np.asarray(champion, dtype="float64"))
        self.window.extend(zip(w.tolist(), a.tolist(), b.tolist()))

    def losses(self) -> tuple[Optional[float], Optional[float]]:
        """(line, champion) weighted mean losses over the rolling rows (None when empty)."""
        if not self.window:
            return None, None
        w, a, b = (np.asarray(c, dtype="float64") for c in zip(*self.window))
        return float(np.average(a, weights=w)), float(np.average(b, weights=w))

    def verdict(self) -> Optional[str]:
        """Why the updates must be rolled back, or None while they hold."""
        if len(self.window) < MIN_ROWS:
            return None
        line, champion = self.losses()
        if line > champion * (1.0 + self.tolerance):
            return (f"guard: the updated model's {self.loss_name} {line:.4f} over the last "
                    f"{len(self.window)} labeled rows exceeds the frozen champion's "
                    f"{champion:.4f} by more than {self.tolerance:.0%}")
        return None

    def facts(self) -> dict[str, Any]:
        """The guard's state for ``update.json``."""
        line, champion = self.losses()
        return {"rows": len(self.window), "loss": self.loss_name, "line": line,
                "champion": champion, "tolerance": self.tolerance, "min_rows": MIN_ROWS}
