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
7. Challenger = copy of the champion + ``partial_fit`` on the training part
   (``model.training: refit``: a new model fit on the earlier windows + the training part).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from schemas.config import PipelineConfig
from schemas.errors import DlabelError, JobError
from jobs import dataset as ds
from jobs.drift import window_drift
from jobs.metrics import evaluate, slice_values
from jobs.models import AnyModel
from jobs.promotion import decide
from jobs.registry import Registry
from jobs.training import Trained, train_challenger

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
    reg = Registry(config.model.path, config.model.trusted_types)
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
    """Steps 2-9 for a window not trained yet: read, score, train, decide, store, record."""
    t0 = time.perf_counter()
    window = ds.open_window(config.dataset.path, start_ms, manifest)
    df = _read(window)
    if len(df) < MIN_ROWS:
        return _record_too_small(reg, window.name, len(df))
    df = df.sort_values(["request_ts", "request_id"], kind="stable").reset_index(drop=True)
    champion_v, champion, parent = _champion(reg, window.name)
    prequential, logged = _prequential(config, df, champion)
    drift = _drift(config, start_ms, window.name, df)
    train, holdout = split_by_time(df, config.model.holdout_fraction)
    trained = train_challenger(config, champion, train, start_ms)
    challenger = trained.model
    held = _holdout_decision(config, window.name, holdout, champion, challenger)
    metrics = {
        **_window_facts(config, window, df, train, holdout), "kind": config.label.kind,
        "estimator": config.model.estimator, "champion_version": champion_v,
        "training": trained.facts(config.model.training, window.name),
        "prequential": prequential, "logged": logged,
        "holdout": {"champion": held.champion, "challenger": held.challenger},
        "drift": drift, "decision": held.decision,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    lineage = _lineage(config, window, champion_v, parent, trained, now_ms)
    return _store(reg, window.name, challenger, metrics, lineage, len(df), t0)


def _read(window: ds.Window) -> pd.DataFrame:
    """Step 2: the window's rows, read through its manifest (logged with the file count)."""
    df = ds.read_window(window)
    log.info("window %s: %d rows from %d file(s)", window.name, len(df),
             len(window.manifest["files"]))
    return df


def _record_too_small(reg: Registry, name: str, rows: int) -> dict[str, Any]:
    """Fewer than MIN_ROWS rows: record the window as done with no version, and say why."""
    record = {"status": "trained", "version": None, "promoted": False, "rows": rows,
              "note": f"only {rows} rows (< {MIN_ROWS}); nothing trained"}
    reg.record_window(name, **record)
    log.warning("window %s: %s", name, record["note"])
    return record


def _champion(reg: Registry, name: str) -> tuple[str | None, AnyModel | None, dict[str, Any]]:
    """Step 3: (champion version, its model, its lineage); (None, None, empty lineage) when
    there is no champion yet."""
    champion_v = reg.champion()
    champion = reg.load(champion_v) if champion_v else None
    parent = reg.lineage(champion_v) if champion_v else {"windows": [], "manifests": []}
    log.info("window %s: champion %s", name, champion_v or "none (a new model starts)")
    return champion_v, champion, parent


def _prequential(config: PipelineConfig, df: pd.DataFrame,
                 champion: AnyModel | None) -> tuple[dict | None, dict | None]:
    """Step 4: (the champion on the whole window before it learns from it, the logged
    ``prediction`` column); each None when there is nothing to score."""
    kind, slices = config.label.kind, config.slices
    prequential = evaluate(df, champion.predict(df), kind, slices) if champion else None
    logged = None
    if "prediction" in df.columns and df["prediction"].notna().any():
        logged = evaluate(df, df["prediction"].astype("float64"), kind, slices)
    return prequential, logged


def _drift(config: PipelineConfig, start_ms: int, name: str,
           df: pd.DataFrame) -> dict[str, Any] | None:
    """Step 5: drift against the previous closed window (None without one, or when empty)."""
    prev = ds.previous_window(config.dataset.path, start_ms)
    if prev is None:
        return None
    ref = ds.read_window(ds.open_window(config.dataset.path, prev))
    if not len(ref):
        return None
    drift = window_drift(ref, df, config.kept_features, config.slices, config.label.kind,
                         config.model.drift)
    drift["reference_window"] = ds.window_iso(prev)
    if drift["flagged"]:
        log.warning("window %s: drift against %s in %s", name, drift["reference_window"],
                    ", ".join(drift["flagged"]))
    return drift


@dataclass(frozen=True)
class _Holdout:
    """Step 8's outcome: both models' holdout scores and the promotion decision."""
    champion: dict | None
    challenger: dict
    decision: dict[str, Any]


def _holdout_decision(config: PipelineConfig, name: str, holdout: pd.DataFrame,
                      champion: AnyModel | None, challenger: AnyModel) -> _Holdout:
    """Step 8: champion (if any) and challenger on the holdout, then the promotion rule."""
    kind, slices = config.label.kind, config.slices
    hold_champion = evaluate(holdout, champion.predict(holdout), kind, slices) \
        if champion else None
    hold_challenger = evaluate(holdout, challenger.predict(holdout), kind, slices)
    decision = decide(hold_champion, hold_challenger, config.model.promotion)
    log.info("window %s: %s -> %s", name, decision["reason"],
             "promote" if decision["promote"] else "keep the champion")
    return _Holdout(hold_champion, hold_challenger, decision)


def _window_facts(config: PipelineConfig, window: ds.Window, df: pd.DataFrame,
                  train: pd.DataFrame, holdout: pd.DataFrame) -> dict[str, Any]:
    """The metrics' description of the window: bounds, row counts, where the holdout
    starts, and the label rate overall and per slice value."""
    label = df["label"].astype("float64")
    slice_rates = {f: {v: {"rows": int(len(g)), "label_rate": float(g.mean())}
                       for v, g in label.groupby(slice_values(df[f]))} for f in config.slices}
    return {"window": window.name, "window_start_ms": window.start_ms,
            "window_end_ms": window.end_ms, "rows": len(df), "train_rows": len(train),
            "holdout_rows": len(holdout), "holdout_from_ms": _ms(holdout["request_ts"].iloc[0]),
            "label_rate": float(label.mean()), "slice_label_rate": slice_rates}


def _lineage(config: PipelineConfig, window: ds.Window, champion_v: str | None,
             parent: dict[str, Any], trained: Trained,
             now_ms: Callable[[], int]) -> dict[str, Any]:
    """The new version's lineage: the windows it learned (its parent's and this one, or a
    refit's) and their manifests."""
    windows = parent["windows"] if trained.windows is None else trained.windows
    manifests = parent["manifests"] if trained.manifests is None else trained.manifests
    return {"pipeline": config.pipeline, "window": window.name,
            "windows": windows + [window.name], "parent": champion_v,
            "manifests": manifests + [str(window.manifest_path)],
            "estimator": config.model.estimator, "created_ms": now_ms()}


def _store(reg: Registry, name: str, challenger: AnyModel, metrics: dict[str, Any],
           lineage: dict[str, Any], rows: int, t0: float) -> dict[str, Any]:
    """Step 9: save the challenger as a new version, move the champion pointer if it was
    promoted, then write the window's record - last."""
    promote = metrics["decision"]["promote"]
    version = reg.save(challenger, metrics, lineage)
    if promote:
        reg.set_champion(version)
    record = {"status": "trained", "version": version, "promoted": promote, "rows": rows}
    reg.record_window(name, **record)
    log.info("window %s: stored %s%s in %.2fs", name, version,
             " (champion)" if promote else "", time.perf_counter() - t0)
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
