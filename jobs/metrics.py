"""Evaluation metrics, overall and per slice value, with row counts.

Binary: ROC AUC, log loss, accuracy (threshold 0.5), positive rate, mean prediction and
calibration gap (mean prediction - positive rate). Regression: MAE, RMSE, mean label,
mean prediction. A metric that is undefined (ROC AUC of a single-class slice, anything
of an empty slice) is None, never an exception. Rows whose score is missing (a null
logged ``prediction``) are left out and counted as ``unscored``.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

MISSING_SLICE = "<missing>"
EPS = 1e-15
# metric -> True when higher is better
HIGHER_IS_BETTER = {"roc_auc": True, "log_loss": False, "accuracy": True, "mae": False,
                    "rmse": False}


def binary_metrics(y: Iterable, p: Iterable) -> dict[str, Any]:
    """Binary metrics of labels ``y`` (0/1) against probabilities ``p``."""
    y = np.asarray(y, dtype="float64")
    p = np.asarray(p, dtype="float64")
    n = int(len(y))
    out: dict[str, Any] = {"rows": n, "positives": int(y.sum()) if n else 0}
    if n == 0:
        return {**out, "roc_auc": None, "log_loss": None, "accuracy": None,
                "positive_rate": None, "mean_prediction": None, "calibration_gap": None}
    pc = np.clip(p, EPS, 1 - EPS)
    rate = float(y.mean())
    mean_p = float(p.mean())
    out.update(
        roc_auc=float(roc_auc_score(y, p)) if 0 < y.sum() < n else None,
        log_loss=float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))),
        accuracy=float(np.mean((p >= 0.5) == (y == 1))),
        positive_rate=rate, mean_prediction=mean_p, calibration_gap=mean_p - rate)
    return out


def regression_metrics(y: Iterable, yhat: Iterable) -> dict[str, Any]:
    """Regression metrics of outcomes ``y`` against predictions ``yhat``."""
    y = np.asarray(y, dtype="float64")
    yhat = np.asarray(yhat, dtype="float64")
    n = int(len(y))
    if n == 0:
        return {"rows": 0, "mae": None, "rmse": None, "mean_label": None,
                "mean_prediction": None}
    err = yhat - y
    return {"rows": n, "mae": float(np.mean(np.abs(err))),
            "rmse": float(math.sqrt(np.mean(err ** 2))), "mean_label": float(y.mean()),
            "mean_prediction": float(yhat.mean())}


def slice_values(col: pd.Series) -> np.ndarray:
    """A slice column as strings, missing values as ``<missing>``."""
    return np.where(col.isna().to_numpy(), MISSING_SLICE, col.astype(str).to_numpy())


def evaluate(df: pd.DataFrame, scores: Iterable, kind: str,
             slices: Iterable[str] = ()) -> dict[str, Any]:
    """``{"overall": {...}, "slices": {feature: {value: {...}}}, "unscored": n}``.

    ``scores`` align with ``df``'s rows; NaN scores are left out. ``df`` is not modified.
    """
    fn = binary_metrics if kind == "binary" else regression_metrics
    s = np.asarray(scores, dtype="float64")
    if len(s) != len(df):
        raise ValueError(f"{len(s)} scores for {len(df)} rows")
    ok = ~np.isnan(s)
    y = df["label"].to_numpy(dtype="float64")
    out: dict[str, Any] = {"overall": fn(y[ok], s[ok]), "slices": {},
                           "unscored": int((~ok).sum())}
    for feature in slices:
        values = slice_values(df[feature])
        per: dict[str, Any] = {}
        for v in sorted(set(values[ok].tolist())):
            m = ok & (values == v)
            per[v] = fn(y[m], s[m])
        out["slices"][feature] = per
    return out
