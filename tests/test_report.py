"""The HTML report: a one-screen summary, small multiples per slice value, confidence
bands exactly when the jobs recorded intervals, and the label-delay chart's
percentages on a handmade dataset."""
from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.dataset import window_dirname, window_iso
from jobs.job import run_job
from jobs.registry import Registry
from jobs.report import format_table, window_table, write_report
from jobs.report_data import LabelDelays
from jobs.report_delay import delay_sentences
from tests.jobs_support import H, START, on_tmp, write_ctr_windows

MIN = 60_000


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path)


@pytest.fixture
def trained(cfg):
    """Three trained ctr windows (the registry the report reads)."""
    for s in write_ctr_windows(cfg, 3, rows=600):
        run_job(cfg, s)
    return cfg


def _figures(page: str) -> dict[str, tuple[int, str]]:
    """image name -> (panels, caption) of every figure on the page."""
    return {name: (int(panels), caption) for panels, name, caption in re.findall(
        r'<figure data-panels="(\d+)"><img src="([^"]+)"[^>]*><figcaption>(.*?)</figcaption>',
        page)}


def _drop_intervals(m: dict) -> dict:
    """``m`` without any interval: a metrics.json as written before they existed."""
    if isinstance(m, dict):
        return {k: _drop_intervals(v) for k, v in m.items()
                if k not in ("ci", "gain_ci", "regression_ci", "confidence", "ci_method",
                             "evaluated_on")}
    return m


def _rewrite_metrics(cfg, intervals: bool) -> None:
    """Rewrite every version's metrics.json without intervals, then (``intervals``) with
    known ones where the jobs record them (the names the jobs use)."""
    reg = Registry(cfg.model.path)
    for v in reg.versions():
        path = Path(cfg.model.path) / v / "metrics.json"
        m = _drop_intervals(json.loads(path.read_text()))
        if not intervals:
            path.write_text(json.dumps(m))
            continue
        for part in (m.get("prequential"), m["holdout"].get("champion"),
                     m["holdout"].get("challenger")):
            if part:
                part["overall"]["ci"] = {"roc_auc": [part["overall"]["roc_auc"] - 0.05,
                                                     part["overall"]["roc_auc"] + 0.05]}
        d = m["decision"]
        if d.get("gain") is not None:
            d.update(gain_ci=[d["gain"] - 0.031, d["gain"] + 0.029], confidence=0.95,
                     ci_method="delong", evaluated_on="the holdout")
            if isinstance(d.get("worst_slice"), dict):
                d["worst_slice"]["regression_ci"] = [-0.1, 0.2]
        path.write_text(json.dumps(m))


def test_summary_comes_first_and_says_champion_decision_and_drift(trained, tmp_path):
    page = write_report(trained, tmp_path / "r").read_text()
    summary = re.search(r'<div class="summary">(.*?)</div>', page, re.S)
    assert summary and page.index('class="summary"') < page.index("<img")
    text = summary.group(1)
    champion = Registry(trained.model.path).champion()
    assert f"champion {champion}" in text
    for heading in ("Champion", "Last decision", "Promotions", "Drift flagged", "Labels"):
        assert f"<dt>{heading}</dt>" in text
    last = Registry(trained.model.path).metrics("v0003")
    assert html.escape(last["decision"]["reason"]) in text and "window 2026-11-18T13:00:00Z" in text


def test_one_small_multiple_per_slice_value(trained, tmp_path):
    page = write_report(trained, tmp_path / "r").read_text()
    values = sorted(Registry(trained.model.path).metrics("v0003")["slice_label_rate"]["category"])
    assert len(values) == 10
    figs = _figures(page)
    for name in ("metric_category.png", "calibration_category.png"):
        panels, caption = figs[name]
        assert panels == len(values)
        assert caption.split("one panel per value: ")[1].split(".")[0] == ", ".join(values)
    assert figs["label_rate.png"][0] == len(values) + 1  # overall first
    assert figs["drift.png"][0] == 4  # category, price, user_email; the label rate
    for name in figs:
        assert (tmp_path / "r" / name).read_bytes()[:4] == b"\x89PNG"


def test_bands_and_intervals_only_where_the_jobs_recorded_them(trained, tmp_path):
    _rewrite_metrics(trained, intervals=False)
    page = write_report(trained, tmp_path / "before").read_text()
    assert "Shaded" not in page and " at 95%" not in page
    assert all(r["gain_ci"] is None for r in window_table(trained))

    _rewrite_metrics(trained, intervals=True)
    page = write_report(trained, tmp_path / "after").read_text()
    figs = _figures(page)
    for name in ("metric_overall.png", "versions.png"):
        assert "Shaded: the 95% confidence interval." in figs[name][1], name
    # no interval was recorded per slice value: its panels have no band
    assert "Shaded" not in figs["metric_category.png"][1]
    reg = Registry(trained.model.path)
    judged = [i for i, v in enumerate(reg.versions())
              if reg.metrics(v)["decision"].get("gain") is not None]
    assert judged, "no decision with a gain: the registry has nothing to show an interval of"
    gain = reg.metrics(reg.versions()[judged[-1]])["decision"]["gain"]
    cell = f"{gain:+.4f} [{gain - 0.031:+.4f}, {gain + 0.029:+.4f}] at 95%, delong, on the holdout"
    assert cell in page
    rows = window_table(trained)
    assert rows[judged[-1]]["gain_ci"] == pytest.approx((gain - 0.031, gain + 0.029))
    assert f"[{gain - 0.031:+.3f}, {gain + 0.029:+.3f}]" in format_table(rows)


def _write_window(root: Path, start: int, labels: list[int], delays: list[int | None],
                  versions: list[int], manifest_extra: dict) -> None:
    """A closed window with the label-quality columns, in the sink's layout."""
    d = root / window_dirname(start)
    d.mkdir(parents=True)
    n = len(labels)
    ts = pa.array([start + i * 1000 for i in range(n)], pa.timestamp("ms", tz="UTC"))
    table = pa.table({"request_id": [f"r{start}-{i}" for i in range(n)], "request_ts": ts,
                      "window_start": pa.array([start] * n, pa.timestamp("ms", tz="UTC")),
                      "label": pa.array(labels, pa.int64()), "label_ts": ts,
                      "prediction": pa.array([0.1] * n), "model_version": ["v1"] * n,
                      "label_delay_ms": pa.array(delays, pa.int64()),
                      "label_version": pa.array(versions, pa.int64()),
                      "category": ["books"] * n})
    pq.write_table(table, d / "data-00000.parquet")
    (d / "_manifest.json").write_text(json.dumps({
        "format": 1, "pipeline": "ctr", "window_start": window_iso(start),
        "window_end": window_iso(start + H), "window_start_ms": start,
        "window_end_ms": start + H, "files": [{"path": "data-00000.parquet", "rows": n}],
        "rows": n, "positives": sum(labels), **manifest_extra}))


def _delay_dataset(cfg) -> None:
    """Two windows, 10 clicks: 8 labeled the first time (6 of them within 15m), 2 as
    corrections (one within 15m); and 5 negatives without a delay."""
    root = Path(cfg.dataset.path)
    _write_window(root, START, [1, 1, 1, 1, 1, 0, 0, 0],
                  [1 * MIN, 2 * MIN, 3 * MIN, 20 * MIN, 10 * MIN, None, None, None],
                  [1, 1, 1, 1, 2, 1, 1, 1],
                  {"version": 2, "stats": {"requests": 8, "join_ratio": 0.625,
                                           "label_delay_ms": {"p50": 180000, "p90": 1200000,
                                                              "p99": 1200000},
                                           "late_in_window_share": 0.0, "corrections": 1}})
    _write_window(root, START + H, [1, 1, 1, 1, 1, 0, 0],
                  [4 * MIN, 5 * MIN, 14 * MIN, 22 * MIN, 28 * MIN, None, None],
                  [1, 1, 1, 1, 2, 1, 1], {})  # a manifest from before window statistics


def test_label_delay_chart_and_its_percentages(cfg, tmp_path):
    cfg = dataclasses.replace(cfg, join=dataclasses.replace(cfg.join,
                                                            correction_window_ms=24 * 60 * MIN))
    _delay_dataset(cfg)
    page = write_report(cfg, tmp_path / "r").read_text()
    assert "label_delay.png" in _figures(page)
    text = " ".join(re.findall(r'<p class="delay">(.*?)</p>', page))
    assert "Of the 10 clicks inside the 30m window in the last 2 closed window(s)" in text
    assert "a window half as long (15m) would have caught 70% of them" in text
    assert ("A 30m window&#x27;s first label caught 80% of these clicks; the other 20% "
            "arrived after it was final, within the 24h correction window") in text
    assert "the dataset does not record them" in text
    # the per-window table: the manifest's statistics and version; '-' before them
    assert ("<td>2026-11-18T11:00:00Z</td><td>v2</td><td>8</td><td>5</td><td>62.5%</td>"
            "<td>3m</td><td>20m</td><td>20m</td><td>0.0%</td><td>1</td>") in page
    assert ("<td>2026-11-18T12:00:00Z</td><td>v1</td><td>7</td><td>5</td><td>-</td>"
            "<td>-</td><td>-</td><td>-</td><td>-</td><td>-</td>") in page
    assert "1 corrections in all, 1 window(s) rewritten as a new version" in page


def test_label_delay_without_corrections_says_so(cfg, tmp_path):
    _delay_dataset(cfg)
    page = write_report(cfg, tmp_path / "r").read_text()
    assert "Corrections are off (join.correction_window)" in page
    assert "first label caught" not in page


def test_no_delay_chart_for_windows_without_the_column(cfg, tmp_path):
    write_ctr_windows(cfg, 1, rows=50)
    page = write_report(cfg, tmp_path / "r").read_text()
    assert "label_delay.png" not in page and '<p class="delay">' not in page
    assert "<td>v1</td>" in page  # the window is listed, its statistics as '-'


def test_delay_sentences_when_every_label_was_right_the_first_time(cfg):
    cfg = dataclasses.replace(cfg, join=dataclasses.replace(cfg.join,
                                                            correction_window_ms=6 * 60 * MIN))
    d = LabelDelays(np.array([MIN, 2 * MIN, 20 * MIN], dtype=float), np.ones(3), windows=1)
    text = " ".join(delay_sentences(cfg, d))
    assert "first label caught all of these clicks: none arrived after it was final" in text
    assert "(15m) would have caught 67% of them" in text and "6h correction window" in text
