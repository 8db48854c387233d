"""What happened, window by window: the per-window table and the HTML report.

``window_table`` gives one row per trained window (what the demo prints);
``write_report`` writes ``index.html`` with PNG charts (matplotlib, Agg backend):
the champion's prequential metric per window, overall and per slice value; the
calibration gap per slice value (binary); the label rate; drift per feature; and the
versions with their promotions.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig
from jobs.registry import Registry


def _history(config: PipelineConfig) -> list[tuple[dict, dict]]:
    """(window record, metrics) of every trained window with a version, in window order."""
    reg = Registry(config.model.path)
    out = []
    for name, rec in sorted(reg.window_records().items()):
        if rec.get("status") == "trained" and rec.get("version"):
            out.append((rec, reg.metrics(rec["version"])))
    return out


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
    (flagged names). A value that does not exist (no champion yet, a single-class
    slice) is None.
    """
    metric = main_metric(config)
    feature = slice_feature or (config.slices[0] if config.slices else None)
    rows = []
    for rec, m in _history(config):
        pq = m.get("prequential")
        sl = (pq or {}).get("slices", {}).get(feature, {}).get(slice_value, {}) \
            if feature and slice_value else {}
        rate = m.get("slice_label_rate", {}).get(feature, {}).get(slice_value, {})
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
        })
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The table as fixed-width text (what the demo prints)."""
    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
    metric = rows[0]["metric"] if rows else "metric"
    sl = rows[0]["slice"] if rows and rows[0]["slice"] else "slice"
    head = (f"{'window':<21}{'rows':>7} {'label':>8}  {'champion ' + metric:>18}  "
            f"{sl + ' ' + metric:>30}{'rate':>7}{'cal.gap':>8}  {'version':<8}{'promoted':<9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['window']:<21}{r['rows']:>7} {f(r['label_rate']):>8}  "
                     f"{f(r['champion_metric']):>18}  {f(r['slice_metric']):>30}"
                     f"{f(r['slice_label_rate']):>7}{f(r['slice_calibration_gap'], '+.3f'):>8}  "
                     f"{r['version']:<8}{'yes' if r['promoted'] else 'no':<9}")
    return "\n".join(lines)


def write_report(config: PipelineConfig, out_dir: str | Path | None = None) -> Path:
    """Write the HTML report and its PNG charts; returns the path of ``index.html``."""
    plt = _pyplot()
    out = Path(out_dir) if out_dir else Path(config.model.path) / "report"
    out.mkdir(parents=True, exist_ok=True)
    hist = _history(config)
    metric = main_metric(config)
    charts = _Charts(plt, out, [m["window"][5:16].replace("T", " ") for _, m in hist])
    _chart_metric(charts, hist, metric)
    for feature in config.slices:
        _chart_slice(charts, config, hist, metric, feature)
    _chart_label_rate(charts, config, hist)
    _chart_drift(charts, hist)
    _chart_versions(charts, hist, metric)
    champion = Registry(config.model.path).champion()
    index = out / "index.html"
    index.write_text(_page(config, hist, metric, champion, charts.images), encoding="utf-8")
    return index


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported here: only reports need it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class _Charts:
    """The report's PNG charts: one x position per trained window, saved under ``out``."""

    def __init__(self, plt: Any, out: Path, labels: list[str]) -> None:
        self.plt, self.out, self.labels = plt, out, labels
        self.x = list(range(len(labels)))
        self.images: list[tuple[str, str]] = []  # (file name, caption), in page order

    def figure(self, title: str, ylabel: str) -> tuple[Any, Any]:
        """A new (figure, axes) with a title, a y label and a light grid."""
        fig, ax = self.plt.subplots(figsize=(10, 4), dpi=90)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    def save(self, fig: Any, ax: Any, name: str, caption: str) -> None:
        """Label the windows on the x axis, add the legend, write ``name`` and list it."""
        x, labels = self.x, self.labels
        if x:
            step = max(1, len(x) // 12)
            ax.set_xticks(x[::step], labels[::step], rotation=30, ha="right", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        fig.savefig(self.out / name)
        self.plt.close(fig)
        self.images.append((name, caption))


def _get(m: dict, *path: str) -> float | None:
    """The number at ``path`` in nested dicts, or None when missing or not a number."""
    for p in path:
        m = (m or {}).get(p) if isinstance(m, dict) else None
    return m if isinstance(m, (int, float)) else None


def _nan(v: float | None) -> float:
    """None as NaN (a gap in a line chart)."""
    return math.nan if v is None else v


def _promoted(hist: list[tuple[dict, dict]]) -> list[int]:
    """The x positions of the windows whose version was promoted."""
    return [i for i, (rec, _) in enumerate(hist) if rec.get("promoted")]


def _seen_values(hist: list[tuple[dict, dict]], feature: str) -> list[str]:
    """The first 12 values of ``feature`` seen in any window, sorted."""
    return sorted({v for _, m in hist for v in m.get("slice_label_rate", {})
                   .get(feature, {})})[:12]


def _chart_metric(charts: _Charts, hist: list[tuple[dict, dict]], metric: str) -> None:
    """metric_overall.png: the champion's prequential metric and the logged predictions'."""
    x = charts.x
    fig, ax = charts.figure(f"{metric} per window (champion, before learning from the window)",
                            metric)
    ax.plot(x, [_nan(_get(m, "prequential", "overall", metric)) for _, m in hist], "o-",
            label="champion (prequential)")
    ax.plot(x, [_nan(_get(m, "logged", "overall", metric)) for _, m in hist], "--",
            label="logged predictions")
    for i in _promoted(hist):
        ax.axvline(i, color="green", alpha=0.15)
    charts.save(fig, ax, "metric_overall.png",
                f"Champion {metric} per window; green lines: promotions")


def _chart_slice(charts: _Charts, config: PipelineConfig, hist: list[tuple[dict, dict]],
                 metric: str, feature: str) -> None:
    """metric_<feature>.png per slice value, and calibration_<feature>.png (binary)."""
    x = charts.x
    values = _seen_values(hist, feature)
    fig, ax = charts.figure(f"{metric} per {feature} (champion, prequential)", metric)
    for v in values:
        ax.plot(x, [_nan(_get(m, "prequential", "slices", feature, v, metric))
                    for _, m in hist], ".-", label=v)
    charts.save(fig, ax, f"metric_{feature}.png", f"Champion {metric} per value of {feature}")
    if config.label.kind != "binary":
        return
    fig, ax = charts.figure(f"calibration gap per {feature} (mean prediction - label rate)",
                            "gap")
    for v in values:
        ax.plot(x, [_nan(_get(m, "prequential", "slices", feature, v, "calibration_gap"))
                    for _, m in hist], ".-", label=v)
    ax.axhline(0, color="black", lw=0.8)
    charts.save(fig, ax, f"calibration_{feature}.png",
                f"Calibration gap per value of {feature}: far from 0 = the model is wrong "
                "about how often it happens")


def _chart_label_rate(charts: _Charts, config: PipelineConfig,
                      hist: list[tuple[dict, dict]]) -> None:
    """label_rate.png: overall, and per value of the first slice feature."""
    x = charts.x
    fig, ax = charts.figure("label rate per window" if config.label.kind == "binary"
                            else "mean label per window", "label")
    ax.plot(x, [m["label_rate"] for _, m in hist], "o-", color="black", label="overall")
    if config.slices:
        feature = config.slices[0]
        for v in _seen_values(hist, feature):
            ax.plot(x, [_nan(_get(m, "slice_label_rate", feature, v, "label_rate"))
                        for _, m in hist], ":", label=f"{feature}={v}")
    charts.save(fig, ax, "label_rate.png", "Label rate, overall and per slice value")


def _chart_drift(charts: _Charts, hist: list[tuple[dict, dict]]) -> None:
    """drift.png: each feature's drift value, crosses where it was flagged."""
    x = charts.x
    fig, ax = charts.figure("drift against the previous window (PSI numeric, L-inf categorical)",
                            "drift")
    feats = sorted({f for _, m in hist for f in ((m.get("drift") or {}).get("features") or {})})
    for f in feats:
        ys = [_nan(_get(m, "drift", "features", f, "value")) for _, m in hist]
        line, = ax.plot(x, ys, ".-", label=f)
        flagged = [i for i, (_, m) in enumerate(hist)
                   if ((m.get("drift") or {}).get("features", {}).get(f) or {}).get("flagged")]
        ax.plot(flagged, [ys[i] for i in flagged], "x", color=line.get_color(), ms=10)
    ax.set_yscale("symlog", linthresh=0.05)
    charts.save(fig, ax, "drift.png", "Drift per feature; crosses: above the threshold")


def _chart_versions(charts: _Charts, hist: list[tuple[dict, dict]], metric: str) -> None:
    """versions.png: champion vs challenger on each holdout, promoted ones filled."""
    x = charts.x
    promoted = _promoted(hist)
    fig, ax = charts.figure(f"holdout {metric}: champion vs challenger (filled: promoted)",
                            metric)
    ax.plot(x, [_nan(_get(m, "holdout", "champion", "overall", metric)) for _, m in hist],
            "s-", color="grey", label="champion")
    ys = [_nan(_get(m, "holdout", "challenger", "overall", metric)) for _, m in hist]
    ax.plot(x, ys, "o", mfc="none", color="tab:blue", label="challenger")
    ax.plot(promoted, [ys[i] for i in promoted], "o", color="tab:blue", label="promoted")
    charts.save(fig, ax, "versions.png", "Versions and promotions")


def _versions_rows(hist: list[tuple[dict, dict]], champion: str | None) -> str:
    """The versions table's HTML rows, one per trained window."""
    return "".join(
        f"<tr><td>{html.escape(rec['version'])}"
        f"{' (champion)' if rec['version'] == champion else ''}"
        f"</td><td>{html.escape(m['window'])}</td><td>{m['rows']}</td>"
        f"<td>{html.escape(str(m.get('champion_version') or '-'))}</td>"
        f"<td>{'yes' if rec.get('promoted') else 'no'}</td>"
        f"<td>{html.escape(m['decision']['reason'])}</td>"
        f"<td>{html.escape(', '.join((m.get('drift') or {}).get('flagged', [])) or '-')}</td></tr>"
        for rec, m in hist)


def _page(config: PipelineConfig, hist: list[tuple[dict, dict]], metric: str,
          champion: str | None, images: list[tuple[str, str]]) -> str:
    """The whole ``index.html``: summary, the charts with captions, the versions table."""
    rows = _versions_rows(hist, champion)
    imgs = "".join(f'<figure><img src="{n}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}'
                   f"</figcaption></figure>" for n, c in images)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dlabel report: {html.escape(config.pipeline)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
img{{max-width:100%}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}</style></head><body>
<h1>dlabel retraining report: {html.escape(config.pipeline)}</h1>
<p>{len(hist)} trained windows; champion {html.escape(champion or 'none')};
estimator {html.escape(config.model.estimator)}; promotion metric {html.escape(metric)}.</p>
{imgs}
<h2>Versions</h2>
<table><tr><th>version</th><th>window</th><th>rows</th><th>parent</th><th>promoted</th>
<th>decision</th><th>drift flagged</th></tr>{rows}</table>
</body></html>
"""
