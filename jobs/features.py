"""An incremental feature pipeline: labeled-example columns -> a sparse design matrix.

Learns only through ``partial_fit`` (one window at a time), never needs all the data:

- numeric features (int, float) are scaled with running mean and variance
  (``StandardScaler.partial_fit``, which ignores missing values) and clipped to
  [-``CLIP``, ``CLIP``]; a missing value becomes the mean (0) plus a missing indicator;
  a value outside the range seen in training is clipped to that range first (a linear
  model must not extrapolate far beyond what it saw);
- bool features become 0/1 with a missing indicator;
- str features (hashed PII included), and int/bool features named in ``categorical``
  (an hour of day is a category, not a quantity), are hashed as ``name=value`` tokens into
  ``HASH_BUCKETS`` columns (``FeatureHasher``, a fixed murmur3 seed), so categories
  never seen before need no refit; a missing value is the token ``name=<missing>``.

Columns are selected by name, in sorted name order, so the order of the input columns
(and of the features in the config) does not matter. Deterministic: the same
partial_fit calls give the same transform. With ``non_negative`` (multinomial naive
Bayes needs counts) scaled numbers go through a logistic squash into (0, 1) and hashed
columns never take the negative sign.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction import FeatureHasher
from sklearn.preprocessing import StandardScaler

from schemas.config import FeatureSpec

HASH_BUCKETS = 2 ** 12
CLIP = 3.0
MISSING = "<missing>"


class FeaturePipeline:
    """Scale numbers, indicate missing values, hash categories; learns by ``partial_fit``."""

    def __init__(self, features: Iterable[FeatureSpec], non_negative: bool = False,
                 hash_buckets: int = HASH_BUCKETS, categorical: Iterable[str] = ()) -> None:
        feats = sorted(features, key=lambda f: f.name)
        cats = set(categorical)
        self.numeric = [f.name for f in feats if f.type in ("int", "float") and f.name not in cats]
        self.boolean = [f.name for f in feats if f.type == "bool" and f.name not in cats]
        self.categorical = [f.name for f in feats if f.type == "str" or f.name in cats]
        self.non_negative = non_negative
        self.hash_buckets = hash_buckets
        self.scaler = StandardScaler()
        self.low = np.full(len(self.numeric), np.nan)
        self.high = np.full(len(self.numeric), np.nan)
        self.fitted = False

    @property
    def columns(self) -> list[str]:
        """The input columns this pipeline reads."""
        return sorted(self.numeric + self.boolean + self.categorical)

    def _check(self, df: pd.DataFrame) -> None:
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ValueError(f"feature column(s) {missing} missing from the data; the model "
                             f"needs {self.columns}")

    def _numbers(self, df: pd.DataFrame) -> np.ndarray:
        if not self.numeric:
            return np.zeros((len(df), 0))
        return np.column_stack([pd.to_numeric(df[c], errors="coerce").astype("float64")
                                .to_numpy(na_value=np.nan) for c in self.numeric])

    def partial_fit(self, df: pd.DataFrame) -> "FeaturePipeline":
        """Update the running scaling statistics with ``df`` (not modified)."""
        self._check(df)
        x = self._numbers(df)
        if self.numeric and len(df):
            update_scaler(self.scaler, x)
            seen = ~np.isnan(x).all(axis=0)
            self.low[seen] = np.fmin(self.low[seen], np.nanmin(x[:, seen], axis=0))
            self.high[seen] = np.fmax(self.high[seen], np.nanmax(x[:, seen], axis=0))
        self.fitted = True
        return self

    def transform(self, df: pd.DataFrame) -> sp.csr_matrix:
        """The design matrix of ``df`` (not modified): numbers, indicators, hashed tokens."""
        self._check(df)
        n = len(df)
        blocks = []
        if self.numeric:
            x = self._numbers(df)
            missing = np.isnan(x)
            x = np.clip(x, np.nan_to_num(self.low, nan=-np.inf),
                        np.nan_to_num(self.high, nan=np.inf))
            if hasattr(self.scaler, "mean_"):
                scaled = (x - self.scaler.mean_) / np.where(self.scaler.scale_ > 0,
                                                            self.scaler.scale_, 1.0)
                scaled = np.where(np.isnan(self.scaler.mean_), 0.0, scaled)
            else:
                scaled = np.zeros_like(x)
            scaled = np.clip(np.nan_to_num(scaled, nan=0.0), -CLIP, CLIP)
            if self.non_negative:
                scaled = 1.0 / (1.0 + np.exp(-scaled))
                scaled[missing] = 0.0
            blocks += [sp.csr_matrix(scaled), sp.csr_matrix(missing.astype("float64"))]
        for c in self.boolean:
            col = df[c]
            missing = col.isna().to_numpy()
            values = np.where(missing, 0.0, col.fillna(False).astype(bool).to_numpy(dtype=float))
            blocks.append(sp.csr_matrix(np.column_stack([values, missing.astype(float)])))
        if self.categorical:
            tokens = [_tokens(c, df[c]) for c in self.categorical]
            rows = [list(t) for t in zip(*tokens)] if n else []
            hasher = FeatureHasher(n_features=self.hash_buckets, input_type="string",
                                   alternate_sign=not self.non_negative)
            blocks.append(hasher.transform(rows) if n else
                          sp.csr_matrix((0, self.hash_buckets)))
        if not blocks:
            return sp.csr_matrix((n, 0))
        return sp.hstack(blocks, format="csr", dtype="float64")

    def fresh(self) -> "FeaturePipeline":
        """An untrained pipeline that reads the same columns the same way."""
        return FeaturePipeline.from_state({
            **self.to_state(), "scaler": StandardScaler(), "fitted": False,
            "low": np.full(len(self.numeric), np.nan), "high": np.full(len(self.numeric), np.nan)})

    def to_state(self) -> dict[str, Any]:
        """Plain data + sklearn objects only (what the registry saves with skops)."""
        return {"numeric": list(self.numeric), "boolean": list(self.boolean),
                "categorical": list(self.categorical), "non_negative": self.non_negative,
                "hash_buckets": self.hash_buckets, "scaler": self.scaler,
                "low": self.low.copy(), "high": self.high.copy(),
                "fitted": self.fitted}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "FeaturePipeline":
        """Rebuild a pipeline from ``to_state`` output."""
        self = cls((), non_negative=bool(state["non_negative"]),
                   hash_buckets=int(state["hash_buckets"]))
        self.numeric = list(state["numeric"])
        self.boolean = list(state["boolean"])
        self.categorical = list(state["categorical"])
        self.scaler = state["scaler"]
        self.low = np.asarray(state["low"], dtype="float64")
        self.high = np.asarray(state["high"], dtype="float64")
        self.fitted = bool(state["fitted"])
        return self


def update_scaler(scaler: StandardScaler, x: np.ndarray) -> None:
    """``scaler.partial_fit(x)`` with missing values, computed here (Chan's merge of
    counts, means and variances per column): a column with no value in ``x`` keeps its
    statistics. sklearn's own ``partial_fit`` (1.9) turns such a column's variance, or a
    column's mean when its first batch had no value, into NaN for good, and a small
    in-window batch where every price is missing must not disable the price feature."""
    n_b = (~np.isnan(x)).sum(axis=0).astype("float64")
    k = x.shape[1]
    if hasattr(scaler, "mean_"):
        n_a = np.broadcast_to(np.asarray(scaler.n_samples_seen_, dtype="float64"), (k,)).copy()
        mean_a, var_a = scaler.mean_.astype("float64"), scaler.var_.astype("float64")
        broken = np.isnan(mean_a) | np.isnan(var_a)  # left so by sklearn's partial_fit
        n_a[broken], mean_a[broken], var_a[broken] = 0.0, 0.0, 0.0
    else:
        n_a, mean_a, var_a = np.zeros(k), np.zeros(k), np.zeros(k)
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.nansum(x, axis=0)
        mean_b = np.where(n_b > 0, sums / n_b, 0.0)
        var_b = np.where(n_b > 0, np.nansum((x - mean_b) ** 2, axis=0) / n_b, 0.0)
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = np.where(n > 0, mean_a + delta * n_b / n, np.nan)
        m2 = var_a * n_a + var_b * n_b + delta ** 2 * n_a * n_b / n
        var = np.where(n > 0, m2 / n, np.nan)
    scaler.mean_, scaler.var_ = mean, var
    scaler.scale_ = np.where(var > 0, np.sqrt(np.where(var > 0, var, 1.0)), 1.0)
    scaler.n_samples_seen_ = n.astype("int64")
    scaler.n_features_in_ = k


def _tokens(name: str, col: pd.Series) -> list[str]:
    values = col.astype("object").where(col.notna(), None)
    return [f"{name}={MISSING if v is None else _text(v)}" for v in values]


def _text(v: Any) -> str:
    """A value as a token: 19, 19.0 and "19" are the same category."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v)
