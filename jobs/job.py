"""One retraining job: one closed window in, one registry version (and maybe a new
champion) out. ``python -m jobs.job --config-json F --window W`` runs it as the
runner's subprocess (``--reevaluate``: a corrected window version, jobs.reevaluate).

Steps, in order (each one a line in the log):
1. Skip when the window already has a record, or finish the records of a version a
   crashed run already stored for it (so a window is never trained twice).
2. Read the window through its manifest, sorted by (request_ts, request_id).
3. Load the champion (checksum and skops type check) or start a new model.
4. Prequential score: the champion on the whole window, before it learns from it;
   and the score of the logged ``prediction`` column, when present.
5. Drift of every feature and of the label against the previous closed window; when
   something drifted, ``model.on_drift`` says how the challenger adapts (jobs.adapt).
6-8. (jobs.evaluation) ``promotion.evaluate: shadow``: the candidate the previous job
   trained is judged next to the champion on this whole window (intervals, promotion
   rule), then the next candidate learns this window. ``holdout``: the challenger
   learns the time-earlier rows and is judged on the time-later ``holdout_fraction``.
9. Save the challenger as a new version (metrics.json, lineage), then move the
   champion pointer if a version was promoted, then write the window's record - last.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from schemas.config import PipelineConfig
from schemas.errors import DlabelError
from jobs import dataset as ds
from jobs.adapt import adaptation
from jobs.drift import window_drift
from jobs.evaluation import Outcome, run_steps
from jobs.metrics import evaluate, row_weights, slice_values
from jobs.models import AnyModel
from jobs.registry import Registry, registry_lock
from jobs.training import Trained

log = logging.getLogger("dlabel.jobs.job")
MIN_ROWS = 10


def wall_ms() -> int:
    """The wall clock in epoch ms (only for creation stamps, never for event time)."""
    return time.time_ns() // 1_000_000


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
    metrics = reg.metrics(version)
    promote = metrics["decision"]["promote"]
    target = metrics["decision"].get("promotes_version", version)
    if promote and reg.champion() == metrics.get("champion_version"):
        reg.set_champion(target)
    log.info("window %s: version %s was stored by an earlier run; records completed", name,
             version)
    record = _record(version, promote, metrics)
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
    champion_scores = champion.predict(df) if champion else None
    prequential, logged = _prequential(config, df, champion_scores)
    drift = _drift(config, start_ms, window.name, df)
    adapt = adaptation(config, drift)
    out = run_steps(config, reg, window.name, start_ms, df, champion_v, champion,
                    champion_scores, adapt)
    decision = {**out.judged.decision,
                "adaptation": adapt.facts() if adapt else None}
    metrics = {
        **_window_facts(config, window, df, out), "kind": config.label.kind,
        "estimator": config.model.estimator, "champion_version": champion_v,
        "training": out.trained.facts("refit" if adapt and adapt.mode == "refit" else
                                      config.model.training, window.name),
        "prequential": prequential, "logged": logged,
        "holdout": {"champion": out.judged.champion, "challenger": out.judged.challenger},
        "drift": drift, "decision": decision,
        "duration_s": round(time.perf_counter() - t0, 3),
    }
    if adapt:
        log.warning("window %s: drift (%s): on_drift %s", window.name,
                    ", ".join(adapt.trigger), adapt.mode)
    log.info("window %s: %s -> %s", window.name, decision["reason"],
             f"promote {decision.get('promotes')}" if decision["promote"] else
             "keep the champion")
    if out.base_version != champion_v:  # shadow: the candidate line continued
        parent = reg.lineage(out.base_version)
    lineage = _lineage(config, window, out.base_version, parent, out.trained, now_ms)
    return _store(reg, window.name, out, metrics, lineage, t0)


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
                 scores: np.ndarray | None) -> tuple[dict | None, dict | None]:
    """Step 4: (the champion's ``scores`` on the whole window before it learns from it,
    the logged ``prediction`` column); each None when there is nothing to score."""
    kind, slices = config.label.kind, config.slices
    prequential = evaluate(df, scores, kind, slices) if scores is not None else None
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


def _window_facts(config: PipelineConfig, window: ds.Window, df: pd.DataFrame,
                  out: Outcome) -> dict[str, Any]:
    """The metrics' description of the window: bounds, its data version, row counts,
    where the holdout starts (holdout mode), and the label rate overall and per slice
    value (weighted by ``sample_weight``)."""
    label = df["label"].astype("float64")
    w = pd.Series(row_weights(df), index=df.index)
    slice_rates = {f: {v: {"rows": int(len(g)), "label_rate": _rate(g, w[g.index])}
                       for v, g in label.groupby(slice_values(df[f]))} for f in config.slices}
    return {"window": window.name, "window_start_ms": window.start_ms,
            "window_end_ms": window.end_ms, "data_version": window.manifest.get("version", 1),
            "rows": len(df), "train_rows": out.train_rows, "holdout_rows": out.holdout_rows,
            "holdout_from_ms": out.holdout_from_ms, "label_rate": _rate(label, w),
            "slice_label_rate": slice_rates}


def _rate(label: pd.Series, w: pd.Series) -> float:
    return float(np.average(label, weights=w))


def _lineage(config: PipelineConfig, window: ds.Window, parent_v: str | None,
             parent: dict[str, Any], trained: Trained,
             now_ms: Callable[[], int]) -> dict[str, Any]:
    """The new version's lineage: the windows it learned (its parent's and this one, or a
    refit's) and their manifests."""
    windows = parent["windows"] if trained.windows is None else trained.windows
    manifests = parent["manifests"] if trained.manifests is None else trained.manifests
    return {"pipeline": config.pipeline, "window": window.name,
            "windows": windows + [window.name], "parent": parent_v,
            "manifests": manifests + [str(window.manifest_path)],
            "estimator": config.model.estimator, "created_ms": now_ms()}


def _store(reg: Registry, name: str, out: Outcome, metrics: dict[str, Any],
           lineage: dict[str, Any], t0: float) -> dict[str, Any]:
    """Step 9: save the challenger as a new version, move the champion pointer if a
    version was promoted (this one, or the candidate judged in shadow), then write the
    window's record - last."""
    promote = metrics["decision"]["promote"]
    if promote and out.promote != "new":
        metrics["decision"]["promotes_version"] = out.promote
    version = reg.save(out.trained.model, metrics, lineage)
    if promote:
        reg.set_champion(version if out.promote == "new" else out.promote)
    record = _record(version, promote, metrics)
    reg.record_window(name, **record)
    log.info("window %s: stored %s%s in %.2fs", name, version,
             f" (champion: {reg.champion()})" if promote else "", time.perf_counter() - t0)
    return record


def _record(version: str, promote: bool, metrics: dict[str, Any]) -> dict[str, Any]:
    """A trained window's record: its version, whether the job promoted one (and which:
    ``promoted_version``), its rows and the data version it was trained on."""
    target = metrics["decision"].get("promotes_version", version) if promote else None
    return {"status": "trained", "version": version, "promoted": promote,
            "promoted_version": target, "rows": metrics["rows"],
            "data_version": metrics.get("data_version", 1)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the job subprocess: exit 0 on success, 1 with the error logged."""
    from jobs.configio import config_from_json
    ap = argparse.ArgumentParser(prog="python -m jobs.job")
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--window", required=True)
    ap.add_argument("--manifest")
    ap.add_argument("--reevaluate", action="store_true",
                    help="score the models of a corrected window on its new version")
    args = ap.parse_args(argv)
    from streams.common.logs import setup_logging
    setup_logging(logging.INFO)  # text or JSON, as the runner was started (env)
    config = config_from_json(Path(args.config_json).read_text())
    try:
        if args.reevaluate:
            from jobs.reevaluate import reevaluate
            reg = Registry(config.model.path, config.model.trusted_types)
            with registry_lock(reg.root):
                record = reevaluate(config, reg, args.window)
        else:
            record = run_job(config, args.window, manifest=args.manifest)
    except DlabelError as e:
        log.error("window %s failed: %s", args.window, e)
        return 1
    print(record, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
