"""The estimators retraining supports, and ``Model``: feature pipeline + estimator.

Every estimator learns incrementally with ``partial_fit``:

| name | sklearn | label |
|---|---|---|
| sgd_classifier | SGDClassifier(loss="log_loss", constant step 0.05) | binary |
| passive_aggressive_classifier | SGDClassifier(hinge, learning_rate="pa1") | binary |
| multinomial_nb | MultinomialNB on non-negative features | binary |
| sgd_regressor | SGDRegressor(squared error, constant step 0.01) | regression |
| passive_aggressive_regressor | SGDRegressor(epsilon-insensitive, "pa1") | regression |

(sklearn 1.8 deprecated the PassiveAggressive* classes in favour of exactly these SGD
settings.) Scores: a binary model returns P(label = 1) (``predict_proba``, or a
logistic of the margin for the hinge loss, which has no probabilities); a regression
model returns the predicted value (the target is standardized with running
statistics while learning, which keeps SGD stable on outcomes in the hundreds).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.linear_model import SGDClassifier, SGDRegressor
from sklearn.naive_bayes import MultinomialNB
from sklearn.preprocessing import StandardScaler

from schemas.config import ESTIMATORS, PipelineConfig
from jobs.features import FeaturePipeline
from jobs.metrics import row_weights

_FACTORIES: dict[str, Callable[[int], Any]] = {
    # a constant step keeps learning from every window (drift) and stays calibrated
    "sgd_classifier": lambda seed: SGDClassifier(loss="log_loss", alpha=1e-5,
                                                 learning_rate="constant", eta0=0.05,
                                                 random_state=seed),
    "passive_aggressive_classifier": lambda seed: SGDClassifier(
        loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0, random_state=seed),
    "multinomial_nb": lambda seed: MultinomialNB(alpha=1.0),
    # constant too: a decaying step (invscaling: eta0 / t**0.25) stops following the
    # stream, 19% behind River's online model in bench_prequential.py, 3% with this step
    "sgd_regressor": lambda seed: SGDRegressor(alpha=1e-4, learning_rate="constant", eta0=0.01,
                                               random_state=seed),
    "passive_aggressive_regressor": lambda seed: SGDRegressor(
        loss="epsilon_insensitive", epsilon=0.0, penalty=None, learning_rate="pa1", eta0=1.0,
        random_state=seed),
}
assert set(_FACTORIES) == set(ESTIMATORS), "schemas.config.ESTIMATORS and jobs disagree"
SUPPORTED = tuple(_FACTORIES)


def make_estimator(name: str, seed: int = 0) -> Any:
    """A fresh, seeded sklearn estimator for a supported ``name``."""
    try:
        return _FACTORIES[name](seed)
    except KeyError:
        raise ValueError(f"unknown estimator {name!r}; choose one of {', '.join(SUPPORTED)}") \
            from None


class Model:
    """A feature pipeline and an estimator that learn together, one window at a time."""

    def __init__(self, estimator: str, kind: str, features, seed: int = 0,
                 categorical: tuple[str, ...] = ()) -> None:
        if ESTIMATORS.get(estimator) != kind:
            raise ValueError(f"estimator {estimator!r} does not fit label kind {kind!r}")
        self.estimator_name = estimator
        self.kind = kind
        self.seed = seed
        self.pipeline = FeaturePipeline(features, non_negative=estimator == "multinomial_nb",
                                        categorical=categorical)
        self.estimator = make_estimator(estimator, seed)
        self.target = StandardScaler()
        self.rows_seen = 0

    @classmethod
    def for_config(cls, config: PipelineConfig) -> "Model":
        """A new, untrained model for ``config``: its kept features minus ``model.exclude``,
        with ``model.categorical`` ones hashed as categories."""
        feats = [f for f in config.kept_features if f.name not in config.model.exclude]
        return cls(config.model.estimator, config.label.kind, feats, config.model.seed,
                   config.model.categorical)

    @property
    def trained(self) -> bool:
        return self.rows_seen > 0

    def partial_fit(self, df: pd.DataFrame, scale: np.ndarray | None = None) -> "Model":
        """Learn from the rows of ``df`` in their order (``df`` itself is not modified).

        Each row weighs its ``sample_weight`` (1 when absent) times ``scale`` (recency
        weights of jobs.adapt; default 1).
        """
        if not len(df):
            return self
        w = row_weights(df) * (1.0 if scale is None else np.asarray(scale, dtype="float64"))
        sw = None if np.all(w == 1.0) else w  # unweighted: exactly the old arithmetic
        self.pipeline.partial_fit(df)
        x = self.pipeline.transform(df)
        y = df["label"].to_numpy()
        if self.kind == "binary":
            self.estimator.partial_fit(x, y.astype("int64"), classes=np.array([0, 1]),
                                       sample_weight=sw)
        else:
            yf = y.astype("float64").reshape(-1, 1)
            self.target.partial_fit(yf)
            self.estimator.partial_fit(x, self.target.transform(yf).ravel(), sample_weight=sw)
        self.rows_seen += len(df)
        return self

    def fit(self, df: pd.DataFrame, scale: np.ndarray | None = None) -> "Model":
        """Forget everything, then learn from all of ``df`` in one pass (refit training)."""
        self.pipeline = self.pipeline.fresh()
        self.estimator = make_estimator(self.estimator_name, self.seed)
        self.target = StandardScaler()
        self.rows_seen = 0
        return self.partial_fit(df, scale)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Scores of ``df``'s rows: P(label = 1) for binary, the value for regression.

        An untrained model predicts 0.5 (binary) or 0.0 (regression).
        """
        if not self.trained:
            return np.full(len(df), 0.5 if self.kind == "binary" else 0.0)
        if not len(df):
            return np.zeros(0)
        x = self.pipeline.transform(df)
        if self.kind == "regression":
            z = self.estimator.predict(x).reshape(-1, 1)
            return self.target.inverse_transform(z).ravel()
        if hasattr(self.estimator, "predict_proba") and getattr(
                self.estimator, "loss", "log_loss") != "hinge":
            return self.estimator.predict_proba(x)[:, 1]
        margin = np.clip(self.estimator.decision_function(x), -35, 35)
        return 1.0 / (1.0 + np.exp(-margin))

    def copy(self) -> "Model":
        """An independent deep copy (the challenger starts as a copy of the champion)."""
        return copy.deepcopy(self)

    def to_state(self) -> dict[str, Any]:
        """Plain data and sklearn objects only: what skops saves without custom types."""
        return {"format": 1, "estimator_name": self.estimator_name, "kind": self.kind,
                "seed": self.seed, "rows_seen": self.rows_seen,
                "pipeline": self.pipeline.to_state(), "estimator": self.estimator,
                "target": self.target}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Model":
        """Rebuild a model from ``to_state`` output."""
        if state.get("format") != 1:
            raise ValueError(f"unknown model state format {state.get('format')!r}")
        self = cls.__new__(cls)
        self.estimator_name = str(state["estimator_name"])
        self.kind = str(state["kind"])
        self.seed = int(state["seed"])
        self.rows_seen = int(state["rows_seen"])
        self.pipeline = FeaturePipeline.from_state(state["pipeline"])
        self.estimator = state["estimator"]
        self.target = state["target"]
        return self
