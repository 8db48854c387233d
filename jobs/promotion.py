"""The promotion rule: when does a challenger replace the champion.

The challenger is promoted when, on the holdout,
1. there is no champion (the first model is always promoted), or
2. its ``metric`` beats the champion's by at least ``min_gain`` (in the direction in
   which the metric improves), and
3. no slice value with at least ``min_slice_rows`` holdout rows gets worse by more
   than ``max_slice_regression``. Slice values where the metric is undefined (ROC AUC
   of a single-class slice) are not judged and are listed as such.
"""
from __future__ import annotations

from typing import Any

from schemas.config import PromotionSpec
from jobs.metrics import HIGHER_IS_BETTER


def decide(champion: dict[str, Any] | None, challenger: dict[str, Any],
           spec: PromotionSpec) -> dict[str, Any]:
    """Apply the rule to two ``jobs.metrics.evaluate`` results on the same holdout.

    Returns ``{"promote", "reason", "metric", "champion", "challenger", "gain",
    "worst_slice": {...} | None, "unjudged_slices": [...]}``.
    """
    metric = spec.metric
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    new = challenger["overall"].get(metric)
    out: dict[str, Any] = {"metric": metric, "challenger": new, "champion": None,
                           "gain": None, "worst_slice": None, "unjudged_slices": []}
    if champion is None:
        return {**out, "promote": True, "reason": "first model: no champion yet"}
    old = champion["overall"].get(metric)
    out["champion"] = old
    if new is None or old is None:
        return {**out, "promote": False,
                "reason": f"{metric} is undefined on the holdout (e.g. a single class); "
                          "keeping the champion"}
    gain = sign * (new - old)
    out["gain"] = gain
    worst = None
    for feature, values in challenger["slices"].items():
        for value, cm in values.items():
            om = champion["slices"].get(feature, {}).get(value)
            if om is None or cm["rows"] < spec.min_slice_rows:
                continue
            a, b = cm.get(metric), om.get(metric)
            if a is None or b is None:
                out["unjudged_slices"].append(f"{feature}={value}")
                continue
            regression = sign * (b - a)
            if worst is None or regression > worst["regression"]:
                worst = {"slice": f"{feature}={value}", "rows": cm["rows"], "champion": b,
                         "challenger": a, "regression": regression}
    out["worst_slice"] = worst
    if gain < spec.min_gain:
        return {**out, "promote": False,
                "reason": f"{metric} gain {gain:+.4f} is below min_gain {spec.min_gain:g}"}
    if worst is not None and worst["regression"] > spec.max_slice_regression:
        return {**out, "promote": False,
                "reason": f"slice {worst['slice']} regresses by {worst['regression']:.4f} "
                          f"> max_slice_regression {spec.max_slice_regression:g}"}
    return {**out, "promote": True,
            "reason": f"{metric} gain {gain:+.4f} >= {spec.min_gain:g}, no slice regresses "
                      f"by more than {spec.max_slice_regression:g}"}
