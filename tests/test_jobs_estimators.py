"""The contract every supported estimator keeps (river's checks/common.py, for dlabel)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import skops.io as sio

from schemas.config import ESTIMATORS
from jobs.estimators import SUPPORTED, Model
from streams.dev.synthetic_windows import ctr_window
from tests.jobs_support import H, START, airport_window


def _data(kind: str, i: int, rows: int = 600):
    return ctr_window(START + i * H, H, rows, seed=3) if kind == "binary" \
        else airport_window(START + i * H, rows, seed=3)


def _model(make_config, name: str, seed: int = 0) -> Model:
    kind = ESTIMATORS[name]
    cfg = make_config("ctr" if kind == "binary" else "airport")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, estimator=name,
                                                             seed=seed))
    return Model.for_config(cfg)


def test_every_config_estimator_is_supported():
    assert set(SUPPORTED) == set(ESTIMATORS)
    assert {"sgd_classifier", "sgd_regressor", "passive_aggressive_classifier",
            "passive_aggressive_regressor", "multinomial_nb"} <= set(SUPPORTED)


@pytest.fixture(params=SUPPORTED)
def name(request) -> str:
    return request.param


def test_input_not_mutated(make_config, name):
    m = _model(make_config, name)
    df = _data(m.kind, 0)
    before = df.copy(deep=True)
    m.partial_fit(df)
    m.predict(df)
    assert df.equals(before) and list(df.columns) == list(before.columns)


def test_learns_something(make_config, name):
    m = _model(make_config, name)
    test = _data(m.kind, 9, rows=4000)
    for i in range(8):
        m.partial_fit(_data(m.kind, i, rows=2000))
    p = m.predict(test)
    assert p.shape == (len(test),) and np.isfinite(p).all()
    if m.kind == "binary":
        from sklearn.metrics import roc_auc_score
        assert ((0 <= p) & (p <= 1)).all()
        # hinge-loss passive-aggressive ranks worse on rare positives, but still ranks
        assert roc_auc_score(test["label"], p) > (0.52 if "passive" in name else 0.55)
    else:
        mae = np.abs(p - test["label"]).mean()
        assert mae < np.abs(test["label"] - test["label"].mean()).mean()


def test_save_load_round_trip_identical(make_config, name):
    m = _model(make_config, name)
    m.partial_fit(_data(m.kind, 0))
    blob = sio.dumps(m.to_state())
    assert sio.get_untrusted_types(data=blob) == []  # plain sklearn/numpy: nothing to trust
    back = Model.from_state(sio.loads(blob, trusted=[]))
    test = _data(m.kind, 1)
    np.testing.assert_array_equal(m.predict(test), back.predict(test))
    # and both keep learning identically
    m.partial_fit(test), back.partial_fit(test)
    np.testing.assert_array_equal(m.predict(_data(m.kind, 2)), back.predict(_data(m.kind, 2)))


def test_seeded_runs_identical(make_config, name):
    a, b = _model(make_config, name, seed=7), _model(make_config, name, seed=7)
    for i in range(2):
        a.partial_fit(_data(a.kind, i))
        b.partial_fit(_data(b.kind, i))
    test = _data(a.kind, 3)
    np.testing.assert_array_equal(a.predict(test), b.predict(test))


def test_feature_column_order_irrelevant(make_config, name):
    a, b = _model(make_config, name), _model(make_config, name)
    df = _data(a.kind, 0)
    shuffled = df[list(reversed(df.columns))]
    a.partial_fit(df)
    b.partial_fit(shuffled)
    test = _data(a.kind, 1)
    np.testing.assert_array_equal(a.predict(test), b.predict(test[list(reversed(test.columns))]))


def test_missing_values_and_unseen_categories(make_config, name):
    m = _model(make_config, name)
    df = _data(m.kind, 0)
    m.partial_fit(df)
    odd = df.head(20).copy()
    for c in m.pipeline.columns:
        odd.loc[odd.index[:10], c] = None
    if "category" in odd:
        odd["category"] = "never_seen_before"
    p = m.predict(odd)
    assert np.isfinite(p).all()


def test_copy_is_independent(make_config, name):
    m = _model(make_config, name)
    m.partial_fit(_data(m.kind, 0))
    test = _data(m.kind, 2)
    before = m.predict(test)
    c = m.copy()
    c.partial_fit(_data(m.kind, 1))
    np.testing.assert_array_equal(m.predict(test), before)
    assert not np.array_equal(c.predict(test), before)


def test_nb_sees_only_non_negative_inputs(make_config):
    m = _model(make_config, "multinomial_nb")
    df = _data("binary", 0)
    m.partial_fit(df)
    assert m.pipeline.transform(df).min() >= 0


def test_categorical_ints_are_hashed_tokens(make_config):
    cfg = make_config("ctr")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, exclude=("user_email",),
                                                             categorical=("hour",)))
    m = Model.for_config(cfg)
    assert "hour" in m.pipeline.categorical and "hour" not in m.pipeline.numeric
    df = _data("binary", 0)
    m.partial_fit(df)
    x = m.pipeline.transform(df.head(1))
    as_float = df.head(1).astype({"hour": "float64"})  # 11 and 11.0 are one category
    assert (m.pipeline.transform(as_float) != x).nnz == 0
