"""Metrics against hand-computed values; drift quiet on a stable stream, loud on a shift."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from schemas.config import DriftSpec, FeatureSpec
from jobs.drift import linf, psi, window_drift
from jobs.metrics import binary_metrics, evaluate, regression_metrics
from streams.dev.synthetic_windows import ctr_window
from tests.jobs_support import H, START


def test_binary_metrics_by_hand():
    y = [0, 0, 1, 1]
    p = [0.1, 0.6, 0.4, 0.8]
    m = binary_metrics(y, p)
    # pairs (pos, neg): (0.4,0.1)+ (0.4,0.6)- (0.8,0.1)+ (0.8,0.6)+ -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    ll = -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.8)) / 4
    assert m["log_loss"] == pytest.approx(ll)
    assert m["accuracy"] == pytest.approx(0.5)  # 0.1 ok, 0.6 wrong, 0.4 wrong, 0.8 ok
    assert m["positive_rate"] == 0.5 and m["mean_prediction"] == pytest.approx(0.475)
    assert m["calibration_gap"] == pytest.approx(-0.025)
    assert (m["rows"], m["positives"]) == (4, 2)


def test_single_class_and_empty_do_not_crash():
    m = binary_metrics([0, 0, 0], [0.2, 0.3, 0.1])
    assert m["roc_auc"] is None and m["log_loss"] == pytest.approx(
        -(math.log(0.8) + math.log(0.7) + math.log(0.9)) / 3)
    e = binary_metrics([], [])
    assert e["rows"] == 0 and e["roc_auc"] is None and e["log_loss"] is None
    assert regression_metrics([], [])["mae"] is None


def test_regression_metrics_by_hand():
    m = regression_metrics([1.0, 2.0, 4.0], [2.0, 2.0, 1.0])
    assert m["mae"] == pytest.approx(4 / 3)
    assert m["rmse"] == pytest.approx(math.sqrt(10 / 3))
    assert m["mean_label"] == pytest.approx(7 / 3)


def test_evaluate_per_slice_with_counts_and_unscored_rows():
    df = pd.DataFrame({"label": [1, 0, 1, 0, 0],
                       "cat": ["a", "a", "b", "b", None]})
    ev = evaluate(df, [0.9, 0.2, 0.3, np.nan, 0.5], "binary", ["cat"])
    assert ev["unscored"] == 1 and ev["overall"]["rows"] == 4
    per = ev["slices"]["cat"]
    a, b, miss = per["a"], per["b"], per["<missing>"]
    assert a["rows"] == 2 and a["roc_auc"] == 1.0
    assert b["rows"] == 1 and b["roc_auc"] is None  # its negative had no score
    assert miss["rows"] == 1 and miss["positives"] == 0


def test_psi_by_hand_and_identical_is_zero():
    ref = np.arange(1000, dtype=float)
    assert psi(ref, ref) == pytest.approx(0.0, abs=1e-9)
    # all of the current sample in the lowest decile: shares 1.0 vs 0.1 there
    cur = np.zeros(100)
    r = np.array([0.1] * 10 + [0.0]) + 1e-4
    c = np.array([1.0] + [0.0] * 10) + 1e-4
    assert psi(ref, cur) == pytest.approx(float(np.sum((c - r) * np.log(c / r))))
    assert psi(ref, np.full(100, np.nan)) > 5  # everything became missing


def test_linf_by_hand():
    assert linf(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(0.25)
    assert linf(["a", None], ["a", "a"]) == pytest.approx(0.5)
    assert linf(["a"] * 5, ["a"] * 9) == 0.0


FEATS = (FeatureSpec("hour", "int"), FeatureSpec("category", "str"),
         FeatureSpec("price", "float"))


def test_drift_quiet_on_a_stable_stream():
    spec = DriftSpec()
    flagged = []
    for i in range(4):
        a = ctr_window(START, H, 3000, seed=10 + i)
        b = ctr_window(START, H, 3000, seed=20 + i)
        d = window_drift(a, b, FEATS, ["category"], "binary", spec)
        flagged += d["flagged"]
        assert d["features"]["price"]["value"] < 0.05
    assert flagged == []


def test_drift_flags_a_shift():
    spec = DriftSpec()
    a = ctr_window(START, H, 3000, seed=1)
    b = ctr_window(START, H, 3000, seed=2, drift_at_ms=START, drift_factor=0.0)
    b["price"] = b["price"] * 3
    b.loc[b.index[:1500], "category"] = "books"
    d = window_drift(a, b, FEATS, ["category"], "binary", spec)
    assert d["features"]["price"]["flagged"] and d["features"]["price"]["measure"] == "psi"
    assert d["features"]["category"]["flagged"] and d["features"]["category"]["measure"] == "linf"
    assert "label[category=mens_dress_shoes]" in d["flagged"]
    assert d["label"]["slices"]["category"]["mens_dress_shoes"]["current"] == 0.0


def test_psi_sees_a_new_value_of_a_discrete_feature():
    assert psi(np.full(500, 11.0), np.full(500, 12.0)) > 5  # hour 11 -> hour 12
    assert psi(np.full(500, 11.0), np.full(500, 11.0)) == pytest.approx(0.0, abs=1e-9)


def test_drift_exclude():
    a = ctr_window(START, H, 500, seed=1)
    b = ctr_window(START + 5 * H, H, 500, seed=2)
    d = window_drift(a, b, FEATS, [], "binary", DriftSpec(exclude=("hour",)))
    assert "hour" not in d["features"]
    assert window_drift(a, b, FEATS, [], "binary", DriftSpec())["features"]["hour"]["flagged"]
