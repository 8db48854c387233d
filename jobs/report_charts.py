"""The report's PNG charts of the retraining history (matplotlib, Agg backend).

One x position per trained window. Confidence intervals, when the jobs wrote them
(``ci`` in an evaluation's metrics, ``gain_ci`` in the decision), are drawn as shaded
bands, and the caption says so; without them (older registries) the lines alone.
Per-slice charts are small multiples: one small panel per slice value, on a shared
y axis, with the overall line in grey for reference.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from schemas.config import PipelineConfig
from jobs.report_data import History, confidence, get, interval, metric_ci, num

#: at most this many slice values get a panel (the most frequent ones)
MAX_PANELS = 12


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported here: only reports need it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


class Charts:
    """Figures saved under ``out``: one x position per window labelled ``labels``;
    ``images`` lists ``(file name, caption, panels)`` in page order."""

    def __init__(self, plt: Any, out: Path, labels: list[str]) -> None:
        self.plt, self.out, self.labels = plt, out, labels
        self.x = list(range(len(labels)))
        self.images: list[tuple[str, str, int]] = []

    def figure(self, title: str, ylabel: str) -> tuple[Any, Any]:
        """A new wide (figure, axes) with a title, a y label and a light grid."""
        fig, ax = self.plt.subplots(figsize=(10, 4), dpi=90)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        return fig, ax

    def grid(self, title: str, n: int, cols: int = 4, sharey: bool = True) -> tuple[Any, list]:
        """A figure of ``n`` small panels (at least one), ``cols`` per row, sharing the x
        axis (and the y axis); returns (figure, the first ``n`` axes)."""
        n = max(1, n)
        cols = min(cols, n)
        rows = math.ceil(n / cols)
        fig, axes = self.plt.subplots(rows, cols, figsize=(10, 0.4 + 2.1 * rows), dpi=90,
                                      sharex=True, sharey=sharey, squeeze=False)
        flat = [a for row in axes for a in row]
        for ax in flat[n:]:
            ax.set_visible(False)
        for i, ax in enumerate(flat[:n]):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            if i + cols >= n:  # nothing visible below it: it labels its column's x axis
                ax.xaxis.set_tick_params(labelbottom=True)
        fig.suptitle(title, fontsize=11)
        return fig, flat[:n]

    def ticks(self, ax: Any, most: int = 12) -> None:
        """Label at most ``most`` windows on ``ax``'s x axis (date above time)."""
        if self.x:
            step = max(1, math.ceil(len(self.x) / most))
            ax.set_xticks(self.x[::step], [s.replace(" ", "\n") for s in self.labels[::step]],
                          fontsize=7)

    def band(self, ax: Any, cis: list[tuple[float, float] | None], color: Any) -> bool:
        """Shade the intervals ``cis`` (one per window, None: none); True if any."""
        xs = {i for i, c in enumerate(cis) if c is not None}
        if not xs:
            return False
        lo = [c[0] if c else math.nan for c in cis]
        hi = [c[1] if c else math.nan for c in cis]
        ax.fill_between(self.x, lo, hi, where=[c is not None for c in cis], color=color,
                        alpha=0.2, lw=0, interpolate=False)
        # a window whose neighbours have no interval still shows its own, as a bar
        alone = [i for i in xs if (i - 1 not in xs) and (i + 1 not in xs)]
        alone = sorted(alone)
        ax.vlines(alone, [lo[i] for i in alone], [hi[i] for i in alone], color=color,
                  alpha=0.35, lw=3)
        return True

    def save(self, fig: Any, axes: list, name: str, caption: str, panels: int = 1,
             most_ticks: int | None = None) -> None:
        """Label the x axes (``most_ticks`` windows each; default 12 on a single chart, 4
        on small panels), add legends, write ``name`` and list it with ``caption``."""
        for ax in axes:
            if ax.get_visible():
                self.ticks(ax, most_ticks or (12 if len(axes) == 1 else 4))
                if len(axes) == 1 and ax.get_legend_handles_labels()[0]:
                    ax.legend(fontsize=7, ncol=2, loc="best")
        fig.tight_layout()
        fig.savefig(self.out / name)
        self.plt.close(fig)
        self.images.append((name, caption, panels))


def band_note(drawn: bool, hist: History) -> str:
    """The caption's sentence on the shaded bands, or nothing when none was drawn."""
    if not drawn:
        return ""
    level = confidence(hist)
    return (f" Shaded: the {level:.0%} confidence interval." if level is not None
            else " Shaded: the confidence interval.")


def promoted(hist: History) -> list[int]:
    """The x positions of the windows whose version was promoted."""
    return [i for i, (rec, _) in enumerate(hist) if rec.get("promoted")]


def slice_panels(hist: History, feature: str) -> list[str]:
    """The values of ``feature`` that get a panel: the ``MAX_PANELS`` with the most rows
    over all windows, sorted by name."""
    rows: dict[str, int] = {}
    for _, m in hist:
        for v, d in (get(m, "slice_label_rate", feature) or {}).items():
            rows[v] = rows.get(v, 0) + int(num(d, "rows") or 0)
    top = sorted(rows, key=lambda v: (-rows[v], v))[:MAX_PANELS]
    return sorted(top)


def series(hist: History, *path: str) -> list[float]:
    """The number at ``path`` per window, NaN where missing (a gap in a line)."""
    return [math.nan if (v := num(m, *path)) is None else v for _, m in hist]


def chart_metric(charts: Charts, hist: History, metric: str) -> None:
    """metric_overall.png: the champion's prequential metric and the logged predictions',
    with their intervals when present."""
    fig, ax = charts.figure(f"{metric} per window (champion, before learning from the window)",
                            metric)
    line, = ax.plot(charts.x, series(hist, "prequential", "overall", metric), "o-",
                    label="champion (prequential)")
    drawn = charts.band(ax, [metric_ci(get(m, "prequential", "overall"), metric)
                             for _, m in hist], line.get_color())
    logged, = ax.plot(charts.x, series(hist, "logged", "overall", metric), "--",
                      label="logged predictions")
    drawn |= charts.band(ax, [metric_ci(get(m, "logged", "overall"), metric) for _, m in hist],
                         logged.get_color())
    for i in promoted(hist):
        ax.axvline(i, color="green", alpha=0.15)
    charts.save(fig, [ax], "metric_overall.png",
                f"Champion {metric} per window; green lines: promotions."
                + band_note(drawn, hist))


def _multiples(charts: Charts, hist: History, feature: str, title: str,
               value: Callable[[dict, str], float | None],
               ci: Callable[[dict, str], tuple[float, float] | None],
               overall: list[float] | None, zero: bool = False) -> tuple[Any, list, bool]:
    """One panel per slice value of ``feature``: ``value(metrics, v)`` per window, its
    interval ``ci(metrics, v)`` shaded, ``overall`` in grey; (figure, axes, bands drawn)."""
    values = slice_panels(hist, feature)
    fig, axes = charts.grid(title, len(values))
    drawn = False
    for ax, v in zip(axes, values):
        if overall is not None:
            ax.plot(charts.x, overall, "-", color="grey", lw=0.8, alpha=0.6)
        ys = [math.nan if (y := value(m, v)) is None else y for _, m in hist]
        line, = ax.plot(charts.x, ys, ".-", color="tab:blue", lw=1.2, ms=3)
        drawn |= charts.band(ax, [ci(m, v) for _, m in hist], line.get_color())
        if zero:
            ax.axhline(0, color="black", lw=0.7)
        ax.set_title(v, fontsize=9)
    if not values:
        axes[0].text(0.5, 0.5, "no trained windows yet", ha="center", va="center",
                     transform=axes[0].transAxes, color="grey")
    return fig, axes, drawn


def chart_slices(charts: Charts, config: PipelineConfig, hist: History, metric: str,
                 feature: str) -> None:
    """metric_<feature>.png and (binary) calibration_<feature>.png: small multiples."""
    values = slice_panels(hist, feature)
    names = ", ".join(values)

    def entry(m: dict, v: str) -> Any:
        return get(m, "prequential", "slices", feature, v)

    fig, axes, drawn = _multiples(
        charts, hist, feature, f"{metric} per {feature} (champion, prequential; grey: overall)",
        lambda m, v: num(entry(m, v), metric), lambda m, v: metric_ci(entry(m, v), metric),
        series(hist, "prequential", "overall", metric))
    charts.save(fig, axes, f"metric_{feature}.png",
                f"Champion {metric} per value of {feature}, one panel per value: {names}."
                + band_note(drawn, hist), len(values))
    if config.label.kind != "binary":
        return
    fig, axes, drawn = _multiples(
        charts, hist, feature, f"calibration gap per {feature} (mean prediction - label rate)",
        lambda m, v: num(entry(m, v), "calibration_gap"),
        lambda m, v: metric_ci(entry(m, v), "calibration_gap"),
        series(hist, "prequential", "overall", "calibration_gap"), zero=True)
    charts.save(fig, axes, f"calibration_{feature}.png",
                f"Calibration gap per value of {feature} (far from 0: the model is wrong "
                f"about how often it happens), one panel per value: {names}."
                + band_note(drawn, hist),
                len(values))


def chart_label_rate(charts: Charts, config: PipelineConfig, hist: History) -> None:
    """label_rate.png: overall, then one panel per value of the first slice feature."""
    what = "label rate" if config.label.kind == "binary" else "mean label"
    feature = config.slices[0] if config.slices else None
    values = slice_panels(hist, feature) if feature else []
    overall = [m["label_rate"] for _, m in hist]
    fig, axes = charts.grid(f"{what} per window" + (f", overall and per {feature}"
                                                    if feature else ""), 1 + len(values))
    axes[0].plot(charts.x, overall, "o-", color="black", ms=3)
    axes[0].set_title("overall", fontsize=9)
    for ax, v in zip(axes[1:], values):
        ax.plot(charts.x, overall, "-", color="grey", lw=0.8, alpha=0.6)
        ax.plot(charts.x, series(hist, "slice_label_rate", feature, v, "label_rate"), ".-",
                color="tab:purple", ms=3)
        ax.set_title(f"{feature}={v}", fontsize=9)
    charts.save(fig, axes, "label_rate.png",
                f"{what.capitalize()}, overall and per slice value (grey: overall)",
                len(axes))


_MEASURES = {"psi": "PSI", "linf": "L-inf"}


def chart_drift(charts: Charts, hist: History) -> None:
    """drift.png: one panel per feature and one for the label rate, each on its own
    linear axis with its threshold (dashed) and red crosses where it was flagged."""
    feats = sorted({f for _, m in hist for f in (get(m, "drift", "features") or {})})
    fig, axes = charts.grid("drift against the previous window (dashed: threshold; "
                            "x: flagged)", len(feats) + 1, cols=3, sharey=False)
    panels = [(f, ("drift", "features", f), "value") for f in feats]
    panels.append(("label", ("drift", "label"), "change"))
    for ax, (name, path, key) in zip(axes, panels):
        ys = [abs(v) if (v := num(m, *path, key)) is not None else math.nan for _, m in hist]
        ax.plot(charts.x, ys, ".-", color="tab:blue", ms=3)
        limits = [num(m, *path, "threshold") for _, m in hist]
        limit = next((t for t in reversed(limits) if t is not None), None)
        if limit is not None:
            ax.axhline(limit, color="tab:red", ls="--", lw=0.8)
        flagged = [i for i, (_, m) in enumerate(hist) if get(m, *path, "flagged")]
        ax.plot(flagged, [ys[i] for i in flagged], "x", color="tab:red", ms=7)
        top = max([y for y in ys if not math.isnan(y)] + [limit or 0.0, 1e-3])
        ax.set_ylim(0, top * 1.15)
        measure = next((get(m, *path, "measure") for _, m in hist if get(m, *path, "measure")),
                       None)
        ax.set_title(name if key == "value" else "label rate (triangles: a slice's flagged)",
                     fontsize=9)
        ax.set_ylabel(_MEASURES.get(measure, "|change|") if measure else "|change|",
                      fontsize=8)
        if key == "change":
            sliced = [i for i, (_, m) in enumerate(hist)
                      if any(f.startswith("label[") for f in get(m, "drift", "flagged") or [])]
            ax.plot(sliced, [top * 1.08] * len(sliced), "v", color="tab:orange", ms=6)
    charts.save(fig, axes, "drift.png",
                "Drift per feature against the previous window, each on its own linear "
                "scale: PSI (population stability index) for numbers, L-inf (the largest "
                "change of a value's share) for categories, the absolute change for the "
                "label rate; dashed: the threshold; crosses: flagged; orange triangles: a "
                "slice's label rate flagged", len(axes))


def chart_versions(charts: Charts, hist: History, metric: str, min_gain: float = 0.0) -> None:
    """versions.png: champion vs challenger where the decision was made, and the gain
    with its interval against ``min_gain`` (dashed); promoted ones filled."""
    fig, axes = charts.grid(f"promotion decisions ({metric}; filled: promoted)", 2, cols=1,
                            sharey=False)
    ax, gx = axes
    up = promoted(hist)
    ax.plot(charts.x, series(hist, "holdout", "champion", "overall", metric), "s-",
            color="grey", ms=3, label="champion")
    drawn = charts.band(ax, [metric_ci(get(m, "holdout", "champion", "overall"), metric)
                             for _, m in hist], "grey")
    ys = series(hist, "holdout", "challenger", "overall", metric)
    ax.plot(charts.x, ys, "o", mfc="none", color="tab:blue", ms=4, label="challenger")
    drawn |= charts.band(ax, [metric_ci(get(m, "holdout", "challenger", "overall"), metric)
                              for _, m in hist], "tab:blue")
    ax.plot(up, [ys[i] for i in up], "o", color="tab:blue", ms=4, label="promoted")
    ax.set_ylabel(metric, fontsize=8)
    ax.legend(fontsize=7, ncol=3, loc="best")
    gains = series(hist, "decision", "gain")
    gx.plot(charts.x, gains, "o", mfc="none", color="tab:green", ms=4)
    gx.plot(up, [gains[i] for i in up], "o", color="tab:green", ms=4)
    drawn |= charts.band(gx, [interval(get(m, "decision", "gain_ci")) for _, m in hist],
                         "tab:green")
    gx.axhline(0, color="black", lw=0.7)
    if min_gain:
        gx.axhline(min_gain, color="tab:green", ls="--", lw=0.8)
    gx.set_ylabel("gain (challenger - champion)", fontsize=8)
    charts.save(fig, axes, "versions.png",
                "Versions and promotions: top, both models where the decision was made; "
                "bottom, the challenger's gain." + band_note(drawn, hist), 2, most_ticks=12)
