"""In-window updates of the serving model (``model.update_every``, jobs.online): the
champion's line learns labels as they arrive, the gate at window close is unchanged."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.job import run_job
from jobs.online import OnlineUpdater
from jobs.registry import Registry
from jobs.serving import ServingStore
from tests.online_support import close_window, ctr_rows, topic_rows, with_updates

RIVER_TYPES = ("river._river_rust.vectordict.VectorDict",
               "river.compat.river_to_sklearn.River2SKLClassifier",
               "river.linear_model.log_reg.LogisticRegression",
               "river.optim.initializers.Zeros", "river.optim.losses.Log",
               "river.optim.schedulers.Constant", "river.optim.sgd.SGD",
               "tests.jobs_byo_factories.numbers")


def _day(cfg, windows: int, updater: OnlineUpdater | None, seed: int = 1) -> list[str]:
    """Windows 0..windows-1: labels of window i arrive (and the updater steps) while it
    is open, then it closes and its job runs. Returns what the updater published."""
    served = []
    for i in range(windows):
        start, df = ctr_rows(i, seed=seed)
        if updater is not None:
            rows = topic_rows(df)
            for k in range(0, len(rows), 100):
                updater.add(rows[k:k + 100])
                name = updater.step()
                if name:
                    served.append(name)
        close_window(cfg, start, df)
        run_job(cfg, start)
        if updater is not None and (name := updater.step()):
            served.append(name)
    return served


def _decisions(cfg) -> tuple:
    reg = Registry(cfg.model.path, cfg.model.trusted_types)
    pointer = json.loads((reg.root / "champion.json").read_text())
    return (pointer["version"], pointer["history"],
            [(v, reg.metrics(v)["decision"]["promote"], reg.metrics(v)["decision"]["reason"],
              reg.lineage(v)["windows"]) for v in reg.versions()])


def test_updates_follow_the_gate(make_config, tmp_path):
    """With the updater running between jobs, every job decides exactly as without it
    (same versions, decisions, lineage, champion history); the updater only publishes
    sub-versions of the champion of the moment, never a version or a champion."""
    plain = with_updates(make_config("ctr"), tmp_path / "plain")
    online = with_updates(make_config("ctr"), tmp_path / "online")
    _day(plain, 5, None)
    updater = OnlineUpdater(online)
    served = _day(online, 5, updater)
    assert _decisions(online) == _decisions(plain)
    reg = Registry(online.model.path)
    assert reg.champion() is not None
    store = ServingStore(online.model.path)
    subs = store.sub_versions()
    assert subs and set(served) >= set(subs[-1:])
    history = [reg.champion()] + json.loads((reg.root / "champion.json").read_text())["history"]
    for name in subs:  # each update continues the champion of its time (or no champion)
        rec = store.update_record(name)
        assert rec["champion"] in history + [None]
        assert name.startswith((rec["champion"] or "v0000") + ".u")
    assert store.pointer()["champion"] == reg.champion()


def test_a_new_line_before_the_first_champion_then_from_it(make_config, tmp_path):
    """Before any window closed the line is a new model (``v0000.uNNNN``); once a job has
    promoted the first version, the next step starts a line from it at once."""
    cfg = with_updates(make_config("ctr"), tmp_path)
    updater = OnlineUpdater(cfg)
    start, df = ctr_rows(0)
    rows = topic_rows(df)
    updater.add(rows[:300])
    assert updater.step() == "v0000.u0001"
    name, model = ServingStore(cfg.model.path).load()
    assert name == "v0000.u0001" and model.rows_seen == 300
    updater.add(rows[300:])
    close_window(cfg, start, df)
    run_job(cfg, start)
    assert Registry(cfg.model.path).champion() == "v0001"
    # v0001 learned window 0 itself: nothing to replay, no open rows yet -> the champion
    assert updater.step() == "v0001"
    assert ServingStore(cfg.model.path).pointer()["dir"] is None
    start1, df1 = ctr_rows(1)
    updater.add(rows[:3])  # late copies of window 0's rows: the champion learned them
    updater.add(topic_rows(df1)[:250])
    assert updater.step() == "v0001.u0001"
    rec = ServingStore(cfg.model.path).update_record("v0001.u0001")
    assert rec["rows_learned"] == 250 and rec["line_rows"] == 250
    assert rec["skipped"]["covered"] == 3


def test_a_promotion_by_hand_rebases_on_the_closed_windows_and_open_rows(make_config, tmp_path):
    """A new champion's line replays the closed windows after its lineage (manifests) and
    the open windows' rows read so far; the updates' model equals that, learned in order."""
    cfg = with_updates(make_config("ctr"), tmp_path)
    for i in range(3):
        start, df = ctr_rows(i)
        close_window(cfg, start, df)
        run_job(cfg, start)
    reg = Registry(cfg.model.path)
    updater = OnlineUpdater(cfg)
    _, df3 = ctr_rows(3)
    open_rows = topic_rows(df3)[:150]
    updater.add(open_rows)
    assert reg.champion() == "v0001" and reg.lineage("v0002")["windows"] == [ds_name(0),
                                                                             ds_name(1)]
    first = updater.step()
    assert first == "v0001.u0001"  # v0001 + windows 1 and 2 + the open rows
    assert ServingStore(cfg.model.path).update_record(first)["line_rows"] == 2 * 600 + 150
    reg.set_champion("v0002", reason="promoted by hand")
    name = updater.step()
    assert name == "v0002.u0001"
    rec = ServingStore(cfg.model.path).update_record(name)
    assert rec["replayed_windows"] == [ds_name(2)]
    assert rec["line_rows"] == 600 + 150
    # the same line by hand: v0002 + window 2 in time order + the open rows
    from jobs import dataset as ds
    from schemas.dataset_schema import arrow_schema, examples_to_table
    expect = reg.load("v0002")
    for i in (2,):
        w = ds.read_window(ds.open_window(cfg.dataset.path, ctr_rows(i)[0]))
        expect.partial_fit(w.sort_values(["request_ts", "request_id"], kind="stable"))
    batch = sorted(open_rows, key=lambda r: (r["label_ts"], r["request_id"]))
    expect.partial_fit(examples_to_table(batch, arrow_schema(cfg)).to_pandas())
    _, served = ServingStore(cfg.model.path).load()
    probe = ctr_rows(5)[1]
    np.testing.assert_allclose(served.predict(probe), expect.predict(probe))


def ds_name(i: int) -> str:
    from jobs.dataset import window_iso
    return window_iso(ctr_rows(i)[0])


def test_corrections_duplicates_and_covered_rows_are_not_learned(make_config, tmp_path):
    cfg = with_updates(make_config("ctr"), tmp_path, every_rows=10)
    updater = OnlineUpdater(cfg)
    _, df = ctr_rows(0, rows=50)
    rows = topic_rows(df)
    updater.add(rows[:40])
    updater.add(rows[:5])  # an at-least-once copy
    updater.add([dict(rows[5], label=1 - rows[5]["label"], label_version=2)])  # a correction
    assert updater.step() == "v0000.u0001"
    rec = ServingStore(cfg.model.path).update_record("v0000.u0001")
    assert rec["rows_learned"] == 40
    assert rec["skipped"] == {"corrections": 1, "duplicates": 5, "covered": 0}


def test_resume_offsets_point_at_the_earliest_open_row(make_config, tmp_path):
    """A restarted updater re-reads the labeled topic from the earliest row of a window
    still open per partition (rows of closed windows come from their manifests)."""
    cfg = with_updates(make_config("ctr"), tmp_path, every_rows=10)
    updater = OnlineUpdater(cfg)
    s0, df0 = ctr_rows(0, rows=30)
    s1, df1 = ctr_rows(1, rows=30)
    r0, r1 = topic_rows(df0), topic_rows(df1)
    updater.add(r0[:20], [(0, 100 + k) for k in range(20)])
    updater.add(r1[:20], [(1, 7 + k) for k in range(20)])
    updater.add(r0[20:], [(1, 27 + k) for k in range(10)])
    updater.step()
    assert updater.resume_offsets() == {0: 100, 1: 7}
    close_window(cfg, s0, df0)
    run_job(cfg, s0)
    updater.step()  # new champion: window 0 is covered, its rows are dropped
    assert updater.resume_offsets() == {0: 120, 1: 7}
    ptr = ServingStore(cfg.model.path).pointer()
    assert ptr["resume_offsets"] == {"0": 120, "1": 7}


@pytest.mark.parametrize("estimator,types", [
    ("tests.jobs_byo_factories:river_logistic", RIVER_TYPES),
    ("tests.online_factories:sgd_pipeline", ("tests.jobs_byo_factories.numbers",)),
])
def test_river_and_sklearn_partial_fit_models_update_in_window(make_config, tmp_path,
                                                               estimator, types):
    """A River model (river.compat) and a scikit-learn Pipeline with partial_fit both learn
    in-window: the published sub-version is the champion plus the new rows."""
    cfg = with_updates(make_config("ctr"), tmp_path, estimator=estimator, trusted_types=types)
    start, df = ctr_rows(0)
    close_window(cfg, start, df)
    run_job(cfg, start)
    reg = Registry(cfg.model.path, types)
    updater = OnlineUpdater(cfg)
    _, df1 = ctr_rows(1)
    updater.add(topic_rows(df1)[:300])
    assert updater.step() == "v0001.u0001"
    name, served = ServingStore(cfg.model.path, types).load()
    champion = reg.load("v0001")
    assert served.rows_seen == champion.rows_seen + 300
    probe = ctr_rows(4)[1]
    assert not np.allclose(served.predict(probe), champion.predict(probe))
    np.testing.assert_allclose(served.predict(probe), updater.line.model.predict(probe))


def test_a_small_batch_with_a_feature_all_missing_keeps_its_scaling(make_config, tmp_path):
    """In-window batches are small: one where every price is missing must leave price's
    running statistics as they were (sklearn's partial_fit made its variance NaN for good,
    and the feature unscaled), and a first batch without prices must not block them."""
    from jobs.estimators import Model
    cfg = with_updates(make_config("ctr"), tmp_path)
    _, df = ctr_rows(0, rows=400)
    both, alone = Model.for_config(cfg), Model.for_config(cfg)
    both.partial_fit(df.iloc[:300])
    alone.partial_fit(df.iloc[:300])
    both.partial_fit(df.iloc[300:303].assign(price=float("nan")))
    scaler, ref = both.pipeline.scaler, alone.pipeline.scaler
    i = both.pipeline.numeric.index("price")
    assert scaler.mean_[i] == pytest.approx(ref.mean_[i])
    assert scaler.var_[i] == pytest.approx(ref.var_[i]) and scaler.scale_[i] > 1.0
    late = Model.for_config(cfg)
    late.partial_fit(df.iloc[:3].assign(price=float("nan")))
    late.partial_fit(df.iloc[3:300])
    prices = df["price"].iloc[3:300].dropna()
    assert late.pipeline.scaler.mean_[i] == pytest.approx(prices.mean())
    assert late.pipeline.scaler.var_[i] == pytest.approx(prices.var(ddof=0))
