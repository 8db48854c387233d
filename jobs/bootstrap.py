"""Confidence intervals by paired bootstrap over rows: of each model's metric and of the
gain of one model over another, overall and per slice value.

Why a bootstrap and not DeLong: DeLong's variance is for ROC AUC only, while promotion
may be judged on log loss, accuracy, MAE or RMSE; the bootstrap gives all of them, with
rows weighted by ``sample_weight`` (negative sampling), with the same code for every
slice value. Paired: both models are scored on the same resampled rows, so the
interval of the gain is as narrow as the models' agreement allows (much narrower than
two separate intervals). Resampling is the Poisson bootstrap (each row is drawn a
Poisson(1) number of times), which needs no pass over all rows per replicate and is
the usual choice for large data; ``RESAMPLES`` replicates, seeded, so a rerun gives the
same interval. The interval is the percentile interval at ``confidence`` (two-sided);
at confidence 0 it is the point estimate itself (the rule without evidence). The work
is rows x resamples, so a large evaluation set (more than ``CELLS / RESAMPLES`` rows)
gets fewer resamples (at least ``MIN_RESAMPLES``) and the normal interval around the
point estimate with the bootstrap's standard error, which needs fewer resamples than
percentiles do (its rows make the interval narrow anyway).
"""
from __future__ import annotations

from math import exp, factorial
from statistics import NormalDist
from typing import Any, Iterable

import numpy as np
import pandas as pd

from jobs.metrics import EPS, HIGHER_IS_BETTER, row_weights, slice_values

RESAMPLES = 1000
MIN_RESAMPLES = 200
CELLS = 20_000_000  # rows x resamples per evaluation, at most (above: fewer resamples)
_CHUNK = 2_000_000  # rows x resamples drawn at once (8 MB of float32 per array)


# Poisson(1) by table: the k-th of 2**16 equally likely entries is the Poisson(1)
# quantile of (k + 0.5) / 2**16 (drawing from it costs a table lookup, not a sampler)
_POISSON = np.searchsorted(np.cumsum([exp(-1) / factorial(k) for k in range(20)]),
                           (np.arange(2 ** 16) + 0.5) / 2 ** 16).astype("float32")


def resamples(rows: int) -> int:
    """How many resamples an evaluation of ``rows`` rows gets."""
    return max(MIN_RESAMPLES, min(RESAMPLES, CELLS // max(rows, 1)))


def method(rows: int) -> str:
    """The ``ci_method`` of an evaluation of ``rows`` rows."""
    b = resamples(rows)
    kind = "percentile" if b >= RESAMPLES else "normal, bootstrap standard error"
    return f"paired Poisson bootstrap over rows ({b} resamples, {kind})"


def metric_replicates(metric: str, y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``metric`` of scores ``s`` against labels ``y`` under each row of weights ``w``
    (resamples x rows); NaN where undefined (ROC AUC with one class)."""
    return _replicates(metric, y, s, np.ascontiguousarray(np.asarray(w, dtype="float64").T))


def _replicates(metric: str, y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``metric_replicates`` with weights as rows x resamples (the layout used inside:
    each resample a column, so that sums along rows run over contiguous memory)."""
    tot = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "roc_auc":
            order = np.argsort(s, kind="stable")
            return _sorted_auc(y[order], _starts(s[order]), w[order])
        if metric == "log_loss":
            pc = np.clip(s, EPS, 1 - EPS)
            return -(y * np.log(pc) + (1 - y) * np.log(1 - pc)) @ w / tot
        if metric == "accuracy":
            return ((s >= 0.5) == (y == 1)).astype("float64") @ w / tot
        if metric == "calibration_gap":
            return (s - y) @ w / tot
        if metric == "mae":
            return np.abs(s - y) @ w / tot
        if metric == "rmse":
            return np.sqrt((s - y) ** 2 @ w / tot)
    raise ValueError(f"no bootstrap for metric {metric!r}")


def _starts(sorted_scores: np.ndarray) -> np.ndarray | None:
    """Where each run of equal scores starts in sorted scores (None: no ties)."""
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    return None if len(starts) == len(sorted_scores) else starts


def _sorted_auc(y: np.ndarray, starts: np.ndarray | None, w: np.ndarray) -> np.ndarray:
    """Weighted ROC AUC per column of ``w`` (rows x resamples) for rows already sorted
    by score; ``starts``: the first row of each run of equal scores (None: no ties).
    Ties count one half, as in sklearn."""
    if y.size == 0:
        return np.full(w.shape[1], np.nan)
    pos = w * y[:, None]
    neg = w - pos
    if starts is not None:
        pos = np.add.reduceat(pos, starts, axis=0)
        neg = np.add.reduceat(neg, starts, axis=0)
    below = np.cumsum(neg, axis=0)
    below -= neg
    below += 0.5 * neg
    p, n = pos.sum(axis=0), neg.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.einsum("ij,ij->j", pos, below) / (p * n)


def _interval(reps: np.ndarray, point: float | None, confidence: float) -> list | None:
    if point is None:
        return None
    if confidence <= 0:
        return [point, point]
    b = len(reps)
    reps = reps[~np.isnan(reps)]
    if len(reps) < b // 2:  # mostly undefined (e.g. a handful of positives)
        return None
    a = (1 - confidence) / 2
    if b >= RESAMPLES:
        lo, hi = np.quantile(reps, [a, 1 - a])
        return [float(lo), float(hi)]
    half = float(NormalDist().inv_cdf(1 - a) * np.std(reps, ddof=1))
    return [point - half, point + half]


def paired_intervals(df: pd.DataFrame, scores: dict[str, Iterable], metric: str,
                     slices: Iterable[str], confidence: float, seed: int,
                     points: dict[str, dict[str, Any]],
                     extra: Iterable[str] = ()) -> dict[str, Any]:
    """Intervals of ``metric`` for each model of ``scores`` (name -> scores aligned with
    ``df``) and of the gain of ``"challenger"`` over ``"champion"`` when both are given.

    ``points`` are the models' ``jobs.metrics.evaluate`` results (the point estimates).
    Returns ``{"models": {name: {m: [lo, hi]}}, "gain": [lo, hi] | None,
    "slices": {feature: {value: [lo, hi] | None}}}``: gains in the direction in which
    ``metric`` improves; ``extra`` metrics (e.g. calibration_gap) get model intervals too.
    Rows with a NaN score in any model are left out.
    """
    names = list(scores)
    s = {k: np.asarray(v, dtype="float64") for k, v in scores.items()}
    ok = np.logical_and.reduce([~np.isnan(v) for v in s.values()])
    y = df["label"].to_numpy(dtype="float64")[ok]
    w0 = row_weights(df)[ok]
    s = {k: v[ok] for k, v in s.items()}
    groups: dict[tuple[str, str], np.ndarray] = {}
    for f in slices:
        values = slice_values(df[f])[ok]
        for v in sorted(set(values.tolist())):
            groups[(f, v)] = values == v
    metrics = [metric] + [m for m in extra if m != metric]
    # per (model, group): the group's rows sorted by the model's score (ROC AUC needs
    # the order; computed once, not per resample)
    plans: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    if metric == "roc_auc":
        for name in names:
            order = np.argsort(s[name], kind="stable")
            plans[(name,)] = (order, y[order], _starts(s[name][order]))
            for key, mask in groups.items():
                idx = order[mask[order]]
                plans[(name,) + key] = (idx, y[idx], _starts(s[name][idx]))
    reps: dict[tuple, list] = {}
    rng = np.random.default_rng([seed, 0x5EED])
    n = len(y)
    total = resamples(n)
    chunk = max(1, min(total, _CHUNK // max(n, 1)))
    w0 = w0.astype("float32")
    done = 0
    while done < total and n:
        b = min(chunk, total - done)
        w = _POISSON[rng.integers(0, 2 ** 16, size=(n, b), dtype=np.uint16)]
        w *= w0[:, None]  # rows x resamples
        for name in names:
            for m in metrics:
                if m == "roc_auc":
                    idx, ys, starts = plans[(name,)]
                    r = _sorted_auc(ys, starts, w[idx])
                else:
                    r = _replicates(m, y, s[name], w)
                reps.setdefault((name, m), []).append(r)
            for key, mask in groups.items():
                if metric == "roc_auc":
                    idx, ys, starts = plans[(name,) + key]
                    r = _sorted_auc(ys, starts, w[idx])
                else:
                    r = _replicates(metric, y[mask], s[name][mask], w[mask])
                reps.setdefault((name, metric) + key, []).append(r)
        done += b
    cat = {k: np.concatenate(v) for k, v in reps.items()}
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    out: dict[str, Any] = {"models": {}, "gain": None, "slices": {}}
    for name in names:
        overall = points[name]["overall"]
        out["models"][name] = {m: _interval(cat.get((name, m), np.zeros(0)), overall.get(m),
                                            confidence) for m in metrics}
    if "champion" in s and "challenger" in s and n:
        new, old = points["challenger"], points["champion"]
        point = _gain(new["overall"].get(metric), old["overall"].get(metric), sign)
        out["gain"] = _interval(sign * (cat[("challenger", metric)] - cat[("champion", metric)]),
                                point, confidence)
        for (f, v) in groups:
            a = new["slices"].get(f, {}).get(v, {}).get(metric)
            b = old["slices"].get(f, {}).get(v, {}).get(metric)
            diff = sign * (cat[("challenger", metric, f, v)] - cat[("champion", metric, f, v)])
            out["slices"].setdefault(f, {})[v] = _interval(diff, _gain(a, b, sign), confidence)
    return out


def _gain(new: float | None, old: float | None, sign: float) -> float | None:
    return None if new is None or old is None else sign * (new - old)
