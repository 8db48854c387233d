"""What happened, window by window: the per-window table and the HTML report.

``window_table`` gives one row per trained window (what the demo prints), with the
decision's gain (and its interval when the job computed one) and the window's data
version and corrections from its manifest. ``write_report`` writes ``index.html`` with
PNG charts (matplotlib, Agg backend): a one-screen summary, the champion's prequential
metric per window with its confidence band, small multiples per slice value (metric,
calibration gap, label rate), drift per feature on readable axes, the promotion
decisions, and the label quality: the label-delay CDF against the window and the
per-window statistics (``jobs.report_charts``, ``jobs.report_delay``,
``jobs.report_page``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig
from jobs.registry import Registry
from jobs.report_charts import (Charts, chart_drift, chart_label_rate, chart_metric,
                                chart_slices, chart_versions, pyplot)
from jobs.report_data import closed_windows, fmt_interval, history, interval, label_delays
from jobs.report_delay import chart_label_delay, delay_sentences, windows_table
from jobs.report_page import decisions_table, page, summary_html


def main_metric(config: PipelineConfig) -> str:
    """The metric charts and tables show: the promotion metric."""
    return config.model.promotion.metric


def window_table(config: PipelineConfig, slice_feature: str | None = None,
                 slice_value: str | None = None) -> list[dict[str, Any]]:
    """One row per trained window, in window order.

    Keys: ``window, rows, label_rate, champion`` (the version that served the window),
    ``metric`` (its name), ``champion_metric`` (prequential, overall),
    ``slice_metric``, ``slice_label_rate``, ``slice_calibration_gap`` (for
    ``slice_feature=slice_value``; default the first slice feature and no value),
    ``logged_metric`` (the logged predictions), ``version``, ``promoted``, ``drift``
    (flagged names), ``gain`` and ``gain_ci`` (the decision's, ``(lo, hi)``),
    ``window_version`` and ``corrections`` (the window's manifest now: its version and
    the labels corrected after they were final). A value that does not exist (no
    champion yet, a single-class slice, no interval, a manifest without statistics)
    is None.
    """
    metric = main_metric(config)
    feature = slice_feature or (config.slices[0] if config.slices else None)
    manifests = {w["window"]: w for w in closed_windows(config)}
    rows = []
    for rec, m in history(config):
        pq = m.get("prequential")
        sl = (pq or {}).get("slices", {}).get(feature, {}).get(slice_value, {}) \
            if feature and slice_value else {}
        rate = m.get("slice_label_rate", {}).get(feature, {}).get(slice_value, {})
        decision = m.get("decision") or {}
        data = manifests.get(m["window"]) or {}
        rows.append({
            "window": m["window"], "rows": m["rows"], "label_rate": m["label_rate"],
            "champion": m.get("champion_version"), "metric": metric,
            "champion_metric": pq["overall"].get(metric) if pq else None,
            "slice": f"{feature}={slice_value}" if feature and slice_value else None,
            "slice_metric": sl.get(metric), "slice_label_rate": rate.get("label_rate"),
            "slice_calibration_gap": sl.get("calibration_gap"),
            "logged_metric": (m.get("logged") or {}).get("overall", {}).get(metric),
            "version": rec["version"], "promoted": bool(rec.get("promoted")),
            "drift": (m.get("drift") or {}).get("flagged", []),
            "gain": decision.get("gain"), "gain_ci": interval(decision.get("gain_ci")),
            "window_version": data.get("version"),
            "corrections": (data.get("stats") or {}).get("corrections"),
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table as fixed-width text (what the demo prints)."""
    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    def gain(r: dict[str, Any]) -> str:
        ci = r.get("gain_ci")
        return f(r.get("gain"), "+.3f") + (" " + fmt_interval(ci) if ci else "")
    metric = rows[0]["metric"] if rows else "metric"
    sl = rows[0]["slice"] if rows and rows[0]["slice"] else "slice"
    width = max([len(gain(r)) for r in rows] + [6])
    head = (f"{'window':<21}{'rows':>7} {'label':>8}  {'champion ' + metric:>18}  "
            f"{sl + ' ' + metric:>30}{'rate':>7}{'cal.gap':>8}  {'version':<8}{'promoted':<9}"
            f"{'gain':<{width}}  {'data':<5}{'corr.':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        wv = r.get("window_version")
        lines.append(f"{r['window']:<21}{r['rows']:>7} {f(r['label_rate']):>8}  "
                     f"{f(r['champion_metric']):>18}  {f(r['slice_metric']):>30}"
                     f"{f(r['slice_label_rate']):>7}{f(r['slice_calibration_gap'], '+.3f'):>8}  "
                     f"{r['version']:<8}{'yes' if r['promoted'] else 'no':<9}"
                     f"{gain(r):<{width}}  {'v' + str(wv) if wv else '-':<5}"
                     f"{f(r.get('corrections'), 'd'):>5}")
    return "\n".join(lines)


def write_report(config: PipelineConfig, out_dir: str | Path | None = None) -> Path:
    """Write the HTML report and its PNG charts; returns the path of ``index.html``.

    Charts: the champion's metric (bands where the jobs recorded intervals), per slice
    feature small multiples of the metric and (binary) the calibration gap, the label
    rate, drift, the promotion decisions, and the label-delay CDF when the dataset's
    windows carry ``label_delay_ms``.
    """
    plt = pyplot()
    out = Path(out_dir) if out_dir else Path(config.model.path) / "report"
    out.mkdir(parents=True, exist_ok=True)
    hist = history(config)
    metric = main_metric(config)
    charts = Charts(plt, out, [m["window"][5:16].replace("T", " ") for _, m in hist])
    chart_metric(charts, hist, metric)
    for feature in config.slices:
        chart_slices(charts, config, hist, metric, feature)
    chart_label_rate(charts, config, hist)
    chart_drift(charts, hist)
    chart_versions(charts, hist, metric, config.model.promotion.min_gain)
    windows = closed_windows(config)
    delays = label_delays(windows)
    delay_text: list[str] = []
    if delays is not None:
        chart_label_delay(charts, config, delays)
        delay_text = delay_sentences(config, delays)
    champion = Registry(config.model.path).champion()
    index = out / "index.html"
    index.write_text(page(config, summary_html(config, hist, metric, champion, windows),
                          charts.images, delay_text, decisions_table(hist, champion),
                          windows_table(windows)), encoding="utf-8")
    return index
