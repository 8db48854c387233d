"""The report's label-quality part: the label-delay chart and the per-window statistics.

The chart is the CDF of ``label_delay_ms`` of the label-deciding rows (binary: the
positives) of the latest closed windows, against the label window (a vertical line).
Every recorded delay is inside the window by definition: feedback later than that is
outside it by event time and is not in the dataset, so the chart cannot say how many
such clicks the window misses (the join counts them). What it can say: how fast the
clicks the window keeps come, what a shorter window would keep of them, and, with
``join.correction_window`` on, how many of them the label caught the first time
(``label_version`` 1) rather than as a correction.
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np

from schemas.config import PipelineConfig
from jobs.report_charts import Charts
from jobs.report_data import LabelDelays, fmt_duration, num


def _what(config: PipelineConfig) -> str:
    """What the delays are of: clicks (the positive type) or outcomes."""
    if config.label.kind == "binary":
        return f"{config.label.positive[0]}s" if config.label.positive else "positives"
    return "outcomes"


def delay_sentences(config: PipelineConfig, d: LabelDelays) -> list[str]:
    """The sentences under the delay chart, each saying what its percentage is of."""
    window, what = config.join.label_window_ms, _what(config)
    n = len(d.delays)
    if not n:
        return [f"No {what} in the last {d.windows} closed window(s)."]
    w, half = fmt_duration(window), fmt_duration(window / 2)
    scope = f"the {n} {what} inside the {w} window in the last {d.windows} closed window(s)"
    out = [f"Of {scope}, half came within {fmt_duration(float(np.median(d.delays)))} and 90% "
           f"within {fmt_duration(float(np.quantile(d.delays, 0.9)))}; a window half as long "
           f"({half}) would have caught {d.share_within(window / 2):.0%} of them."]
    horizon = config.join.correction_window_ms
    if horizon:
        first = d.first_label_share()
        if first < 1:
            out.append(f"A {w} window's first label caught {first:.0%} of these {what}; the "
                       f"other {1 - first:.0%} arrived after it was final, within the "
                       f"{fmt_duration(horizon)} correction window (join.correction_window), "
                       "and corrected it (label_version > 1).")
        else:
            out.append(f"A {w} window's first label caught all of these {what}: none arrived "
                       f"after it was final (within the {fmt_duration(horizon)} correction "
                       "window such a one would correct it and show here).")
    else:
        out.append(f"Corrections are off (join.correction_window): {what} inside the window "
                   "that arrive after the label is final are dead-lettered as late and are "
                   "not counted here.")
    out.append(f"{what.capitalize()} later than {w} after their request are outside the window "
               "by definition: the dataset does not record them, so no share above includes "
               "them (the join counts them: dlabel_join_outcomes_total"
               "{outcome=\"feedback_after_window\"}).")
    return out


def chart_label_delay(charts: Charts, config: PipelineConfig, d: LabelDelays) -> None:
    """label_delay.png: the CDF of the delays, all and those labeled the first time,
    with the label window as a vertical line."""
    window, what = config.join.label_window_ms, _what(config)
    fig, ax = charts.figure(f"label delay of {what} (feedback time - request time)",
                            f"share of {what} with delay <= x")
    scale, unit = (60_000, "min") if window >= 600_000 else (1000, "s")
    xs = np.sort(d.delays) / scale
    n = len(xs)
    if n:
        ys = np.arange(1, n + 1) / n
        ax.step(xs, ys, where="post", color="tab:blue", label=f"all {what} in the dataset")
        first = np.sort(d.delays[d.versions <= 1]) / scale
        if config.join.correction_window_ms and len(first) < n:
            ax.step(first, np.arange(1, len(first) + 1) / n, where="post", color="tab:orange",
                    label="labeled the first time (the rest: corrections)")
            ax.annotate(f"{len(first) / n:.0%} the first time", (window / scale, len(first) / n),
                        xytext=(-4, -12), textcoords="offset points", ha="right", fontsize=8,
                        color="tab:orange")
    ax.axvline(window / scale, color="black", ls="--", lw=1)
    ax.text(window / scale, 0.5, f"label window {fmt_duration(window)} ", fontsize=8,
            rotation=90, ha="right", va="center")
    ax.set_xlim(0, window / scale * 1.08)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"delay ({unit})")
    fig.tight_layout()
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.savefig(charts.out / "label_delay.png")
    charts.plt.close(fig)
    charts.images.append(("label_delay.png",
                          f"Label delay CDF against the {fmt_duration(window)} label window",
                          1))


def _share(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def windows_table(windows: list[dict[str, Any]]) -> str:
    """The per-window statistics table (from each manifest's ``stats`` and ``version``);
    ``-`` where a manifest predates them."""
    if not windows:
        return "<p>No closed windows in the dataset.</p>"
    body = []
    for w in windows:
        s = w.get("stats") or {}
        body.append(
            f"<tr><td>{html.escape(w['window'])}</td><td>v{w.get('version') or 1}</td>"
            f"<td>{w.get('rows') if w.get('rows') is not None else '-'}</td>"
            f"<td>{w.get('positives') if w.get('positives') is not None else '-'}</td>"
            f"<td>{_share(num(s, 'join_ratio'))}</td>"
            + "".join(f"<td>{fmt_duration(num(s, 'label_delay_ms', q))}</td>"
                      for q in ("p50", "p90", "p99"))
            + f"<td>{_share(num(s, 'late_in_window_share'))}</td>"
            f"<td>{s.get('corrections', '-') if s else '-'}</td></tr>")
    return ("<table><tr><th>window</th><th>version</th><th>rows</th><th>positives</th>"
            "<th>join ratio</th><th>delay p50</th><th>p90</th><th>p99</th>"
            "<th>late in window</th><th>corrections</th></tr>" + "".join(body) + "</table>")
