"""One retraining job: one closed window in, one registry version (and maybe a new
champion) out. ``python -m jobs.job --config-json F --window W`` runs it as the
runner's subprocess.

Steps, in order (each one a line in the log):
1. Skip when the window already has a record, or finish the records of a version a
   crashed run already stored for it (so a window is never trained twice).
2. Read the window through its manifest, sorted by (request_ts, request_id).
3. Load the champion (checksum and skops type check) or start a new model.
4. Prequential score: the champion on the whole window, before it learns from it;
   and the score of the logged ``prediction`` column, when present.
5. Drift of every feature and of the label against the previous closed window.
6. Split by time: the first (1 - holdout_fraction) of the rows train, the rest hold out.
7. Challenger = copy of the champion + ``partial_fit`` on the training part.
8. Champion and challenger on the holdout, overall and per slice; the promotion rule.
9. Save the challenger as a new version (metrics.json, lineage), then move the
   champion pointer if promoted, then write the window's record - last.
"""
from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from schemas.config import PipelineConfig
from schemas.errors import DlabelError, JobError
from jobs import dataset as ds
from jobs.drift import window_drift
from jobs.estimators import Model
from jobs.metrics import evaluate, slice_values
from jobs.promotion import decide
from jobs.registry import Registry

log = logging.getLogger("dlabel.jobs.job")
MIN_ROWS = 10


def wall_ms() -> int:
    """The wall clock in epoch ms (only for creation stamps, never for event time)."""
    return time.time_ns() // 1_000_000


@contextmanager
def registry_lock(root: Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (one job at a time: jobs form a lineage)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(f"another job holds the registry lock {root / '.lock'}; run one "
                           "job at a time per registry") from None
        yield
    finally:
        os.close(fd)


def split_by_time(df: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the time-earlier rows and the time-later ``holdout_fraction``.

    ``df`` must already be sorted by time; at least one row goes to each part.
    """
    n = len(df)
    n_hold = min(n - 1, max(1, round(n * holdout_fraction)))
    return df.iloc[: n - n_hold], df.iloc[n - n_hold:]


def run_job(config: PipelineConfig, window: str | int, *, manifest: str | None = None,
            now_ms: Callable[[], int] = wall_ms) -> dict[str, Any]:
    """Train and evaluate on one closed window; returns the window's record.

    The record has ``status`` ("trained", or "skipped" when it already was), ``version``
    and ``promoted``. Raises JobError/DatasetError/RegistryError on failure, leaving no
    record (so the window can be retried).
    """
    start_ms = ds.parse_window(window)
    name = ds.window_iso(start_ms)
    reg = Registry(config.model.path)
    with registry_lock(reg.root):
        done = reg.window_record(name)
        if done and done.get("status") == "trained":
            log.info("window %s already trained (version %s); skipping", name, done.get("version"))
            return {**done, "status": "skipped"}
        stored = reg.version_for_window(name)
        if stored:
            return _finish_stored(reg, name, stored)
        return _train(config, reg, start_ms, manifest, now_ms)


def _finish_stored(reg: Registry, name: str, version: str) -> dict[str, Any]:
    """A crashed run stored ``version`` but not the records after it: finish them."""
    metrics, lineage = reg.metrics(version), reg.lineage(version)
    promote = metrics["decision"]["promote"]
    if promote and reg.champion() == lineage.get("parent"):
        reg.set_champion(version)
    log.info("window %s: version %s was stored by an earlier run; records completed", name,
             version)
    record = {"status": "trained", "version": version, "promoted": promote,
              "rows": metrics["rows"]}
    reg.record_window(name, **record)
    return record


def _train(config: PipelineConfig, reg: Registry, start_ms: int, manifest: str | None,
           now_ms: Callable[[], int]) -> dict[str, Any]:
    t0 = time.perf_counter()
    kind, slices = config.label.kind, config.slices
    window = ds.open_window(config.dataset.path, start_ms, manifest)
    name = window.name
    df = ds.read_window(window)
    log.info("window %s: %d rows from %d file(s)", name, len(df), len(window.manifest["files"]))
    if len(df) < MIN_ROWS:
        record = {"status": "trained", "version": None, "promoted": False, "rows": len(df),
                  "note": f"only {len(df)} rows (< {MIN_ROWS}); nothing trained"}
        reg.record_window(name, **record)
        log.warning("window %s: %s", name, record["note"])
        return record
    df = df.sort_values(["request_ts", "request_id"], kind="stable").reset_index(drop=True)

    champion_v = reg.champion()
    champion = reg.load(champion_v) if champion_v else None
    parent = reg.lineage(champion_v) if champion_v else {"windows": [], "manifests": []}
    log.info("window %s: champion %s", name, champion_v or "none (a new model starts)")

    prequential = evaluate(df, champion.predict(df), kind, slices) if champion else None
    logged = None
    if "prediction" in df.columns and df["prediction"].notna().any():
        logged = evaluate(df, df["prediction"].astype("float64"), kind, slices)

    drift = None
    prev = ds.previous_window(config.dataset.path, start_ms)
    if prev is not None:
        ref = ds.read_window(ds.open_window(config.dataset.path, prev))
        if len(ref):
            drift = window_drift(ref, df, config.kept_features, slices, kind, config.model.drift)
            drift["reference_window"] = ds.window_iso(prev)
            if drift["flagged"]:
                log.warning("window %s: drift against %s in %s", name, drift["reference_window"],
                            ", ".join(drift["flagged"]))

    train, holdout = split_by_time(df, config.model.holdout_fraction)
    challenger = champion.copy() if champion else Model.for_config(config)
    challenger.partial_fit(train)
    hold_champion = evaluate(holdout, champion.predict(holdout), kind, slices) \
        if champion else None
    hold_challenger = evaluate(holdout, challenger.predict(holdout), kind, slices)
    decision = decide(hold_champion, hold_challenger, config.model.promotion)
    log.info("window %s: %s -> %s", name, decision["reason"],
             "promote" if decision["promote"] else "keep the champion")

    label = df["label"].astype("float64")
    slice_rates = {f: {v: {"rows": int(len(g)), "label_rate": float(g.mean())}
                       for v, g in label.groupby(slice_values(df[f]))} for f in slices}
    metrics = {
        "window": name, "window_start_ms": start_ms, "window_end_ms": window.end_ms,
        "rows": len(df), "train_rows": len(train), "holdout_rows": len(holdout),
        "holdout_from_ms": _ms(holdout["request_ts"].iloc[0]),
        "label_rate": float(label.mean()), "slice_label_rate": slice_rates, "kind": kind,
        "estimator": config.model.estimator, "champion_version": champion_v,
        "prequential": prequential, "logged": logged,
        "holdout": {"champion": hold_champion, "challenger": hold_challenger},
        "drift": drift, "decision": decision,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    lineage = {"pipeline": config.pipeline, "window": name,
               "windows": parent["windows"] + [name], "parent": champion_v,
               "manifests": parent["manifests"] + [str(window.manifest_path)],
               "estimator": config.model.estimator, "created_ms": now_ms()}
    version = reg.save(challenger, metrics, lineage)
    if decision["promote"]:
        reg.set_champion(version)
    record = {"status": "trained", "version": version, "promoted": decision["promote"],
              "rows": len(df)}
    reg.record_window(name, **record)
    log.info("window %s: stored %s%s in %.2fs", name, version,
             " (champion)" if decision["promote"] else "", time.perf_counter() - t0)
    return record


def _ms(ts: Any) -> int:
    """Epoch ms of a pandas/pyarrow timestamp or an int."""
    if isinstance(ts, pd.Timestamp):
        return int(ts.value // 1_000_000)
    return int(ts)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job subprocess: exit 0 on success, 1 with the error logged."""
    from jobs.configio import config_from_json
    ap = argparse.ArgumentParser(prog="python -m jobs.job")
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--window", required=True)
    ap.add_argument("--manifest")
    args = ap.parse_args(argv)
    from streams.common.logs import setup_logging
    setup_logging(logging.INFO)  # text or JSON, as the runner was started (env)
    config = config_from_json(Path(args.config_json).read_text())
    try:
        record = run_job(config, args.window, manifest=args.manifest)
    except DlabelError as e:
        log.error("window %s failed: %s", args.window, e)
        return 1
    print(record, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
