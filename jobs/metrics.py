"""Evaluation metrics, overall and per slice value, with row counts.

Binary: ROC AUC, log loss, accuracy (threshold 0.5), positive rate, mean prediction and
calibration gap (mean prediction - positive rate). Regression: MAE, RMSE, mean label,
mean prediction. A metric that is undefined (ROC AUC of a single-class slice, anything
of an empty slice) is None, never an exception. Rows whose score is missing (a null
logged ``prediction``) are left out and counted as ``unscored``.

Rows are weighted by their ``sample_weight`` column (``1 / r`` for a negative kept by
negative sampling at rate ``r``; a missing column or value is 1), so that every metric
is the one of the unsampled traffic: ``rows`` counts the rows stored, ``weight`` (when
not every weight is 1) the requests they stand for.
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


def row_weights(df: pd.DataFrame) -> np.ndarray:
    """Each row's ``sample_weight`` (1 where the column or the value is missing: windows
    written before negative sampling existed)."""
    if "sample_weight" not in df.columns:
        return np.ones(len(df))
    w = pd.to_numeric(df["sample_weight"], errors="coerce").astype("float64")
    return w.fillna(1.0).to_numpy()


def _weights(w: Iterable | None, n: int) -> np.ndarray:
    return np.ones(n) if w is None else np.asarray(w, dtype="float64")


def _with_weight(out: dict[str, Any], w: np.ndarray) -> dict[str, Any]:
    """``out`` plus ``weight`` (the requests the rows stand for) when a weight is not 1."""
    if len(w) and not np.all(w == 1.0):
        out["weight"] = float(w.sum())
    return out


def binary_metrics(y: Iterable, p: Iterable, w: Iterable | None = None) -> dict[str, Any]:
    """Binary metrics of labels ``y`` (0/1) against probabilities ``p``, rows weighted
    by ``w`` (default 1 each)."""
    y = np.asarray(y, dtype="float64")
    p = np.asarray(p, dtype="float64")
    n = int(len(y))
    w = _weights(w, n)
    out: dict[str, Any] = {"rows": n, "positives": int(y.sum()) if n else 0}
    if n == 0:
        return {**out, "roc_auc": None, "log_loss": None, "accuracy": None,
                "positive_rate": None, "mean_prediction": None, "calibration_gap": None}
    pc = np.clip(p, EPS, 1 - EPS)
    rate = float(np.average(y, weights=w))
    mean_p = float(np.average(p, weights=w))
    out.update(
        roc_auc=float(roc_auc_score(y, p, sample_weight=w)) if 0 < y.sum() < n else None,
        log_loss=float(-np.average(y * np.log(pc) + (1 - y) * np.log(1 - pc), weights=w)),
        accuracy=float(np.average((p >= 0.5) == (y == 1), weights=w)),
        positive_rate=rate, mean_prediction=mean_p, calibration_gap=mean_p - rate)
    return _with_weight(out, w)


def regression_metrics(y: Iterable, yhat: Iterable, w: Iterable | None = None) -> dict[str, Any]:
    """Regression metrics of outcomes ``y`` against predictions ``yhat``, rows weighted
    by ``w`` (default 1 each)."""
    y = np.asarray(y, dtype="float64")
    yhat = np.asarray(yhat, dtype="float64")
    n = int(len(y))
    if n == 0:
        return {"rows": 0, "mae": None, "rmse": None, "mean_label": None,
                "mean_prediction": None}
    w = _weights(w, n)
    err = yhat - y
    return _with_weight({"rows": n, "mae": float(np.average(np.abs(err), weights=w)),
                         "rmse": float(math.sqrt(np.average(err ** 2, weights=w))),
                         "mean_label": float(np.average(y, weights=w)),
                         "mean_prediction": float(np.average(yhat, weights=w))}, w)


def slice_values(col: pd.Series) -> np.ndarray:
    """A slice column as strings, missing values as ``<missing>``."""
    return np.where(col.isna().to_numpy(), MISSING_SLICE, col.astype(str).to_numpy())


def evaluate(df: pd.DataFrame, scores: Iterable, kind: str,
             slices: Iterable[str] = ()) -> dict[str, Any]:
    """``{"overall": {...}, "slices": {feature: {value: {...}}}, "unscored": n}``.

    ``scores`` align with ``df``'s rows; NaN scores are left out; rows are weighted by
    ``sample_weight`` (``row_weights``). ``df`` is not modified.
    """
    fn = binary_metrics if kind == "binary" else regression_metrics
    s = np.asarray(scores, dtype="float64")
    if len(s) != len(df):
        raise ValueError(f"{len(s)} scores for {len(df)} rows")
    ok = ~np.isnan(s)
    y = df["label"].to_numpy(dtype="float64")
    w = row_weights(df)
    out: dict[str, Any] = {"overall": fn(y[ok], s[ok], w[ok]), "slices": {},
                           "unscored": int((~ok).sum())}
    for feature in slices:
        values = slice_values(df[feature])
        per: dict[str, Any] = {}
        for v in sorted(set(values[ok].tolist())):
            m = ok & (values == v)
            per[v] = fn(y[m], s[m], w[m])
        out["slices"][feature] = per
    return out
