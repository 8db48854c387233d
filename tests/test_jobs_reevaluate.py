"""A corrected window (a windows event with ``"version": n``): re-evaluated once, never
retrained; replays of the same (window, version) do nothing."""
from __future__ import annotations

import json

import pytest

from jobs.dataset import window_iso
from jobs.job import run_job
from jobs.registry import Registry
from jobs.runner import RunSummary, Runner, parse_events
from streams.dev.synthetic_windows import ctr_window
from tests.jobs_support import START, H, on_tmp, set_window_version, write_ctr_windows


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path, retries=0, job_timeout_ms=120_000)


def _corrected(start: int, flips: int = 40):
    """Window ``start``'s rows with ``flips`` negatives turned into clicks (late clicks
    that corrections brought in)."""
    df = ctr_window(start, H, 1500, 1)
    idx = df.index[df["label"] == 0][:flips]
    df.loc[idx, "label"] = 1
    return df


def test_parse_events_keeps_versions_apart():
    s, versions = RunSummary(), {}
    def ev(v=None):
        return json.dumps({"pipeline": "ctr", "window_start": "2026-11-18T11:00:00Z",
                           "manifest": "m", **({"version": v} if v else {})}).encode()
    got = parse_events([ev(), ev(2), ev(2), ev(1), ev(3)], "ctr", s, versions)
    assert list(got) == [START] and versions == {START: 3}
    assert s.duplicates == 2  # (window, 2) twice and (window, 1) twice


def test_a_new_version_is_reevaluated_once_and_not_retrained(cfg):
    w = write_ctr_windows(cfg, 3)
    for s in w:
        run_job(cfg, s)
    reg = Registry(cfg.model.path)
    name = window_iso(w[2])  # its job judged the candidate v0002 next to the champion
    before = (reg.versions(), reg.champion(), reg.metrics(3))
    manifest = set_window_version(cfg, w[2], _corrected(w[2]), 2)
    runner, summary = Runner(cfg), RunSummary()
    runner.run_windows({w[2]: str(manifest)}, summary, {w[2]: 2})
    assert summary.reevaluated == [f"{name}@v2"] and summary.trained == []
    assert (reg.versions(), reg.champion(), reg.metrics(3)) == before  # nothing retrained
    rec = reg.window_record(name)
    assert rec["status"] == "trained" and rec["version"] == "v0003" and rec["data_version"] == 1
    entry = rec["reevaluated"]["2"]
    assert entry["metrics"] == "v0003/metrics-v2.json"
    assert entry["models"] == [before[2]["champion_version"], before[2]["decision"]["candidate"]]
    m2 = json.loads((reg.root / entry["metrics"]).read_text())
    assert m2["data_version"] == 2 and m2["version"] == "v0003"
    old = before[2]["prequential"]["overall"]
    new = m2["prequential"]["overall"]
    assert new["positives"] == old["positives"] + 40 and new["rows"] == old["rows"]
    assert m2["decision"]["applied"] is False and "gain_ci" in m2["decision"]
    # the same (window, version) again: nothing
    stamp = (reg.root / entry["metrics"]).stat().st_mtime_ns
    again = RunSummary()
    runner.run_windows({w[2]: str(manifest)}, again, {w[2]: 2})
    assert again.reevaluated == [] and again.skipped == [name]
    assert (reg.root / entry["metrics"]).stat().st_mtime_ns == stamp
    # an older version's event (a replay of version 1) does nothing either
    runner.run_windows({w[2]: str(manifest)}, again, {w[2]: 1})
    assert again.reevaluated == [] and reg.window_record(name) == rec


def test_a_version_2_event_for_an_untrained_window_trains_it_once(cfg):
    w = write_ctr_windows(cfg, 2)
    run_job(cfg, w[0])
    manifest = set_window_version(cfg, w[1], _corrected(w[1]), 2)
    summary = RunSummary()
    Runner(cfg).run_windows({w[1]: str(manifest)}, summary, {w[1]: 2})
    rec = Registry(cfg.model.path).window_record(window_iso(w[1]))
    assert summary.trained == [window_iso(w[1])] and summary.reevaluated == []
    assert rec["data_version"] == 2 and "reevaluated" not in rec
