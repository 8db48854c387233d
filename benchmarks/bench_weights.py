"""Negative sampling with weights: ``python benchmarks/bench_weights.py [--rate 0.1]``.

The same synthetic ctr windows (``--windows`` of ``--rows`` rows) are trained twice,
once unsampled and once as the sink writes them at ``label.negative_sample_rate`` (the
negatives ``schemas.records.negative_kept`` keeps, with ``sample_weight = 1 / rate``).
Printed per window: the calibration gap and ROC AUC of the version each run trained,
on the next window's unsampled rows, and the champion's prequential (weighted) gap.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.config import load_config  # noqa: E402
from jobs import dataset as ds  # noqa: E402
from jobs.job import run_job  # noqa: E402
from jobs.metrics import evaluate  # noqa: E402
from jobs.registry import Registry  # noqa: E402
from tests.jobs_support import on_tmp, write_ctr_windows, write_sampled_ctr_windows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=0.1)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--rows", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(ROOT / "examples" / "ctr.yaml")
        full, sampled = on_tmp(base, Path(tmp) / "full"), on_tmp(base, Path(tmp) / "sampled")
        for s in write_ctr_windows(full, args.windows, rows=args.rows):
            run_job(full, s)
        for s in write_sampled_ctr_windows(sampled, args.windows, args.rate, rows=args.rows):
            run_job(sampled, s)
        starts = ds.closed_windows(full.dataset.path)
        rows = [len(ds.read_window(ds.open_window(c.dataset.path, s)))
                for c in (full, sampled) for s in starts]
        print(f"rate {args.rate}: {sum(rows[:len(starts)])} rows unsampled, "
              f"{sum(rows[len(starts):])} stored sampled\n")
        print("| window | gap unsampled run | gap sampled run | diff | AUC unsampled | "
              "AUC sampled | champion prequential gap: unsampled / sampled |")
        print("|---|---|---|---|---|---|---|")
        regs = [Registry(c.model.path) for c in (full, sampled)]
        for k, start in enumerate(starts[1:], start=1):
            df = ds.read_window(ds.open_window(full.dataset.path, start))
            ev = [evaluate(df, r.load(k).predict(df), "binary")["overall"] for r in regs]
            pq = [(r.metrics(k + 1)["prequential"] or {}).get("overall", {})
                  .get("calibration_gap") for r in regs]
            print(f"| {k + 1} | {ev[0]['calibration_gap']:+.4f} | {ev[1]['calibration_gap']:+.4f}"
                  f" | {ev[1]['calibration_gap'] - ev[0]['calibration_gap']:+.4f} | "
                  f"{ev[0]['roc_auc']:.4f} | {ev[1]['roc_auc']:.4f} | "
                  f"{pq[0]:+.4f} / {pq[1]:+.4f} |")


if __name__ == "__main__":
    main()
