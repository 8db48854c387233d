"""The retraining job: lineage, idempotence, holdout by time, promotion, drift, report."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from schemas.config import PromotionSpec, config_from_dict
from schemas.errors import ConfigError, DatasetError
from jobs.dataset import window_iso
from jobs.job import run_job
from jobs.promotion import decide
from jobs.registry import Registry
from jobs.report import format_table, window_table, write_report
from tests.jobs_support import H, START, on_tmp, write_airport_windows, write_ctr_windows


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path)


def test_first_window_starts_a_model_and_promotes_it(cfg):
    [w] = write_ctr_windows(cfg, 1)
    rec = run_job(cfg, w, now_ms=lambda: 42)
    assert rec == {"status": "trained", "version": "v0001", "promoted": True,
                   "promoted_version": "v0001", "rows": 1500, "data_version": 1}
    reg = Registry(cfg.model.path)
    assert reg.champion() == "v0001"
    m, lin = reg.metrics(1), reg.lineage(1)
    assert m["prequential"] is None and m["holdout"]["champion"] is None
    assert m["decision"]["reason"].startswith("first model")
    assert m["train_rows"] == 1500 and m["holdout_rows"] == 0  # shadow: all rows learn
    assert m["logged"]["overall"]["rows"] > 1400  # the logged prediction column, scored
    assert lin == {"pipeline": cfg.pipeline, "window": "2026-11-18T11:00:00Z",
                   "windows": ["2026-11-18T11:00:00Z"], "parent": None,
                   "manifests": [lin["manifests"][0]], "estimator": "sgd_classifier",
                   "created_ms": 42, "version": "v0001", "sha256": lin["sha256"]}
    assert lin["manifests"][0].endswith("window-2026-11-18T11-00-00Z/_manifest.json")


@pytest.mark.parametrize("evaluate", ["shadow", "holdout"])
def test_lineage_prequential_drift_and_holdout_later_in_time(cfg, evaluate):
    cfg = on_tmp(cfg, Path(cfg.model.path).parent, promotion=dataclasses.replace(
        cfg.model.promotion, evaluate=evaluate))
    w = write_ctr_windows(cfg, 3)
    for s in w:
        run_job(cfg, s)
    reg = Registry(cfg.model.path)
    m = reg.metrics(3)
    # shadow: the candidate line continues (from v0002, judged on window 3)
    assert reg.lineage(3)["parent"] == ("v0002" if evaluate == "shadow" else
                                        m["champion_version"])
    assert reg.lineage(3)["windows"][-1] == window_iso(w[2])
    parent = reg.lineage(reg.lineage(3)["parent"])
    assert len(reg.lineage(3)["windows"]) == 1 + len(parent["windows"])
    pq = m["prequential"]
    assert pq["overall"]["rows"] == 1500 and pq["overall"]["roc_auc"] > 0.5
    assert set(pq["slices"]["category"]) >= {"mens_dress_shoes", "books"}
    assert m["drift"]["reference_window"] == window_iso(w[1])
    assert set(m["drift"]["features"]) == {"category", "price", "user_email"}  # hour excluded
    if evaluate == "holdout":
        assert m["holdout_from_ms"] >= w[2] + 0.7 * H  # the time-later 20% of the window
        assert m["decision"]["evaluated_on"].startswith("holdout of window")
    else:
        assert m["holdout_from_ms"] is None and m["decision"]["candidate"] == "v0002"
        assert m["decision"]["evaluated_on"].startswith(f"window {window_iso(w[2])} in shadow")
        assert m["holdout"]["challenger"]["overall"]["rows"] == 1500
    d = m["decision"]
    assert d["confidence"] == 0.95 and d["ci_method"].startswith("paired Poisson bootstrap")
    lo, hi = d["gain_ci"]
    assert lo < d["gain"] < hi
    for who in ("champion", "challenger"):
        ci = m["holdout"][who]["overall"]["ci"]["roc_auc"]
        assert ci[0] < m["holdout"][who]["overall"]["roc_auc"] < ci[1]


def test_same_window_twice_trains_once(cfg):
    w = write_ctr_windows(cfg, 2)
    run_job(cfg, w[0])
    first = run_job(cfg, w[1])
    again = run_job(cfg, w[1])
    assert again["status"] == "skipped" and again["version"] == first["version"]
    assert Registry(cfg.model.path).versions() == ["v0001", "v0002"]


def test_a_crash_after_storing_the_version_does_not_train_again(cfg):
    [w] = write_ctr_windows(cfg, 1)
    run_job(cfg, w)
    reg = Registry(cfg.model.path)
    (reg.root / "champion.json").unlink()  # crashed before the pointer and the record
    reg._record_path(window_iso(w)).unlink()
    rec = run_job(cfg, w)
    assert rec["version"] == "v0001" and reg.versions() == ["v0001"]
    assert reg.champion() == "v0001" and reg.window_record(window_iso(w))["status"] == "trained"


def test_unclosed_window_fails_without_a_record(cfg):
    with pytest.raises(DatasetError, match="no manifest .* not closed yet"):
        run_job(cfg, START)
    assert Registry(cfg.model.path).window_record(window_iso(START)) is None


def test_tampered_champion_fails_the_job(cfg):
    w = write_ctr_windows(cfg, 2)
    run_job(cfg, w[0])
    p = Registry(cfg.model.path).root / "v0001" / "model.skops"
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Exception, match="checksum mismatch"):
        run_job(cfg, w[1])


def test_regression_pipeline(make_config, tmp_path):
    cfg = on_tmp(make_config("airport"), tmp_path)
    for s in write_airport_windows(cfg, 3):
        run_job(cfg, s)
    m = Registry(cfg.model.path).metrics(3)
    assert m["decision"]["metric"] == "mae"
    mae = m["prequential"]["overall"]["mae"]
    spread = m["label_rate"]  # mean wait; a useless model is off by about this much
    assert mae < 0.5 * spread and set(m["prequential"]["slices"]["checkpoint"]) == set("ABCD")


# ---- the promotion rule -----------------------------------------------------------
def _ev(overall: float, **slices: tuple[float, int]) -> dict:
    return {"overall": {"roc_auc": overall, "rows": 1000},
            "slices": {"cat": {k: {"roc_auc": v, "rows": n} for k, (v, n) in slices.items()}}}


RULE = PromotionSpec(metric="roc_auc", min_gain=0.01, max_slice_regression=0.03,
                     min_slice_rows=100)


@pytest.mark.parametrize("champion, challenger, promote, why", [
    (None, _ev(0.6), True, "first model"),
    (_ev(0.70), _ev(0.705), False, "does not clear min_gain"),
    (_ev(0.70), _ev(0.72), True, "gain"),
    (_ev(0.70, a=(0.7, 500)), _ev(0.72, a=(0.66, 500)), False, "slice cat=a regresses by 0.04"),
    (_ev(0.70, a=(0.7, 50)), _ev(0.72, a=(0.5, 50)), True, "gain"),  # too small to judge
    (_ev(0.70, a=(None, 500)), _ev(0.72, a=(0.6, 500)), True, "gain"),  # single-class slice
    (_ev(0.70), {"overall": {"roc_auc": None, "rows": 5}, "slices": {}}, False, "undefined"),
])
def test_promotion_rule(champion, challenger, promote, why):
    d = decide(champion, challenger, RULE)
    assert d["promote"] is promote and why in d["reason"]


def test_promotion_rule_lower_is_better():
    rule = PromotionSpec(metric="mae", min_gain=1.0, max_slice_regression=2.0, min_slice_rows=1)
    ev = lambda v: {"overall": {"mae": v, "rows": 9}, "slices": {}}  # noqa: E731
    assert decide(ev(30.0), ev(28.0), rule)["promote"]
    assert not decide(ev(30.0), ev(29.5), rule)["promote"]
    assert decide(ev(30.0), ev(28.0), rule)["gain"] == pytest.approx(2.0)


# ---- the drifted slice ------------------------------------------------------------
def test_drifted_slice_shows_in_metrics_and_recovers(cfg):
    """Men's dress shoes stop being clicked from window 4 on: the champion over-predicts
    them (calibration gap), the label-rate drift is flagged, and retraining brings the
    gap back down within a few windows."""
    starts = write_ctr_windows(cfg, 10, rows=3000, drift_at_ms=START + 4 * H)
    for s in starts:
        run_job(cfg, s)
    rows = window_table(cfg, "category", "mens_dress_shoes")
    gaps = [r["slice_calibration_gap"] for r in rows]
    before, at, after = gaps[2:4], gaps[4], gaps[5:]  # window 1: a one-window-old model
    assert rows[4]["slice_label_rate"] == 0.0 and rows[3]["slice_label_rate"] > 0.05
    assert rows[4]["slice_metric"] is None  # no clicks: AUC undefined, not a crash
    assert at > 0.08 and at > max(before) + 0.08  # the champion still expects clicks
    assert "label[category=mens_dress_shoes]" in rows[4]["drift"]
    assert min(after[:3]) < 0.6 * at and after[-1] < 0.06  # retraining recovers
    text = format_table(rows)
    assert "category=mens_dress_shoes roc_auc" in text and len(text.splitlines()) == 12


def test_report_written_with_images(cfg, tmp_path):
    for s in write_ctr_windows(cfg, 3, rows=600):
        run_job(cfg, s)
    index = write_report(cfg, tmp_path / "report")
    page = index.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"metric_overall.png", "metric_category.png", "calibration_category.png",
            "label_rate.png", "drift.png", "versions.png"} <= set(images)
    for name in images:
        assert (index.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "v0003" in page and "first model" in page


# ---- config --------------------------------------------------------------------------
def _ctr_dict():
    import yaml
    from tests.jobs_support import EXAMPLES
    return yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())


@pytest.mark.parametrize("key, value, message", [
    ("holdout_fraction", 1.0, "model.holdout_fraction: 1.0 leaves nothing to train"),
    ("estimator", "sgd_regressor", "does not fit label kind 'binary'; write sgd_classifier "
                                   "(or one of sgd_classifier, passive_aggressive_classifier"),
    ("retries", -1, "model.retries: -1 is not a whole number >= 0"),
    ("job_timeout", "soon", "model.job_timeout: 'soon' is not a duration"),
    ("exclude", ["nope"], "model.exclude[0]: 'nope' is not a kept feature"),
    ("promotion", {"metric": "mae"}, "model.promotion.metric: 'mae' is not allowed; write one "
                                     "of roc_auc, log_loss, accuracy"),
    ("promotion", {"min_gian": 0.1}, "model.promotion: unknown key(s) 'min_gian'"),
    ("drift", {"linf": 2}, "model.drift.linf: 2 is not a number in [0, 1]"),
    ("categorical", ["category"], "model.categorical[0]: 'category' is not a kept int or bool"),
    ("drift", {"exclude": ["nope"]}, "model.drift.exclude[0]: 'nope' is not a kept feature"),
    ("learning_rate", 0.1, "model: unknown key(s) 'learning_rate'"),
    ("promotion", {"confidence": 1.0}, "model.promotion.confidence: 1.0 is not a confidence "
                                       "level below 1; write e.g. 0.95"),
    ("promotion", {"confidence": "high"}, "model.promotion.confidence: 'high' is not a number"),
    ("promotion", {"evaluate": "later"}, "model.promotion.evaluate: 'later' is not allowed; "
                                         "write one of shadow, holdout"),
    ("on_drift", "fast", "model.on_drift: 'fast' is not allowed; write one of none, recency, "
                         "refit"),
])
def test_model_config_errors(key, value, message):
    data = _ctr_dict()
    data["model"][key] = value
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, environ={})
    assert message in str(e.value)


def test_model_config_defaults():
    data = _ctr_dict()
    data["model"] = {"path": "m"}
    m = config_from_dict(data, environ={}).model
    assert (m.estimator, m.holdout_fraction, m.job_timeout_ms, m.retries, m.exclude) == \
        ("sgd_classifier", 0.2, 600_000, 2, ())
    assert (m.promotion.metric, m.promotion.min_gain, m.promotion.min_slice_rows) == \
        ("roc_auc", 0.0, 200)
    assert (m.drift.psi, m.drift.linf, m.drift.label_rate) == (0.2, 0.1, 0.05)
    assert (m.promotion.confidence, m.promotion.evaluate, m.on_drift) == \
        (0.95, "shadow", "recency")


@pytest.mark.parametrize("model, message", [
    ({"estimator": "bad", "exclude": ["nope"]}, "model.estimator: 'bad' is not allowed"),
    ({"path": "m", "categorical": ["nope"], "promotion": {"metric": "x"}},
     "model.categorical[0]: 'nope'"),
    ({"path": "m", "promotion": {"metric": "x"}, "drift": {"psi": -1}},
     "model.promotion.metric: 'x'"),
    ({"path": "m", "drift": {"psi": -1}, "holdout_fraction": 0}, "model.drift.psi: -1"),
    ({"holdout_fraction": 0, "retries": -1}, "model.holdout_fraction: 0.0 leaves nothing"),
    ({"retries": -1}, "model.path: is required but missing"),
    ({"path": "m", "job_timeout": "0s", "retries": -1}, "model.job_timeout: '0s' is zero"),
])
def test_model_config_checks_in_order(model, message):
    data = _ctr_dict()
    data["model"] = model
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, environ={})
    assert message in str(e.value)


# ---- small windows and the report's variants ------------------------------------------
def test_a_window_with_too_few_rows_is_recorded_without_a_version(cfg):
    from streams.dev.synthetic_windows import ctr_window, write_window
    write_window(cfg.dataset.path, cfg.pipeline, START, H, ctr_window(START, H, 5, 1))
    rec = run_job(cfg, START)
    assert rec == {"status": "trained", "version": None, "promoted": False, "rows": 5,
                   "note": "only 5 rows (< 10); nothing trained"}
    reg = Registry(cfg.model.path)
    assert reg.versions() == [] and reg.window_record(window_iso(START))["note"] == rec["note"]
    assert run_job(cfg, START)["status"] == "skipped"


def test_regression_report_has_no_calibration_chart(make_config, tmp_path):
    cfg = on_tmp(make_config("airport"), tmp_path)
    for s in write_airport_windows(cfg, 2, rows=300):
        run_job(cfg, s)
    index = write_report(cfg)
    assert index == tmp_path / "models" / "report" / "index.html"
    images = re.findall(r'<img src="([^"]+)"', index.read_text())
    assert images == ["metric_overall.png", "metric_checkpoint.png", "label_rate.png",
                      "drift.png", "versions.png"]


def test_report_before_any_trained_window(cfg, tmp_path):
    page = write_report(cfg, tmp_path / "report").read_text()
    assert "0 trained windows; champion none;" in page
    assert len(re.findall(r"<img ", page)) == 6 and "<td>" not in page
