"""Promotion on evidence and the answer to drift, before/after in one run:
``python benchmarks/bench_promotion.py [--seeds 3] [--rows 1000]``.

Windows are made without a broker (streams.dev.synthetic_windows draws them the way
the simulator draws clicks); ``--rows`` per hourly window (the demo: 24,000 requests a
day, 1,000 an hour). Jobs run in process (``jobs.job.run_job``), in window order.

1. Stationary day (no drift, 48 windows): how many windows promote (after the first
   model), for each rule.
2. The demo's drift (men's dress shoes are never clicked from window 12 on, 24
   windows): windows from the drift to the first promotion; the champion's prequential
   calibration gap on that slice in the windows after the drift, and windows until it
   is within +-0.02; the champion's prequential ROC AUC on the other slices after the
   drift and on the whole stationary day (on_drift must not hurt the stationary part).

Rules: ``before`` = the 20% holdout, point estimates (``evaluate: holdout``,
``confidence: 0``, ``on_drift: none``); ``after`` = shadow on the next window, 95%
paired-bootstrap interval, ``on_drift: none``, ``recency``, ``refit``.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.config import DatasetSpec, load_config  # noqa: E402
from jobs.job import run_job  # noqa: E402
from jobs.registry import Registry  # noqa: E402
from jobs import dataset as ds  # noqa: E402
from streams.dev.synthetic_windows import ctr_window, write_window  # noqa: E402

H = 3_600_000
START = 1_794_999_600_000
DRIFT_AT = 12
SLICE = ("category", "mens_dress_shoes")
RULES = {
    "before (holdout 20%, point estimate)": dict(evaluate="holdout", confidence=0.0,
                                                 on_drift="none"),
    "after (shadow, 95% CI), on_drift none": dict(evaluate="shadow", confidence=0.95,
                                                  on_drift="none"),
    "after (shadow, 95% CI), on_drift recency": dict(evaluate="shadow", confidence=0.95,
                                                     on_drift="recency"),
    "after (shadow, 95% CI), on_drift refit": dict(evaluate="shadow", confidence=0.95,
                                                   on_drift="refit"),
}


def config(tmp: str, rule: dict, min_rows: int):
    cfg = load_config(ROOT / "examples" / "ctr.yaml")
    m = cfg.model
    promotion = dataclasses.replace(m.promotion, evaluate=rule["evaluate"],
                                    confidence=rule["confidence"])
    drift = dataclasses.replace(m.drift, min_rows=min_rows)
    model = dataclasses.replace(m, path=f"{tmp}/models", promotion=promotion, drift=drift,
                                on_drift=rule["on_drift"])
    return dataclasses.replace(cfg, dataset=DatasetSpec(f"{tmp}/data", H), model=model)


def run(rule: dict, windows: int, rows: int, seed: int, drift_at: int | None,
        min_rows: int) -> list[dict]:
    """One simulated day under ``rule``: per window, whether the job promoted, the
    champion's prequential slice calibration gap and its scores."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(tmp, rule, min_rows)
        out = []
        for i in range(windows):
            start = START + i * H
            kw = {} if drift_at is None else dict(drift_at_ms=START + drift_at * H)
            write_window(cfg.dataset.path, "ctr", start, H, ctr_window(start, H, rows, seed, **kw))
            rec = run_job(cfg, start)
            m = Registry(cfg.model.path).metrics(rec["version"])
            pq = m.get("prequential") or {}
            sl = pq.get("slices", {}).get(SLICE[0], {}).get(SLICE[1], {})
            df = ds.read_window(ds.open_window(cfg.dataset.path, start))
            out.append({"promoted": rec["promoted"], "gap": sl.get("calibration_gap"),
                        "true_gain": _true_gain(cfg, rec, m, start, seed, kw),
                        "auc": (pq.get("overall") or {}).get("roc_auc"),
                        "adapted": bool(m["decision"].get("adaptation")),
                        "others": _others_auc(cfg, rec, m, df)})
        return out


def _true_gain(cfg, rec, m, start, seed, kw) -> float | None:
    """For a promotion: the promoted model's ROC AUC gain over the champion it replaced
    on 20,000 fresh rows of the next hour (the truth the decision estimated)."""
    if not rec["promoted"] or not m.get("champion_version"):
        return None
    reg = Registry(cfg.model.path)
    fresh = ctr_window(start + H, H, 20_000, 10_000 + seed, **kw)
    y = fresh["label"]
    new = reg.load(rec["promoted_version"]).predict(fresh)
    old = reg.load(m["champion_version"]).predict(fresh)
    return float(roc_auc_score(y, new) - roc_auc_score(y, old))


def _others_auc(cfg, rec, m, df) -> float | None:
    """The serving champion's ROC AUC on the window's rows outside the drifted slice."""
    champion = m.get("champion_version")
    if not champion:
        return None
    scores = Registry(cfg.model.path).load(champion).predict(df)
    keep = (df[SLICE[0]] != SLICE[1]).to_numpy()
    return float(roc_auc_score(df["label"][keep], scores[keep]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--stationary-windows", type=int, default=48)
    ap.add_argument("--drift-windows", type=int, default=24)
    ap.add_argument("--min-rows", type=int, default=50,
                    help="model.drift.min_rows (the example's 100 is more than the demo's "
                         "~80 rows of the slice per window)")
    ap.add_argument("--rules", default="", help="only the rules whose label contains this")
    ap.add_argument("--drift-only", action="store_true", help="skip the stationary day")
    args = ap.parse_args()
    seeds = range(1, args.seeds + 1)
    print(f"{args.rows} rows per window, seeds {list(seeds)}, drift.min_rows {args.min_rows}; "
          "medians over seeds (each seed's value in brackets)\n")
    print("| rule | stationary: promotions / windows (after the first) | of which worse on "
          "20k fresh rows | promotions in the 2nd day (windows 24-47) | stationary "
          "prequential AUC (mean) | drift: windows to the first promotion | slice cal. gap "
          "at drift +0..+4 | windows until |gap| <= 0.02 | AUC of other slices after the "
          "drift (mean) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rule in RULES.items():
        if args.rules not in label:
            continue
        stat = [run(rule, 0 if args.drift_only else args.stationary_windows, args.rows, s,
                    None, args.min_rows) for s in seeds]
        drift = [run(rule, args.drift_windows, args.rows, s, DRIFT_AT, args.min_rows)
                 for s in seeds]
        promos = [sum(w["promoted"] for w in r[1:]) for r in stat]
        worse = [sum(1 for w in r[1:] if w["true_gain"] is not None and w["true_gain"] <= 0)
                 for r in stat]
        late = [sum(w["promoted"] for w in r[24:]) for r in stat]
        auc = [float(np.mean([w["auc"] for w in r if w["auc"] is not None] or [np.nan]))
               for r in stat]
        first = [next((i - DRIFT_AT for i in range(DRIFT_AT, len(r)) if r[i]["promoted"]), None)
                 for r in drift]
        gaps = [[r[DRIFT_AT + k]["gap"] for k in range(5)] for r in drift]
        until = [next((k for k in range(len(r) - DRIFT_AT)
                       if r[DRIFT_AT + k]["gap"] is not None
                       and abs(r[DRIFT_AT + k]["gap"]) <= 0.02), None) for r in drift]
        others = [float(np.mean([w["others"] for w in r[DRIFT_AT:]])) for r in drift]
        med_gap = [statistics.median(g[k] for g in gaps) for k in range(5)]
        print(f"| {label} | {_med(promos)} / {args.stationary_windows - 1} {promos} | "
              f"{_med(worse)} {worse} | {_med(late)} / {len(stat[0][24:])} {late} | "
              f"{statistics.median(auc):.4f} | {_med(first)} {first} | "
              f"{' '.join(f'{g:+.3f}' for g in med_gap)} | {_med(until)} {until} | "
              f"{statistics.median(others):.4f} |", flush=True)


def _med(values: list) -> str:
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return "never" if not known else f"{statistics.median(known):g} (never: " \
                                         f"{len(values) - len(known)})"
    return f"{statistics.median(known):g}"


if __name__ == "__main__":
    main()
