"""The report's HTML: a one-screen summary, the charts, the decisions, the windows.

The summary answers first what a reader comes for: which model serves, what the last
decision was and why (with the gain's confidence interval when the job computed one),
what drift was flagged, and how good the labels are (join ratio, delay, corrections).
"""
from __future__ import annotations

import html
from typing import Any

from schemas.config import PipelineConfig
from jobs.report_data import History, fmt_duration, fmt_interval, get, interval, num

_CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
img{max-width:100%} table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px} .summary{background:#f6f8fa;
border:1px solid #ddd;padding:.6em 1.2em;margin-bottom:1.5em}
.summary dt{font-weight:bold;margin-top:.4em} .summary dd{margin-left:1.2em}
.promoted{color:#1a7f37} .kept{color:#555} .drift{color:#b35900}
figcaption{font-size:13px;color:#444}"""


def gain_text(decision: dict[str, Any]) -> str:
    """The decision's gain, with its interval, confidence, method and evaluation rows
    when the job recorded them: ``+0.0123 [-0.0040, +0.0285] at 95%, DeLong, on the
    next window``; ``-`` without a gain."""
    gain = num(decision, "gain")
    if gain is None:
        return "-"
    text = f"{gain:+.4f}"
    ci = interval(decision.get("gain_ci"))
    if ci:
        text += " " + fmt_interval(ci, "+.4f")
        level = num(decision, "confidence")
        text += f" at {level:.0%}" if level is not None else ""
        if decision.get("ci_method"):
            text += f", {decision['ci_method']}"
    if decision.get("evaluated_on"):
        text += f", on {decision['evaluated_on']}"
    return text


def worst_slice_text(decision: dict[str, Any]) -> str:
    """The worst slice of a decision with its regression (and interval), or ``-``."""
    w = decision.get("worst_slice")
    if not isinstance(w, dict) or num(w, "regression") is None:
        return "-"
    ci = interval(w.get("regression_ci"))
    return f"{w.get('slice')}: {w['regression']:+.4f}" + (f" {fmt_interval(ci, '+.4f')}"
                                                          if ci else "")


def _flags(m: dict) -> list[str]:
    return list(get(m, "drift", "flagged") or [])


def summary_html(config: PipelineConfig, hist: History, metric: str, champion: str | None,
                 windows: list[dict[str, Any]]) -> str:
    """The one-screen summary at the top of the page (``windows``: closed dataset
    windows with their manifests' facts)."""
    head = (f"<p>{len(hist)} trained windows; champion {html.escape(champion or 'none')}; "
            f"estimator {html.escape(config.model.estimator)}; promotion metric "
            f"{html.escape(metric)}.</p>")
    items = []
    if champion:
        since = next((m["window"] for rec, m in hist if rec["version"] == champion), None)
        last = hist[-1][1] if hist else {}
        now = num(last, "prequential", "overall", metric)
        ci = interval(get(last, "prequential", "overall", "ci", metric))
        served = (f"; on the latest window ({html.escape(last['window'])}) its {metric} was "
                  f"{now:.3f} {fmt_interval(ci, '.3f')}"
                  if now is not None and last.get("champion_version") == champion
                  else "; it serves from the next window on" if now is not None else "")
        items.append(("Champion", f"{html.escape(champion)}"
                      + (f", trained on the window of {html.escape(since)}" if since else "")
                      + served))
    if hist:
        rec, m = hist[-1]
        d = m.get("decision") or {}
        promoted = d.get("promotes_version") or rec["version"]
        verdict = (f"<span class='promoted'>promoted {html.escape(str(promoted))}</span>"
                   if rec.get("promoted") else "<span class='kept'>kept the champion</span>")
        if d.get("candidate"):
            verdict = f"judged candidate {html.escape(str(d['candidate']))}, {verdict}"
        items.append(("Last decision", f"window {html.escape(m['window'])}, version "
                      f"{html.escape(rec['version'])}: {verdict}, because "
                      f"{html.escape(str(d.get('reason', '-')))}. Gain "
                      f"{html.escape(gain_text(d))}; worst slice "
                      f"{html.escape(worst_slice_text(d))}."))
        n_up = sum(1 for r, _ in hist if r.get("promoted"))
        items.append(("Promotions", f"{n_up} of {len(hist)} windows promoted a new model"))
        recent = [(mm["window"], _flags(mm)) for _, mm in hist[-6:] if _flags(mm)]
        drift = (f"<span class='drift'>latest window: {html.escape(', '.join(_flags(m)))}"
                 "</span>" if _flags(m) else "none in the latest window")
        if recent:
            drift += "; in the last 6 windows: " + "; ".join(
                f"{html.escape(w[5:16])} {html.escape(', '.join(f))}" for w, f in recent)
        else:
            earlier = [(mm["window"], _flags(mm)) for _, mm in hist if _flags(mm)]
            if earlier:
                w, f = earlier[-1]
                drift += (f"; last flagged in the window of {html.escape(w)}: "
                          f"{html.escape(', '.join(f))}")
        items.append(("Drift flagged", drift))
    items.append(("Labels", _labels_text(config, windows)))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<div class="summary">{head}<dl>{dl}</dl></div>'


def _labels_text(config: PipelineConfig, windows: list[dict[str, Any]]) -> str:
    """The dataset's label quality in one line, from the latest closed manifest."""
    if not windows:
        return "no closed dataset windows"
    w = windows[-1]
    s = w.get("stats") or {}
    corrections = sum(int((x.get("stats") or {}).get("corrections") or 0) for x in windows)
    rewritten = sum(1 for x in windows if (x.get("version") or 1) > 1)
    ratio = num(s, "join_ratio")
    text = (f"{len(windows)} closed windows; latest ({html.escape(w['window'])}): join ratio "
            f"{'-' if ratio is None else f'{ratio:.1%}'}, label delay p90 "
            f"{fmt_duration(num(s, 'label_delay_ms', 'p90'))} in a "
            f"{fmt_duration(config.join.label_window_ms)} window")
    if config.join.correction_window_ms:
        text += (f"; {corrections} corrections in all, {rewritten} window(s) rewritten as a "
                 "new version")
    else:
        text += "; corrections off"
    return text


def decisions_table(hist: History, champion: str | None) -> str:
    """The versions table: one row per trained window, with the decision's interval."""
    rows = "".join(
        f"<tr><td>{html.escape(rec['version'])}"
        f"{' (champion)' if rec['version'] == champion else ''}"
        f"</td><td>{html.escape(m['window'])}</td><td>{m['rows']}</td>"
        f"<td>{html.escape(str(m.get('champion_version') or '-'))}</td>"
        f"<td>{'yes' if rec.get('promoted') else 'no'}</td>"
        f"<td>{html.escape(gain_text(m.get('decision') or {}))}</td>"
        f"<td>{html.escape(worst_slice_text(m.get('decision') or {}))}</td>"
        f"<td>{html.escape(str((m.get('decision') or {}).get('reason', '-')))}</td>"
        f"<td>{html.escape(', '.join(_flags(m)) or '-')}</td></tr>"
        for rec, m in hist)
    return ("<table><tr><th>version</th><th>window</th><th>rows</th><th>parent</th>"
            "<th>promoted</th><th>gain [interval]</th><th>worst slice</th><th>decision</th>"
            f"<th>drift flagged</th></tr>{rows}</table>")


def page(config: PipelineConfig, summary: str, images: list[tuple[str, str, int]],
         delay_text: list[str], decisions: str, windows: str) -> str:
    """The whole ``index.html``."""
    def fig(name: str, caption: str, panels: int) -> str:
        return (f'<figure data-panels="{panels}"><img src="{name}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    charts = "".join(fig(*i) for i in images if i[0] != "label_delay.png")
    delay = "".join(fig(*i) for i in images if i[0] == "label_delay.png")
    delay += "".join(f'<p class="delay">{html.escape(t)}</p>' for t in delay_text)
    name = html.escape(config.pipeline)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dlabel report: {name}</title>
<style>{_CSS}</style></head><body>
<h1>dlabel retraining report: {name}</h1>
{summary}
<h2>Models</h2>
{charts}
<h2>Decisions</h2>
{decisions}
<h2>Labels</h2>
{delay}
{windows}
</body></html>
"""
