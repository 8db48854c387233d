"""Drift of each feature and of the label rate between two windows.

As TensorFlow Data Validation does: numeric features are compared with the population
stability index over quantile bins of the reference window (missing values are a bin
of their own), categorical ones (str, bool) with the L-infinity distance, the largest
absolute change of one value's share. The label rate (binary) or mean label
(regression) is compared as an absolute change, overall and per slice value with
enough rows in both windows. A feature is flagged when its measure exceeds its
threshold; a label rate when its change exceeds the threshold and is also unlikely to
be sampling noise (|z| > 3 for the difference of two means), because slices are small.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from schemas.config import DriftSpec, FeatureSpec
from jobs.metrics import slice_values

BINS = 10
_EPS = 1e-4


def psi(reference: Iterable, current: Iterable, bins: int = BINS) -> float:
    """Population stability index of ``current`` against ``reference`` (NaN = missing).

    Bin edges are the reference's deciles (or, for at most ``bins`` distinct reference
    values, one bin per value seen in either sample); sum over bins of (c - r) * ln(c / r) with
    shares smoothed by 1e-4. 0 for identical samples; above 0.2 is usually a shift.
    """
    ref = np.asarray(reference, dtype="float64")
    cur = np.asarray(current, dtype="float64")
    if len(ref) == 0 or len(cur) == 0:
        return 0.0
    finite = ref[~np.isnan(ref)]
    distinct = np.unique(finite)
    if len(distinct) <= bins:
        # few distinct values (an hour, a count): every value is its own bin, so a value
        # the reference never had shows up instead of hiding in the top bin
        both = np.union1d(distinct, np.unique(cur[~np.isnan(cur)]))
        edges = (both[:-1] + both[1:]) / 2
    else:
        edges = np.unique(np.quantile(finite, np.linspace(0, 1, bins + 1)[1:-1]))

    def shares(x: np.ndarray) -> np.ndarray:
        nan = np.isnan(x)
        counts = np.bincount(np.searchsorted(edges, x[~nan], side="right"),
                             minlength=len(edges) + 1).astype("float64")
        counts = np.append(counts, nan.sum())
        return counts / len(x)

    r, c = shares(ref) + _EPS, shares(cur) + _EPS
    return float(np.sum((c - r) * np.log(c / r)))


def linf(reference: Iterable, current: Iterable) -> float:
    """L-infinity distance of two categorical samples' value shares (None = missing)."""
    ref = pd.Series(list(reference), dtype="object").fillna("<missing>").astype(str)
    cur = pd.Series(list(current), dtype="object").fillna("<missing>").astype(str)
    if len(ref) == 0 or len(cur) == 0:
        return 0.0
    a = ref.value_counts(normalize=True)
    b = cur.value_counts(normalize=True)
    both = a.index.union(b.index)
    return float((a.reindex(both, fill_value=0.0) - b.reindex(both, fill_value=0.0))
                 .abs().max())


def window_drift(reference: pd.DataFrame, current: pd.DataFrame,
                 features: Iterable[FeatureSpec], slices: Iterable[str], kind: str,
                 spec: DriftSpec) -> dict[str, Any]:
    """Drift of every feature and of the label between two windows' rows.

    ``{"features": {name: {"measure": "psi"|"linf", "value", "threshold", "flagged"}},
    "label": {"reference", "current", "change", "threshold", "flagged", "slices": {...}},
    "flagged": [names]}``; ``label.slices[feature][value]`` as for the whole label.
    """
    feats: dict[str, Any] = {}
    for f in features:
        if f.name in spec.exclude:
            continue
        if f.type in ("int", "float"):
            value, measure, limit = psi(_num(reference[f.name]), _num(current[f.name])), \
                "psi", spec.psi
        else:
            value, measure, limit = linf(reference[f.name], current[f.name]), "linf", spec.linf
        feats[f.name] = {"measure": measure, "value": value, "threshold": limit,
                         "flagged": bool(value > limit)}
    label = _label_change(reference["label"], current["label"], spec)
    label["slices"] = {}
    for s in slices:
        rv, cv = slice_values(reference[s]), slice_values(current[s])
        per = {}
        for v in sorted(set(rv.tolist()) & set(cv.tolist())):
            rl, cl = reference["label"][rv == v], current["label"][cv == v]
            if len(rl) >= spec.min_rows and len(cl) >= spec.min_rows:
                per[v] = _label_change(rl, cl, spec)
        label["slices"][s] = per
    flagged = [n for n, d in feats.items() if d["flagged"]]
    if label["flagged"]:
        flagged.append("label")
    flagged += [f"label[{s}={v}]" for s, per in label["slices"].items()
                for v, d in per.items() if d["flagged"]]
    return {"features": feats, "label": label, "flagged": flagged,
            "reference_rows": len(reference), "current_rows": len(current)}


def _num(col: pd.Series) -> np.ndarray:
    return pd.to_numeric(col, errors="coerce").astype("float64").to_numpy(na_value=np.nan)


Z_LIMIT = 3.0


def _label_change(ref: pd.Series, cur: pd.Series, spec: DriftSpec) -> dict[str, Any]:
    a, b = ref.astype("float64").to_numpy(), cur.astype("float64").to_numpy()
    r = float(a.mean()) if len(a) else 0.0
    c = float(b.mean()) if len(b) else 0.0
    var = (a.var() / len(a) if len(a) else 0.0) + (b.var() / len(b) if len(b) else 0.0)
    z = (c - r) / np.sqrt(var) if var > 0 else (0.0 if c == r else float("inf"))
    return {"reference": r, "current": c, "change": c - r, "threshold": spec.label_rate,
            "z": min(abs(float(z)), 1e6),
            "flagged": bool(abs(c - r) > spec.label_rate and abs(z) > Z_LIMIT),
            "reference_rows": int(len(a)), "current_rows": int(len(b))}
