"""Retraining benchmark: ``python benchmarks/bench_jobs.py [--windows 24] [--rows 5000]``.

1. Job time per 100k rows: one ``run_job`` on a synthetic window of 100k rows.
2. Incremental retraining vs a full refit on all windows so far: at each window k, the
   incremental model has learned windows 1..k-1 once each (``partial_fit``); the full
   refit trains a new model on all k-1 windows for ``--epochs`` passes. Both are scored
   on window k (prequential ROC AUC); training time is measured per window.
3. ``--modes``: job time per 100k-row window for each ``model.training`` mode and
   estimator (built-in SGD incremental and refit, a HistGradientBoosting factory in
   refit mode, a River model through river.compat incremental): ``--mode-windows``
   closed windows of ``--job-rows`` rows are trained in order; the last job (a champion
   to score and beat, ``refit_windows`` = all of them) is timed, best of ``--repeat``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from schemas.config import DatasetSpec, load_config
from jobs.estimators import Model
from jobs.job import run_job
from jobs.registry import Registry
from streams.dev.synthetic_windows import ctr_window, write_window

H = 3_600_000
START = 1_794_999_600_000
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "ctr.yaml"
sys.path.insert(0, str(ROOT))  # the bring-your-own factories live in tests.jobs_byo_factories
F = "tests.jobs_byo_factories"
#: (label, model fields) of each mode ``--modes`` times
MODES = (
    ("sgd_classifier, incremental", {}),
    ("sgd_classifier, refit", {"training": "refit"}),
    ("HistGradientBoosting factory, refit", {
        "estimator": f"{F}:hgb_classifier", "training": "refit", "trusted_types": (
            "functools.partial", "sklearn.utils.validation.check_array",
            "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor")}),
    ("River LogisticRegression (river.compat), incremental", {
        "estimator": f"{F}:river_logistic", "trusted_types": (
            "river._river_rust.vectordict.VectorDict",
            "river.compat.river_to_sklearn.River2SKLClassifier",
            "river.linear_model.log_reg.LogisticRegression", "river.optim.initializers.Zeros",
            "river.optim.losses.Log", "river.optim.schedulers.Constant", "river.optim.sgd.SGD",
            f"{F}.numbers")}),
)


def job_time(rows: int = 100_000) -> float:
    """Seconds of one retraining job (with a champion) on a window of ``rows`` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(EXAMPLE)
        cfg = dataclasses.replace(cfg, dataset=DatasetSpec(f"{tmp}/data", H),
                                  model=dataclasses.replace(cfg.model, path=f"{tmp}/models"))
        for i in range(2):
            write_window(cfg.dataset.path, "ctr", START + i * H, H,
                         ctr_window(START + i * H, H, rows, seed=1), files=4)
        run_job(cfg, START)
        t = time.perf_counter()
        run_job(cfg, START + H)
        return time.perf_counter() - t


def mode_job_time(model_fields: dict, rows: int, windows: int, repeat: int) -> dict:
    """The last of ``windows`` jobs on ``rows``-row windows, in seconds (best of
    ``repeat``), with the rows it trained on."""
    best, trained = float("inf"), 0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(EXAMPLE)
            cfg = dataclasses.replace(cfg, dataset=DatasetSpec(f"{tmp}/data", H),
                                      model=dataclasses.replace(
                                          cfg.model, path=f"{tmp}/models",
                                          refit_windows=windows, **model_fields))
            for i in range(windows):
                write_window(cfg.dataset.path, "ctr", START + i * H, H,
                             ctr_window(START + i * H, H, rows, seed=1), files=4)
            for i in range(windows - 1):
                run_job(cfg, START + i * H)
            t = time.perf_counter()
            run_job(cfg, START + (windows - 1) * H)
            best = min(best, time.perf_counter() - t)
            version = Registry(cfg.model.path).versions()[-1]
            trained = Registry(cfg.model.path).metrics(version)["training"]["rows"]
    return {"seconds": best, "trained_rows": trained}


def incremental_vs_refit(windows: int, rows: int, epochs: int) -> list[dict]:
    cfg = load_config(EXAMPLE)
    data = [ctr_window(START + i * H, H, rows, seed=2) for i in range(windows + 1)]
    inc = Model.for_config(cfg)
    out = []
    for k in range(1, windows + 1):
        t = time.perf_counter()
        inc.partial_fit(data[k - 1])
        t_inc = time.perf_counter() - t
        t = time.perf_counter()
        full = Model.for_config(cfg)
        history = pd.concat(data[:k], ignore_index=True)
        for _ in range(epochs):
            full.partial_fit(history)
        t_full = time.perf_counter() - t
        y = data[k]["label"]
        out.append({"windows": k, "inc_s": t_inc, "full_s": t_full,
                    "auc_inc": roc_auc_score(y, inc.predict(data[k])),
                    "auc_full": roc_auc_score(y, full.predict(data[k]))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=24)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--job-rows", type=int, default=100_000)
    ap.add_argument("--modes", action="store_true",
                    help="only the job time per training mode (part 3)")
    ap.add_argument("--mode-windows", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.modes:
        print(f"job time for a {args.job_rows}-row window, the last of {args.mode_windows} "
              f"(refit_windows={args.mode_windows}), best of {args.repeat}")
        print("| estimator, model.training | job s | rows trained | job s per 100k rows trained |")
        print("|---|---|---|---|")
        for label, fields in MODES:
            r = mode_job_time(fields, args.job_rows, args.mode_windows, args.repeat)
            print(f"| {label} | {r['seconds']:.2f} | {r['trained_rows']:,} | "
                  f"{r['seconds'] / r['trained_rows'] * 100_000:.2f} |", flush=True)
        return
    print(f"job time for a {args.job_rows}-row window: {job_time(args.job_rows):.2f}s")
    res = incremental_vs_refit(args.windows, args.rows, args.epochs)
    print("windows  incremental_s  full_refit_s  ratio  auc_inc  auc_full  diff")
    for r in res:
        print(f"{r['windows']:>7}  {r['inc_s']:>13.3f}  {r['full_s']:>12.3f}  "
              f"{r['full_s'] / r['inc_s']:>5.1f}  {r['auc_inc']:.4f}  {r['auc_full']:.4f}  "
              f"{r['auc_inc'] - r['auc_full']:+.4f}")
    last = res[-4:]
    print(f"mean AUC difference over the last 4 windows: "
          f"{np.mean([r['auc_inc'] - r['auc_full'] for r in last]):+.4f}")


if __name__ == "__main__":
    main()
