"""Bring your own model: factory paths, refit and incremental training, trusted types."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from schemas.config import config_from_dict
from schemas.errors import ConfigError, RegistryError
from jobs.custom import CustomModel
from jobs.dataset import window_iso
from jobs.estimators import Model
from jobs.job import run_job
from jobs.registry import Registry
from jobs.runner import RunSummary, Runner
from streams.dev.synthetic_windows import ctr_window
from tests.jobs_support import H, START, on_tmp, write_ctr_windows

F = "tests.jobs_byo_factories"
# the booster's trees, and the check ColumnTransformer's passthrough runs (a partial)
HGB_TYPES = ("functools.partial",
             "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
             "sklearn.utils.validation.check_array")
RIVER_TYPES = ("river._river_rust.vectordict.VectorDict",
               "river.compat.river_to_sklearn.River2SKLClassifier",
               "river.linear_model.log_reg.LogisticRegression",
               "river.optim.initializers.Zeros", "river.optim.losses.Log",
               "river.optim.schedulers.Constant", "river.optim.sgd.SGD",
               f"{F}.numbers")


@pytest.fixture
def hgb(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path, estimator=f"{F}:hgb_classifier",
                  training="refit", refit_windows=2, trusted_types=HGB_TYPES, retries=0)


@pytest.fixture
def river(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path, estimator=f"{F}:river_logistic",
                  trusted_types=RIVER_TYPES, retries=0)


def _run(cfg, starts):
    s = RunSummary()
    Runner(cfg, sleep=lambda s: None).run_windows({w: None for w in starts}, s)
    return s


def test_hist_gradient_boosting_refit_through_the_runner(hgb):
    """Refit mode: each job fits a new booster on the last refit_windows windows."""
    starts = write_ctr_windows(hgb, 3)
    s = _run(hgb, starts)
    assert s.trained == [window_iso(w) for w in starts] and s.failed == []
    reg = Registry(hgb.model.path, hgb.model.trusted_types)
    assert reg.versions() == ["v0001", "v0002", "v0003"] and reg.champion() == "v0001"
    lin, m = reg.lineage(3), reg.metrics(3)
    assert lin["windows"] == [window_iso(starts[1]), window_iso(starts[2])]  # the last 2
    assert lin["manifests"][0].endswith("window-2026-11-18T12-00-00Z/_manifest.json")
    assert m["training"] == {"mode": "refit", "rows": 1500 + 1500,  # shadow: whole windows
                             "windows": lin["windows"]}
    assert m["estimator"] == f"{F}:hgb_classifier"
    assert m["prequential"]["overall"]["rows"] == 1500  # the champion scored the window
    model = reg.load(3)
    assert isinstance(model, CustomModel) and model.rows_seen == 3000
    assert isinstance(model.estimator.steps[-1][1], HistGradientBoostingClassifier)
    test = ctr_window(START + 5 * H, H, 3000, seed=9)
    p = model.predict(test)
    assert ((0 <= p) & (p <= 1)).all() and roc_auc_score(test["label"], p) > 0.55


def test_river_model_incremental_through_the_runner(river):
    """A River online model (river.compat) learns one window at a time, like the built-ins."""
    from river.compat import River2SKLClassifier
    starts = write_ctr_windows(river, 3)
    s = _run(river, starts)
    assert s.trained == [window_iso(w) for w in starts] and s.failed == []
    reg = Registry(river.model.path, river.model.trusted_types)
    assert len(reg.versions()) == 3 and reg.champion() is not None
    lin, m = reg.lineage(3), reg.metrics(3)
    parent = reg.lineage(lin["parent"])
    assert lin["windows"] == parent["windows"] + [window_iso(starts[2])]  # incremental
    assert m["training"] == {"mode": "incremental", "rows": 1500,
                             "windows": [window_iso(starts[2])]}
    model = reg.load(3)
    assert isinstance(model.estimator.steps[-1][1], River2SKLClassifier)
    assert model.rows_seen == 1500 * len(lin["windows"])
    test = ctr_window(START + 5 * H, H, 3000, seed=9)
    assert roc_auc_score(test["label"], model.predict(test)) > 0.55


def test_a_regression_factory_refit(make_config, tmp_path):
    from tests.jobs_support import airport_window, write_airport_windows
    cfg = on_tmp(make_config("airport"), tmp_path, estimator=f"{F}:hgb_regressor",
                 training="refit", trusted_types=HGB_TYPES)
    starts = write_airport_windows(cfg, 2)
    for w in starts:
        assert run_job(cfg, w)["status"] == "trained"
    reg = Registry(cfg.model.path, cfg.model.trusted_types)
    assert reg.lineage(2)["windows"] == [window_iso(w) for w in starts]
    test = airport_window(START + 5 * H, 2000, seed=4)
    p = reg.load(2).predict(test)
    mae = np.abs(p - test["label"]).mean()
    assert np.isfinite(p).all() and mae < 0.5 * np.abs(test["label"] - test["label"].mean()).mean()


def test_untrusted_types_are_refused_then_accepted_when_listed(river):
    [w] = write_ctr_windows(river, 1)
    bare = dataclasses.replace(river, model=dataclasses.replace(river.model, trusted_types=()))
    with pytest.raises(RegistryError) as e:
        run_job(bare, w)
    msg = str(e.value)
    assert "types skops does not trust" in msg and "add them to model.trusted_types" in msg
    for t in RIVER_TYPES:
        assert t in msg
    reg = Registry(river.model.path)
    assert reg.versions() == [] and reg.window_record(window_iso(w)) is None  # nothing stored
    assert run_job(river, w)["version"] == "v0001"
    with pytest.raises(RegistryError, match="types skops does not trust: .*SGD"):
        reg.load(1)  # a registry that trusts nothing beyond skops' defaults refuses it
    partly = Registry(river.model.path, RIVER_TYPES[:-1])
    with pytest.raises(RegistryError) as e:
        partly.load(1)
    assert f"{F}.numbers" in str(e.value) and "SGD" not in str(e.value)  # names the rest
    assert isinstance(Registry(river.model.path, RIVER_TYPES).load(1), CustomModel)


def test_a_model_skops_cannot_load_back_is_not_stored(river):
    [w] = write_ctr_windows(river, 1, rows=300)
    cfg = dataclasses.replace(river, model=dataclasses.replace(
        river.model, estimator=f"{F}:river_scaled",
        trusted_types=RIVER_TYPES + ("builtins.frozenset", "collections.Counter",
                                     "river.compose.pipeline.Pipeline",
                                     "river.preprocessing.scale.StandardScaler")))
    with pytest.raises(RegistryError, match=r"river_scaled\): skops cannot load it back"):
        run_job(cfg, w)
    assert Registry(cfg.model.path).versions() == []


def test_refit_with_a_built_in_estimator(make_config, tmp_path):
    cfg = on_tmp(make_config("ctr"), tmp_path, training="refit", refit_windows=3)
    starts = write_ctr_windows(cfg, 4, rows=500)
    for w in starts:
        run_job(cfg, w)
    reg = Registry(cfg.model.path)
    assert reg.lineage(4)["windows"] == [window_iso(w) for w in starts[1:]]
    assert reg.metrics(4)["training"]["rows"] == 500 + 500 + 500
    assert isinstance(reg.load(4), Model) and reg.load(4).rows_seen == 1500


def test_the_frame_a_custom_estimator_sees(river):
    m = CustomModel.for_config(river)
    df = ctr_window(START, H, 50, seed=1)
    df.loc[df.index[:3], "category"] = None
    before = df.copy(deep=True)
    x = m.frame(df)
    assert df.equals(before)  # not modified
    assert list(x.columns) == ["category", "price"]  # kept minus model.exclude, config order
    assert x["price"].dtype == "float64" and x["category"].dtype == object
    assert x["category"].iloc[:3].isna().all() and x["price"].isna().any()


def test_custom_model_contract(river):
    """Save/load round trip identical, copy independent, seeded runs identical."""
    import skops.io as sio
    a, b = CustomModel.for_config(river), CustomModel.for_config(river)
    w0, w1, w2 = (ctr_window(START + i * H, H, 800, seed=3) for i in range(3))
    a.partial_fit(w0), b.partial_fit(w0)
    np.testing.assert_array_equal(a.predict(w1), b.predict(w1))
    blob = sio.dumps(a.to_state())
    back = CustomModel.from_state(sio.loads(blob, trusted=sio.get_untrusted_types(data=blob)))
    np.testing.assert_array_equal(a.predict(w1), back.predict(w1))
    c = a.copy()
    c.partial_fit(w1)
    np.testing.assert_array_equal(a.predict(w2), back.predict(w2))
    assert not np.array_equal(c.predict(w2), a.predict(w2))


# ---- config errors: the field, the value and the fix ---------------------------------
def _ctr_dict(**model):
    import yaml
    from tests.jobs_support import EXAMPLES
    data = yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())
    data["model"].update(model)
    return data


@pytest.mark.parametrize("model, parts", [
    ({"estimator": "tests.no_such_module:make"},
     ["model.estimator: 'tests.no_such_module:make'", "cannot be imported",
      "ModuleNotFoundError", "install it"]),
    ({"estimator": f"{F}:no_such_factory"},
     [f"model.estimator: '{F}:no_such_factory'", "has no attribute 'no_such_factory'",
      "name a function"]),
    ({"estimator": "sklearn.ensemble:"},
     ["model.estimator: 'sklearn.ensemble:' is not a factory path",
      "write package.module:factory"]),
    ({"estimator": f"{F}:broken_factory"},
     [f"model.estimator: '{F}:broken_factory' cannot be called", "give its parameters"]),
    ({"estimator": f"{F}:needs_missing_package"},
     [f"model.estimator: '{F}:needs_missing_package' raised ModuleNotFoundError",
      "install what it imports"]),
    ({"estimator": f"{F}:hgb_classifier"},
     ["model.training: 'incremental' (the default) needs partial_fit",
      f"'{F}:hgb_classifier' returns a Pipeline", "write training: refit"]),
    ({"estimator": f"{F}:no_partial_fit"},
     ["model.training: 'incremental'", "HistGradientBoostingClassifier",
      "write training: refit"]),
    ({"estimator": f"{F}:only_partial_fit", "training": "refit"},
     ["model.training: 'refit' needs fit", "OnlyPartialFit", "write training: incremental"]),
    ({"training": "batch"}, ["model.training: 'batch' is not allowed; write one of "
                             "incremental, refit"]),
    ({"refit_windows": 0}, ["model.refit_windows: 0 is not a positive integer"]),
    ({"trusted_types": ["river"]}, ["model.trusted_types[0]: 'river' is not a fully "
                                    "qualified type name"]),
    ({"trusted_types": "river.optim.sgd.SGD"}, ["model.trusted_types: 'river.optim.sgd.SGD' "
                                                "is not a list"]),
    ({"estimator": "xgboost"}, ["model.estimator: 'xgboost' is not allowed",
                                "or a factory path package.module:factory"]),
])
def test_byo_config_errors(model, parts):
    with pytest.raises(ConfigError) as e:
        config_from_dict(_ctr_dict(**model), environ={})
    for part in parts:
        assert part in str(e.value)


def test_byo_config_accepted():
    m = config_from_dict(_ctr_dict(estimator=f"{F}:hgb_classifier", training="refit",
                                   trusted_types=list(HGB_TYPES)), environ={}).model
    assert (m.estimator, m.training, m.refit_windows, m.trusted_types) == \
        (f"{F}:hgb_classifier", "refit", 6, HGB_TYPES)
    d = config_from_dict(_ctr_dict(), environ={}).model
    assert (d.training, d.refit_windows, d.trusted_types) == ("incremental", 6, ())
