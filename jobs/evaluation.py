"""Steps 6-8 of a job: which rows judge which challenger, training, and the decision.

``model.promotion.evaluate`` chooses the rows both models are scored on, rows neither
of them learned from:

- ``shadow`` (default): the challenger a job trains is not judged by that job. It waits
  as the *candidate*, and the next job scores it in shadow, next to the champion, on
  the whole next window (five times the rows of a 20% holdout, and the same rows the
  champion's prequential score uses), then promotes it or not. The job then trains the
  next candidate on its whole window, continuing from the candidate (the line that
  keeps learning; from the champion instead when the candidate is significantly worse).
- ``holdout``: the challenger learns the time-earlier rows of the window and is judged
  with the champion on the time-later ``holdout_fraction``.

Either way the decision carries the intervals of jobs.bootstrap and says what it was
evaluated on (``evaluated_on``) and which version it promotes (``promotes``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from schemas.config import PipelineConfig
from jobs.adapt import Adaptation
from jobs.bootstrap import method, paired_intervals
from jobs.metrics import evaluate
from jobs.models import AnyModel
from jobs.promotion import decide
from jobs.registry import Registry
from jobs.training import Trained, train_challenger

log = logging.getLogger("dlabel.jobs.evaluation")


@dataclass(frozen=True)
class Judged:
    """Both models' scores on the evaluation rows (with ``ci``) and the decision."""
    champion: dict | None
    challenger: dict | None
    decision: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What steps 6-8 give the job: the new challenger, the judgement, the row counts,
    and the version to make champion (None: keep the champion)."""
    trained: Trained
    judged: Judged
    train_rows: int
    holdout_rows: int
    holdout_from_ms: int | None
    promote: str | None  # "new" (the version this job stores) or a stored version name
    base_version: str | None  # the version the challenger continued from (None: new)


def split_by_time(df: pd.DataFrame, holdout_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, holdout): the time-earlier rows and the time-later ``holdout_fraction``.

    ``df`` must already be sorted by time; at least one row goes to each part.
    """
    n = len(df)
    n_hold = min(n - 1, max(1, round(n * holdout_fraction)))
    return df.iloc[: n - n_hold], df.iloc[n - n_hold:]


def judge(config: PipelineConfig, rows: pd.DataFrame, champion: np.ndarray | None,
          challenger: np.ndarray, evaluated_on: str, seed: int) -> Judged:
    """Score both models on ``rows`` (scores aligned with them), with intervals of the
    promotion metric (and the calibration gap), then apply the promotion rule."""
    kind, slices, spec = config.label.kind, config.slices, config.model.promotion
    scores = {"challenger": challenger} if champion is None else \
        {"champion": champion, "challenger": challenger}
    points = {k: evaluate(rows, v, kind, slices) for k, v in scores.items()}
    extra = ("calibration_gap",) if kind == "binary" else ()
    intervals = paired_intervals(rows, scores, spec.metric, slices, spec.confidence, seed,
                                 points, extra)
    for name, ev in points.items():
        ev["overall"]["ci"] = intervals["models"][name]
    decision = decide(points.get("champion"), points["challenger"], spec, intervals)
    decision.update(confidence=spec.confidence, ci_method=method(len(rows)) if spec.confidence > 0
                    else "none (point estimates)", evaluated_on=evaluated_on)
    return Judged(points.get("champion"), points["challenger"], decision)


def candidate(reg: Registry, name: str, champion_v: str | None) -> str | None:
    """The version waiting to be judged: the latest one, trained on an earlier window,
    when it is not the champion."""
    for v in reversed(reg.versions()):
        if reg.lineage(v).get("window", "") < name:
            return v if v != champion_v else None
    return None


def run_steps(config: PipelineConfig, reg: Registry, name: str, start_ms: int,
              df: pd.DataFrame, champion_v: str | None, champion: AnyModel | None,
              champion_scores: np.ndarray | None, adapt: Adaptation | None) -> Outcome:
    """Steps 6-8 in the configured mode: split or not, train, judge, decide."""
    seed = config.model.seed * 1_000_003 + start_ms // 1000
    if config.model.promotion.evaluate == "holdout":
        train, hold = split_by_time(df, config.model.holdout_fraction)
        trained = train_challenger(config, champion, train, start_ms, adapt)
        on = (f"holdout of window {name}: its time-later {config.model.holdout_fraction:.0%} "
              f"({len(hold)} rows)")
        judged = judge(config, hold, champion.predict(hold) if champion else None,
                       trained.model.predict(hold), on, seed)
        judged.decision["promotes"] = "the new version" if judged.decision["promote"] else None
        return Outcome(trained, judged, len(train), len(hold), _ms(hold["request_ts"].iloc[0]),
                       "new" if judged.decision["promote"] else None, champion_v)
    cand_v = candidate(reg, name, champion_v) if champion is not None else None
    base, promote = champion, None
    if champion is None:  # the first model: promoted as soon as it exists
        judged = Judged(None, None, decide(None, {"overall": {}, "slices": {}},
                                           config.model.promotion))
        judged.decision.update(evaluated_on="nothing (no champion to compare with)",
                               promotes="the new version", ci_method=None)
        promote = "new"
    elif cand_v is None:
        judged = Judged(None, None, {
            "promote": False, "metric": config.model.promotion.metric, "gain": None,
            "gain_ci": None, "confidence": config.model.promotion.confidence,
            "reason": "no candidate yet: this job's version is judged on the next window",
            "evaluated_on": "nothing yet (shadow)", "ci_method": None, "worst_slice": None,
            "unjudged_slices": [], "promotes": None})
    else:
        cand = reg.load(cand_v)
        judged = judge(config, df, champion_scores, cand.predict(df),
                       f"window {name} in shadow ({len(df)} rows, unseen by both)", seed)
        judged.decision.update(candidate=cand_v, promotes=cand_v if judged.decision["promote"]
                               else None)
        ci = judged.decision.get("gain_ci")
        if judged.decision["promote"] or ci is None or ci[1] >= 0:
            base = cand  # the candidate line keeps learning
        judged.decision["trained_from"] = cand_v if base is cand else champion_v
        promote = cand_v if judged.decision["promote"] else None
    trained = train_challenger(config, base, df, start_ms, adapt)
    return Outcome(trained, judged, len(df), 0 if cand_v is None else len(df), None, promote,
                   cand_v if base is not champion else champion_v)


def _ms(ts: Any) -> int:
    """Epoch ms of a pandas/pyarrow timestamp or an int."""
    if isinstance(ts, pd.Timestamp):
        return int(ts.value // 1_000_000)
    return int(ts)
