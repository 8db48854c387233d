"""Bring-your-own-model factories for the tests (``model.estimator: tests.jobs_byo_factories:...``).

They read the frame dlabel gives a custom estimator (one column per model feature:
float64 numbers, str categories, NaN for missing) and do their own encoding, as a team's
model would.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OrdinalEncoder, StandardScaler

BUCKETS = 16


def hgb_classifier(seed: int = 0):
    """Gradient boosting (no partial_fit: refit only) for the ctr example's features:
    ``category`` ordinal-encoded first (unknown and missing as -1, which the booster
    treats as missing), then the numbers as they are."""
    encode = ColumnTransformer(
        [("str", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                encoded_missing_value=-1), ["category"])],
        remainder="passthrough")
    return make_pipeline(encode, HistGradientBoostingClassifier(
        max_iter=60, categorical_features=[0], random_state=seed))


def hgb_regressor(seed: int = 0):
    """Gradient boosting for the airport example: ``checkpoint`` is the category."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    encode = ColumnTransformer(
        [("str", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                encoded_missing_value=-1), ["checkpoint"])],
        remainder="passthrough")
    return make_pipeline(encode, HistGradientBoostingRegressor(
        max_iter=60, categorical_features=[0], random_state=seed))


def numbers(frame: pd.DataFrame) -> np.ndarray:
    """A stateless encoding: each string column one-hot into BUCKETS crc32 buckets, each
    number column its value (missing: 0) and a missing indicator."""
    cols = []
    for name in frame.columns:
        col = frame[name]
        if col.dtype == object:
            hot = np.zeros((len(frame), BUCKETS))
            idx = [zlib.crc32(str(v).encode()) % BUCKETS for v in col]
            hot[np.arange(len(frame)), idx] = 1.0
            cols.append(hot)
        else:
            x = col.to_numpy(dtype="float64")
            cols.append(np.column_stack([np.nan_to_num(x, nan=0.0), np.isnan(x)]))
    return np.hstack(cols) if cols else np.zeros((len(frame), 0))


def river_logistic(seed: int = 0):
    """River's online logistic regression through river.compat, after the stateless
    encoding and sklearn's incremental scaler: every step learns with partial_fit."""
    from river import compat, linear_model, optim
    model = linear_model.LogisticRegression(optimizer=optim.SGD(0.02))
    return make_pipeline(FunctionTransformer(numbers), StandardScaler(),
                         compat.convert_river_to_sklearn(model))


def no_partial_fit():
    """A classifier without partial_fit (for the config error)."""
    return HistGradientBoostingClassifier()


class OnlyPartialFit:
    """Learns with partial_fit only (no fit): for the refit config error."""

    def partial_fit(self, x, y, classes=None):
        return self

    def predict_proba(self, x):
        return np.full((len(x), 2), 0.5)


def only_partial_fit():
    return OnlyPartialFit()


def needs_missing_package():
    """Imports a package that is not installed, when called."""
    import no_such_package_dlabel  # noqa: F401
    return no_such_package_dlabel


def broken_factory(seed, other):
    """Needs an argument dlabel does not give."""
    raise AssertionError("never called")


def river_scaled(seed: int = 0):
    """River's own scaler in a River pipeline: skops 0.16 saves it but cannot load it back
    (a defaultdict with int keys), so the registry must refuse to store it."""
    from river import compat, linear_model, preprocessing
    return make_pipeline(FunctionTransformer(numbers), compat.River2SKLClassifier(
        preprocessing.StandardScaler() | linear_model.LogisticRegression()))
