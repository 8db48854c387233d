"""An answer to drift (``model.on_drift``): the job whose window drifted adapts faster,
the decision says how, and the drifted slice is calibrated again within 3 windows."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from schemas.config import config_from_dict
from jobs.adapt import SLICE_WEIGHT, WINDOW_WEIGHT, adaptation
from jobs.job import run_job
from jobs.registry import Registry
from tests.jobs_support import EXAMPLES, H, START, on_tmp, write_ctr_windows

DRIFT = 6  # men's dress shoes are never clicked from window 6 on
SLICE = "mens_dress_shoes"


def _run(cfg, on_drift: str, n: int = 10) -> list[dict]:
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, on_drift=on_drift, drift=dataclasses.replace(cfg.model.drift, min_rows=50)))
    reg = Registry(cfg.model.path)
    out = []
    for s in write_ctr_windows(cfg, n, rows=1000, drift_at_ms=START + DRIFT * H):
        m = reg.metrics(run_job(cfg, s)["version"])
        pq = m["prequential"] or {"slices": {}, "overall": {}}
        out.append({"gap": pq["slices"].get("category", {}).get(SLICE, {}).get("calibration_gap"),
                    "auc": pq["overall"].get("roc_auc"), "decision": m["decision"]})
    return out


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path)


@pytest.mark.parametrize("on_drift", ["recency", "refit"])
def test_the_drifted_slice_is_calibrated_within_3_windows(cfg, tmp_path, on_drift):
    adapted = _run(on_tmp(cfg, tmp_path / on_drift), on_drift)
    plain = _run(on_tmp(cfg, tmp_path / "none"), "none")
    a = adapted[DRIFT]["decision"]["adaptation"]
    assert a["on_drift"] == on_drift and f"label[category={SLICE}]" in a["trigger"]
    assert a["slices"] == {"category": [SLICE]} and a["slice_weight"] == SLICE_WEIGHT
    assert plain[DRIFT]["decision"]["adaptation"] is None
    assert adapted[DRIFT]["gap"] > 0.1  # the champion still expects their clicks
    within = [abs(r["gap"]) <= 0.02 for r in adapted[DRIFT:DRIFT + 4]]
    assert any(within), [r["gap"] for r in adapted]
    assert not any(abs(r["gap"]) <= 0.02 for r in plain[DRIFT:DRIFT + 4]), \
        [r["gap"] for r in plain]
    # before the drift nothing adapted, so the two runs are the same
    assert [r["auc"] for r in adapted[:DRIFT]] == [r["auc"] for r in plain[:DRIFT]]


def test_adaptation_weights():
    data = yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())
    data["model"] = {"path": "m"}
    cfg = config_from_dict(data, environ={"DLABEL_PII_KEY": "k"})
    assert cfg.model.on_drift == "recency"
    drift = {"flagged": ["label[category=a]"], "features": {"category": {"flagged": False}},
             "label": {"flagged": False, "slices": {"category": {
                 "a": {"flagged": True}, "b": {"flagged": False}}}}}
    ad = adaptation(cfg, drift)
    df = pd.DataFrame({"category": ["a", "b", None]})
    assert ad.scale(df).tolist() == [SLICE_WEIGHT, 1.0, 1.0]
    whole = adaptation(cfg, {**drift, "flagged": ["category"],
                             "features": {"category": {"flagged": True}}})
    assert whole.scale(df).tolist() == [SLICE_WEIGHT, WINDOW_WEIGHT, WINDOW_WEIGHT]
    assert adaptation(cfg, {**drift, "flagged": []}) is None
    off = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, on_drift="none"))
    assert adaptation(off, drift) is None
    ages = np.array([2, 1, 0, 0, 0])
    assert ad.refit_scale(ages, pd.concat([df, df]).iloc[:5]).tolist()[:2] == [0.25, 0.5]
