"""The label rules of DESIGN.md and issue 14, as the join applies them: no state.

``LabelRules`` says what a feedback event makes of a request's label (the regression
outcome, whether feedback would change a finalized label), and how a finalized label is
written (the labeled example with its delay, version and sample weight, and whether
negative sampling publishes it).
"""
from __future__ import annotations

from typing import Optional

from schemas.config import PipelineConfig
from schemas.events import Feedback, Request
from schemas.records import labeled_example, negative_kept
from streams.join.join_state import DoneMarker


class LabelRules:
    """How feedback decides a label, for one pipeline config."""

    def __init__(self, config: PipelineConfig) -> None:
        self.label_window = config.join.label_window_ms
        self.window_ms = config.dataset.window_ms
        self.binary = config.label.kind == "binary"
        self.positive = frozenset(config.label.positive)
        self.outcome_types = frozenset(config.label.feedback)
        self.value_field = config.label.value_field
        self.sample_rate = config.label.negative_sample_rate if self.binary else 1.0

    def labeling(self, ftype: str) -> bool:
        """Whether feedback of type ``ftype`` can decide a label."""
        return ftype in self.positive or ftype in self.outcome_types

    def outcome(self, request_ts: int, ts: int, value, fields) -> Optional[float]:
        """Regression: the outcome feedback at ``ts`` gives a request at ``request_ts``
        (None: it has none)."""
        if self.value_field is None:
            return (ts - request_ts) / 1000.0
        v = value if self.value_field == "value" else fields.get(self.value_field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            return None
        return float(v)

    def would_change(self, marker: DoneMarker, fb: Feedback) -> bool:
        """Whether feedback for a finalized request would have changed its label."""
        if not (marker.ts <= fb.ts < marker.ts + self.label_window):
            return False
        if self.binary:
            return fb.type in self.positive and marker.label == 0
        return fb.type in self.outcome_types and (marker.label is None
                                                  or fb.ts < marker.label_ts)

    def example(self, req: Request, marker: DoneMarker) -> dict:
        """The labeled example of a finalized request, as its marker says."""
        negative = self.binary and marker.label == 0
        return labeled_example(req, marker.label, marker.label_ts, self.window_ms,
                               label_delay_ms=None if negative else marker.label_ts - req.ts,
                               label_version=marker.version,
                               sample_weight=1.0 / self.sample_rate if negative else 1.0)

    def published(self, rid: str, marker: DoneMarker) -> bool:
        """Whether a finalized label is published (not unlabeled, not sampled out)."""
        if marker.label is None:
            return False
        return not (self.binary and marker.label == 0 and marker.version == 1
                    and not negative_kept(rid, self.sample_rate))
