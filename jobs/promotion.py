"""The promotion rule: when does a challenger replace the champion, on evidence.

Both models are scored on the same rows that neither learned from (see jobs.evaluation:
the next window in shadow, or the window's time-later holdout). The challenger is
promoted when
1. there is no champion (the first model is always promoted), or
2. the lower bound of the confidence interval of its gain in ``metric`` (at
   ``promotion.confidence``, in the direction in which the metric improves) is above
   ``min_gain``: the gain is not sampling noise, and
3. no slice value with at least ``min_slice_rows`` rows regresses significantly beyond
   ``max_slice_regression``: the lower bound of the interval of its regression must not
   exceed it. Slice values where the metric is undefined (ROC AUC of a single-class
   slice) are not judged and are listed as such.

Without intervals (``intervals=None``, or ``confidence`` 0) each interval is its point
estimate: the rule compares point estimates, as dlabel did before it had intervals.
"""
from __future__ import annotations

from typing import Any

from schemas.config import PromotionSpec
from jobs.metrics import HIGHER_IS_BETTER


def decide(champion: dict[str, Any] | None, challenger: dict[str, Any],
           spec: PromotionSpec, intervals: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the rule to two ``jobs.metrics.evaluate`` results on the same rows.

    ``intervals`` is ``jobs.bootstrap.paired_intervals`` output (None: point estimates).
    Returns ``{"promote", "reason", "metric", "champion", "challenger", "gain",
    "gain_ci": [lo, hi] | None, "confidence", "worst_slice": {..., "regression_ci"} | None,
    "unjudged_slices": [...]}``.
    """
    metric = spec.metric
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    new = challenger["overall"].get(metric)
    conf = spec.confidence if intervals is not None else 0.0
    out: dict[str, Any] = {"metric": metric, "challenger": new, "champion": None,
                           "gain": None, "gain_ci": None, "confidence": conf,
                           "worst_slice": None, "unjudged_slices": []}
    if champion is None:
        return {**out, "promote": True, "reason": "first model: no champion yet"}
    old = champion["overall"].get(metric)
    out["champion"] = old
    if new is None or old is None:
        return {**out, "promote": False,
                "reason": f"{metric} is undefined on the evaluation rows (e.g. a single "
                          "class); keeping the champion"}
    gain = sign * (new - old)
    out["gain"] = gain
    ci = intervals["gain"] if intervals is not None else [gain, gain]
    out["gain_ci"] = ci
    out["worst_slice"] = worst = _worst_slice(champion, challenger, spec, sign, intervals,
                                              out["unjudged_slices"])
    pct = f"{conf:.0%} CI " if conf > 0 else ""
    said = f"{metric} gain {gain:+.4f}" + (f", {pct}[{ci[0]:+.4f}, {ci[1]:+.4f}]"
                                           if ci and conf > 0 else "")
    if ci is None:
        return {**out, "promote": False,
                "reason": f"{said}: no interval (too few rows of each class to resample); "
                          "keeping the champion"}
    if not ci[0] > spec.min_gain:
        what = "its lower bound" if conf > 0 else "it"
        return {**out, "promote": False,
                "reason": f"{said}: {what} does not clear min_gain {spec.min_gain:g}"}
    if worst is not None and worst["regression_ci"][0] > spec.max_slice_regression:
        return {**out, "promote": False,
                "reason": f"slice {worst['slice']} regresses by {worst['regression']:.4f}"
                          f"{' (' + pct + _fmt(worst['regression_ci']) + ')' if conf else ''}"
                          f" > max_slice_regression {spec.max_slice_regression:g}"}
    return {**out, "promote": True,
            "reason": f"{said} clears min_gain {spec.min_gain:g}; no slice regresses "
                      f"{'significantly ' if conf else ''}by more than "
                      f"{spec.max_slice_regression:g}"}


def _fmt(ci: list[float]) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def _worst_slice(champion: dict[str, Any], challenger: dict[str, Any], spec: PromotionSpec,
                 sign: float, intervals: dict[str, Any] | None,
                 unjudged: list[str]) -> dict[str, Any] | None:
    """The judged slice value that blocks (the most evident regression: the highest
    lower bound of its regression interval above ``max_slice_regression``), else the one
    that regressed most (point estimate), with ``regression_ci``."""
    judged = []
    for feature, values in challenger["slices"].items():
        for value, cm in values.items():
            om = champion["slices"].get(feature, {}).get(value)
            if om is None or cm["rows"] < spec.min_slice_rows:
                continue
            a, b = cm.get(spec.metric), om.get(spec.metric)
            if a is None or b is None:
                unjudged.append(f"{feature}={value}")
                continue
            regression = sign * (b - a)
            gain_ci = (intervals or {}).get("slices", {}).get(feature, {}).get(value) \
                if intervals is not None else [-regression, -regression]
            if gain_ci is None:
                unjudged.append(f"{feature}={value}")
                continue
            judged.append({"slice": f"{feature}={value}", "rows": cm["rows"], "champion": b,
                           "challenger": a, "regression": regression,
                           "regression_ci": [-gain_ci[1], -gain_ci[0]]})
    blocking = [j for j in judged if j["regression_ci"][0] > spec.max_slice_regression]
    if blocking:
        return max(blocking, key=lambda j: j["regression_ci"][0])
    return max(judged, key=lambda j: j["regression"]) if judged else None
