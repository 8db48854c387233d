"""Promotion on evidence: paired bootstrap intervals, slices judged with their own
intervals, and the shadow evaluation on the next window."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from schemas.config import PromotionSpec
from jobs.bootstrap import metric_replicates, paired_intervals
from jobs.job import run_job
from jobs.metrics import evaluate
from jobs.promotion import decide
from jobs.registry import Registry
from streams.dev.synthetic_windows import ctr_window
from tests.jobs_support import H, START, on_tmp, write_ctr_windows

RULE = PromotionSpec(metric="roc_auc", min_gain=0.0, max_slice_regression=0.05,
                     min_slice_rows=50, confidence=0.95)


def _rows(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``n`` rows with a label that follows a true score ``z``; slices a (20%) and b."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(z * 1.2 - 2.5)))).astype("int64")
    cat = np.where(rng.random(n) < 0.2, "a", "b")
    return pd.DataFrame({"label": y, "cat": cat}), z


def _judge(df, old, new, rule=RULE, seed=7):
    points = {"champion": evaluate(df, old, "binary", ["cat"]),
              "challenger": evaluate(df, new, "binary", ["cat"])}
    iv = paired_intervals(df, {"champion": old, "challenger": new}, rule.metric, ["cat"],
                          rule.confidence, seed, points)
    return decide(points["champion"], points["challenger"], rule, iv), iv


def test_bootstrap_auc_and_log_loss_match_sklearn_under_weights():
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(float)
    s = np.round(rng.random(400), 2)  # ties count one half
    w = rng.poisson(1.0, (5, 400)) * rng.choice([1.0, 10.0], 400)
    for i in range(5):
        assert metric_replicates("roc_auc", y, s, w)[i] == \
            pytest.approx(roc_auc_score(y, s, sample_weight=w[i]))


def test_identical_models_never_promote():
    df, z = _rows(2000, 1)
    d, iv = _judge(df, z, z.copy())
    assert d["gain"] == 0.0 and d["gain_ci"] == [0.0, 0.0] and not d["promote"]
    assert "does not clear min_gain" in d["reason"]


def test_noise_does_not_promote_a_real_gain_does():
    df, z = _rows(1000, 2)
    rng = np.random.default_rng(3)
    champion = z + rng.normal(0, 1.0, len(z))
    noisy = champion + rng.normal(0, 0.15, len(z))  # the same model, jittered
    point = decide(evaluate(df, champion, "binary", ["cat"]),
                   evaluate(df, noisy, "binary", ["cat"]), RULE)  # no intervals
    d, _ = _judge(df, champion, noisy)
    assert point["promote"] and point["gain"] > 0 and d["gain"] == pytest.approx(point["gain"])
    assert not d["promote"] and d["gain_ci"][0] < 0 < d["gain_ci"][1]  # noise: kept
    better, _ = _judge(df, champion, z)  # the true score: a real gain
    assert better["promote"] and better["gain_ci"][0] > 0.01
    # min_gain is judged against the lower bound, not the point estimate
    strict = dataclasses.replace(RULE, min_gain=better["gain_ci"][0] + 0.001)
    assert better["gain"] > strict.min_gain and not _judge(df, champion, z, strict)[0]["promote"]


def test_a_slice_blocks_only_a_significant_regression():
    df, z = _rows(15000, 4)
    rng = np.random.default_rng(5)
    champion = z + rng.normal(0, 1.0, len(z))
    a = (df["cat"] == "a").to_numpy()
    ruined = np.where(a, rng.random(len(z)), z)  # better overall, random on slice a
    d, _ = _judge(df, champion, ruined)
    w = d["worst_slice"]
    assert d["gain_ci"][0] > 0 and w["slice"] == "cat=a" and not d["promote"]
    assert w["regression_ci"][0] > RULE.max_slice_regression and "regresses" in d["reason"]
    # a small slice whose point regression exceeds the limit, within its noise: no block
    small = df.assign(cat=np.where(a & (np.arange(len(z)) % 20 == 0), "a", "b"))
    s = (small["cat"] == "a").to_numpy()
    jitter = np.where(s, champion + np.random.default_rng(2).normal(0, 1.5, len(z)), z)
    d, _ = _judge(small, champion, jitter)
    w = d["worst_slice"]
    assert w["slice"] == "cat=a" and w["rows"] >= RULE.min_slice_rows
    assert w["regression"] > RULE.max_slice_regression > w["regression_ci"][0]
    assert d["promote"]


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path)


def _promotions(cfg, n: int, **promotion) -> list[float | None]:
    """Per window after the first: None when nothing was promoted, else the promoted
    model's true ROC AUC gain over the champion it replaced (on 20,000 fresh rows)."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, promotion=dataclasses.replace(cfg.model.promotion, **promotion)))
    reg, out = Registry(cfg.model.path), []
    fresh = ctr_window(START + n * H, H, 20_000, 99)
    for s in write_ctr_windows(cfg, n, rows=1000):
        rec = run_job(cfg, s)
        old = reg.metrics(rec["version"])["champion_version"]
        if old is None:
            continue  # the first model
        out.append(None if not rec["promoted"] else
                   roc_auc_score(fresh["label"], reg.load(rec["promoted_version"]).predict(fresh))
                   - roc_auc_score(fresh["label"], reg.load(old).predict(fresh)))
    return out


def test_a_stationary_stream_promotes_only_better_models(make_config, tmp_path):
    """No drift, demo-sized windows: the old rule (20% holdout, point estimates)
    replaces the champion about every other window, often with a worse model; on
    evidence, only a model that is better on fresh data is promoted (the model is still
    learning in these first windows: those promotions are real)."""
    base = make_config("ctr")
    old = _promotions(on_tmp(base, tmp_path / "old"), 12, evaluate="holdout", confidence=0.0)
    new = _promotions(on_tmp(base, tmp_path / "new"), 12)
    promoted_old = [g for g in old if g is not None]
    promoted_new = [g for g in new if g is not None]
    # old: a worse model, and models no better than the champion they replaced
    assert len(promoted_old) >= 5 and min(promoted_old) < 0, old
    assert sum(g < 0.005 for g in promoted_old) >= 3, old
    assert len(promoted_new) <= 3 and all(g > 0 for g in promoted_new), new


def test_shadow_judges_the_previous_window_s_version(cfg):
    for s in write_ctr_windows(cfg, 4, rows=1000):
        run_job(cfg, s)
    reg = Registry(cfg.model.path)
    for v in (3, 4):
        d = reg.metrics(v)["decision"]
        assert d["candidate"] == f"v000{v - 1}" and "in shadow" in d["evaluated_on"]
        assert reg.metrics(v)["holdout"]["challenger"]["overall"]["rows"] == 1000
        assert d["promotes"] in (None, d["candidate"])
