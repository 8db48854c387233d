"""Bring your own model: an estimator from a factory path, on the raw features.

``model.estimator: "package.module:factory"`` names a callable that returns a fresh
scikit-learn-compatible estimator (a ``Pipeline`` too; a River model through
``river.compat.convert_river_to_sklearn``). It is called with ``seed=model.seed`` when it
takes a ``seed`` parameter, with no arguments otherwise.

What the estimator sees is what a model server sees: a pandas DataFrame with one column
per model feature (the kept features minus ``model.exclude``, in config order), numbers
(int and float) as float64, bools as 0.0/1.0, strings as Python str, and every missing
value as NaN. dlabel's own feature pipeline is not applied, so the trained estimator can
be served as it is on the request's features; its encoding is the estimator's business
(put it in the Pipeline). The label is 0/1 (int) for binary, the value (float) for
regression; scores are ``predict_proba`` of class 1 (or a logistic of
``decision_function``) and ``predict`` respectively.

- ``training: incremental``: ``partial_fit`` one window at a time on a copy of the
  champion (``classes=[0, 1]`` for classifiers). A Pipeline learns step by step: each
  step with ``partial_fit`` learns, then transforms for the next; stateless steps only
  transform.
- ``training: refit``: a fresh estimator ``fit`` on the last ``model.refit_windows``
  windows (see jobs.training).
"""
from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import pandas as pd

from schemas.config import PipelineConfig
from schemas.config_estimator import build_estimator, load_factory, needs_no_fit
from jobs.metrics import row_weights


class CustomModel:
    """A user's estimator and the feature columns it reads, with ``Model``'s interface."""

    def __init__(self, factory: str, kind: str, columns: list[tuple[str, str]],
                 seed: int = 0) -> None:
        self.estimator_name = factory
        self.kind = kind
        self.seed = seed
        self.columns = [(str(n), str(t)) for n, t in columns]
        self.estimator = build_estimator(load_factory(factory), seed)
        self.rows_seen = 0

    @classmethod
    def for_config(cls, config: PipelineConfig) -> "CustomModel":
        """A new, untrained model for ``config``: its kept features minus ``model.exclude``."""
        cols = [(f.name, f.type) for f in config.kept_features
                if f.name not in config.model.exclude]
        return cls(config.model.estimator, config.label.kind, cols, config.model.seed)

    @property
    def trained(self) -> bool:
        return self.rows_seen > 0

    def frame(self, df: pd.DataFrame) -> pd.DataFrame:
        """The estimator's input: the model's feature columns of ``df`` (not modified),
        numbers and bools as float64, strings as str, missing values as NaN."""
        missing = [n for n, _ in self.columns if n not in df.columns]
        if missing:
            raise ValueError(f"feature column(s) {missing} missing from the data; the model "
                             f"needs {[n for n, _ in self.columns]}")
        out = {}
        for name, ftype in self.columns:
            col = df[name]
            if ftype == "str":
                out[name] = col.astype("object").where(col.notna(), np.nan)
            else:
                out[name] = pd.to_numeric(col.astype("object"), errors="coerce").astype("float64")
        return pd.DataFrame(out, index=df.index)

    def _labels(self, df: pd.DataFrame) -> np.ndarray:
        y = df["label"].to_numpy()
        return y.astype("int64") if self.kind == "binary" else y.astype("float64")

    def partial_fit(self, df: pd.DataFrame, scale: np.ndarray | None = None) -> "CustomModel":
        """Learn from the rows of ``df`` in their order (incremental training). Rows weigh
        ``sample_weight`` times ``scale`` when the final estimator's ``partial_fit``
        takes a ``sample_weight``."""
        if not len(df):
            return self
        x, y = self.frame(df), self._labels(df)
        w = _weights(df, scale)
        steps = getattr(self.estimator, "steps", None)
        final = self.estimator
        if isinstance(steps, list) and steps:
            for _, step in steps[:-1]:
                if step is None or step == "passthrough":
                    continue
                if not needs_no_fit(step):
                    step.partial_fit(x, y)
                x = step.transform(x)
            final = steps[-1][1]
        kwargs = {}
        params = inspect.signature(final.partial_fit).parameters
        if self.kind == "binary" and "classes" in params:
            kwargs["classes"] = np.array([0, 1])
        if w is not None and "sample_weight" in params:
            kwargs["sample_weight"] = w
        final.partial_fit(x, y, **kwargs)
        self.rows_seen += len(df)
        return self

    def fit(self, df: pd.DataFrame, scale: np.ndarray | None = None) -> "CustomModel":
        """Fit a fresh estimator on all of ``df`` (refit training), rows weighted as in
        ``partial_fit`` when the estimator (a Pipeline: its final step) takes weights."""
        self.estimator = build_estimator(load_factory(self.estimator_name), self.seed)
        self.rows_seen = 0
        if len(df):
            w = _weights(df, scale)
            self.estimator.fit(self.frame(df), self._labels(df),
                               **(_fit_weight(self.estimator, w) if w is not None else {}))
            self.rows_seen = len(df)
        return self

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Scores of ``df``'s rows: P(label = 1) for binary, the value for regression.

        An untrained model predicts 0.5 (binary) or 0.0 (regression).
        """
        if not self.trained:
            return np.full(len(df), 0.5 if self.kind == "binary" else 0.0)
        if not len(df):
            return np.zeros(0)
        x = self.frame(df)
        est = self.estimator
        if self.kind == "regression":
            return np.asarray(est.predict(x), dtype="float64").ravel()
        classes = list(getattr(est, "classes_", [0, 1]))
        if hasattr(est, "predict_proba"):
            if 1 not in classes:  # trained on negatives only
                return np.zeros(len(df))
            return np.asarray(est.predict_proba(x), dtype="float64")[:, classes.index(1)]
        margin = np.clip(np.asarray(est.decision_function(x), dtype="float64"), -35, 35)
        return 1.0 / (1.0 + np.exp(-margin))

    def copy(self) -> "CustomModel":
        """An independent deep copy (the challenger starts as a copy of the champion)."""
        return copy.deepcopy(self)

    def to_state(self) -> dict[str, Any]:
        """Plain data and the estimator: what the registry saves with skops."""
        return {"format": 1, "type": "custom", "estimator_name": self.estimator_name,
                "kind": self.kind, "seed": self.seed, "rows_seen": self.rows_seen,
                "columns": [list(c) for c in self.columns], "estimator": self.estimator}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CustomModel":
        """Rebuild a model from ``to_state`` output (the factory is not called)."""
        if state.get("format") != 1 or state.get("type") != "custom":
            raise ValueError(f"not a custom model state (format {state.get('format')!r}, "
                             f"type {state.get('type')!r})")
        self = cls.__new__(cls)
        self.estimator_name = str(state["estimator_name"])
        self.kind = str(state["kind"])
        self.seed = int(state["seed"])
        self.rows_seen = int(state["rows_seen"])
        self.columns = [(str(n), str(t)) for n, t in state["columns"]]
        self.estimator = state["estimator"]
        return self


def _weights(df: pd.DataFrame, scale: np.ndarray | None) -> np.ndarray | None:
    """Row weights (``sample_weight`` x ``scale``), None when every one is 1."""
    w = row_weights(df) * (1.0 if scale is None else np.asarray(scale, dtype="float64"))
    return None if np.all(w == 1.0) else w


def _fit_weight(estimator: Any, w: np.ndarray) -> dict[str, Any]:
    """``fit``'s keyword for row weights: ``sample_weight``, or ``<last step>__sample_weight``
    of a Pipeline; empty when the estimator takes none."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list) and steps:
        name, final = steps[-1]
        if final is not None and final != "passthrough" and \
                "sample_weight" in inspect.signature(final.fit).parameters:
            return {f"{name}__sample_weight": w}
        return {}
    if "sample_weight" in inspect.signature(estimator.fit).parameters:
        return {"sample_weight": w}
    return {}
