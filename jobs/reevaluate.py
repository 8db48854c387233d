"""A corrected window: re-evaluate, never retrain the past.

When corrections give a closed window a new version (the sink rewrites it and sends a
windows event with ``"version": n``, n >= 2), the models that were scored on that
window are scored again on the new version, and the metrics are stored per version:
``<model.path>/<version>/metrics-v<n>.json`` next to the ``metrics.json`` of the
version the window's job trained, and an entry under ``reevaluated`` in the window's
record (written last). Nothing is trained and the champion does not move: the decision
in that file says what the rule would decide on the corrected rows (``applied``: false).

The models are the champion that served the window (its prequential score) and the
pair the window's job judged: in shadow the candidate and the champion on the whole
window, with a holdout the new version and the champion on the time-later rows.
A (window, version) already evaluated - at training time (the record's
``data_version``) or since - is not evaluated again, so replayed events do nothing.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from schemas.config import PipelineConfig
from schemas.errors import JobError
from jobs import dataset as ds
from jobs.evaluation import judge, split_by_time
from jobs.metrics import evaluate
from jobs.registry import Registry, write_atomic

log = logging.getLogger("dlabel.jobs.reevaluate")


def evaluated_version(rec: dict[str, Any] | None) -> int:
    """The latest data version of a window its models were scored on (0: none)."""
    if not rec or rec.get("status") != "trained":
        return 0
    again = [int(k) for k in (rec.get("reevaluated") or {})]
    return max([int(rec.get("data_version") or 1)] + again)


def needs_reevaluation(rec: dict[str, Any] | None, version: int) -> bool:
    """Whether a windows event of data ``version`` asks for a re-evaluation: the window
    was trained (with a version) on an older data version and not re-evaluated since."""
    return bool(rec and rec.get("status") == "trained" and rec.get("version")) and \
        version > evaluated_version(rec)


def reevaluate(config: PipelineConfig, reg: Registry, window: str | int) -> dict[str, Any]:
    """Score the window's models on its current version; returns the window's record
    (``status`` "skipped" when that version was already evaluated). The caller holds
    the registry lock."""
    start = ds.parse_window(window)
    name = ds.window_iso(start)
    rec = reg.window_record(name)
    if not rec or rec.get("status") != "trained" or not rec.get("version"):
        raise JobError(f"window {name} has no trained version to re-evaluate; its job must "
                       "run first (dlabel jobs runs it)")
    w = ds.open_window(config.dataset.path, start)
    dv = int(w.manifest.get("version", 1))
    if dv <= evaluated_version(rec):
        log.info("window %s: data version %d already evaluated; nothing to do", name, dv)
        return {**rec, "status": "skipped"}
    df = ds.read_window(w).sort_values(["request_ts", "request_id"], kind="stable") \
        .reset_index(drop=True)
    trained = reg.metrics(rec["version"])
    kind, slices = config.label.kind, config.slices
    champion_v = trained.get("champion_version")
    champion = reg.load(champion_v) if champion_v else None
    out: dict[str, Any] = {"window": name, "data_version": dv, "rows": len(df),
                           "version": rec["version"], "champion_version": champion_v,
                           "prequential": evaluate(df, champion.predict(df), kind, slices)
                           if champion else None}
    decision = trained.get("decision") or {}
    seed = config.model.seed * 1_000_003 + start // 1000 + dv
    judged = None
    if champion is not None and decision.get("candidate"):  # shadow: the candidate
        cand = reg.load(decision["candidate"])
        judged = judge(config, df, champion.predict(df), cand.predict(df),
                       f"window {name} version {dv} in shadow ({len(df)} rows)", seed)
        judged.decision["candidate"] = decision["candidate"]
    elif champion is not None and trained.get("holdout_from_ms") is not None:
        _, hold = split_by_time(df, config.model.holdout_fraction)
        judged = judge(config, hold, champion.predict(hold),
                       reg.load(rec["version"]).predict(hold),
                       f"holdout of window {name} version {dv} ({len(hold)} rows)", seed)
    if judged is not None:
        out["holdout"] = {"champion": judged.champion, "challenger": judged.challenger}
        out["decision"] = {**judged.decision, "applied": False,
                           "was": {k: decision.get(k) for k in ("promote", "gain", "gain_ci")}}
    rel = f"{rec['version']}/metrics-v{dv}.json"
    write_atomic(reg.root / rel, (json.dumps(_finite(out), indent=1, sort_keys=True)
                                  + "\n").encode())
    models = [v for v in (champion_v, (decision.get("candidate") if out.get("decision") and
                                       decision.get("candidate") else
                                       rec["version"] if out.get("decision") else None)) if v]
    again = {**(rec.get("reevaluated") or {}), str(dv): {"metrics": rel, "models": models}}
    record = {k: v for k, v in rec.items() if k != "window"}
    reg.record_window(name, **{**record, "reevaluated": again})
    log.info("window %s: data version %d re-evaluated (%s) -> %s", name, dv,
             ", ".join(models) or "no model", rel)
    return {**record, "reevaluated": again, "status": "reevaluated"}


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def metrics_path(reg: Registry, rec: dict[str, Any], version: int) -> Path | None:
    """Where the metrics of data ``version`` of a window (its record ``rec``) are."""
    entry = (rec.get("reevaluated") or {}).get(str(version))
    return reg.root / entry["metrics"] if entry else None
