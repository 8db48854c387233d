"""The event-time join of requests with feedback: pure logic, no Kafka.

``EventTimeJoin`` holds pending requests, feedback that arrived before its request
("early" feedback) and markers of finalized requests (in its ``JoinStore``, which also
tracks the changed keys that the worker persists to the changelog-backed table after
the outputs they produced have been acknowledged). The worker feeds it parsed events
and watermarks; it answers with labeled examples and dead letters.

Times are integer epoch milliseconds. With watermark ``W`` and allowed lateness ``A``,
the *closed time* is ``W - A``: an event with ``ts < W - A`` is late, and a request is
finalized once ``W - A >= request.ts + label_window``, so every event the contract says
must count still finds its request pending.

With ``join.correction_window`` ``C`` on, feedback that arrives after its request was
finalized, but would have changed its label, corrects it while the closed time is
before ``request.ts + label_window + C``: the example is published again with the new
label and ``label_version`` + 1 (the done marker keeps the request for that). Late
feedback whose request is still pending then simply counts. With
``label.negative_sample_rate`` ``r < 1`` (binary), a negative is published only if
``negative_kept`` keeps its request id, with ``sample_weight`` ``1 / r``.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

from schemas.config import PipelineConfig
from schemas.events import Feedback, Request
from schemas.records import DeadLetter
from streams.join.label_rules import LabelRules
from streams.join.repartition import origin_of
from streams.join.join_state import (EARLY, REQUEST, DoneMarker, EarlyFeedback, LabeledOut,
                                     Output, PendingRequest, Source)
from streams.join.join_store import JoinStore


class EventTimeJoin(JoinStore):
    """Joins requests with feedback by key in event time (see module docstring)."""

    def __init__(self, config: PipelineConfig) -> None:
        self.rules = LabelRules(config)
        self.label_window = config.join.label_window_ms
        self.lateness = config.join.allowed_lateness_ms
        self.binary = self.rules.binary
        self.positive = self.rules.positive
        self.outcome_types = self.rules.outcome_types
        self.correction_window = config.join.correction_window_ms
        # a correction needs its request's marker: kept for the correction window at least
        self.dedupe_retention = max(config.join.dedupe_retention_ms, self.correction_window)
        super().__init__(self.label_window, self.label_window + self.dedupe_retention)
        #: input role (``Source.role``) -> topic, for dead letters
        self.input_topics = {"requests": config.topics.requests,
                             "feedback": config.topics.feedback}
        self.closed_time: Optional[int] = None  # W - A; None before any watermark
        self.counts: dict[str, int] = {}
        #: delays (feedback time - request time) of labeling feedback for known requests,
        #: inside their window or after it; drained by the metrics after each batch
        self.feedback_delays: deque[int] = deque(maxlen=100_000)

    # ------------------------------------------------------------------ inputs
    def on_request(self, req: Request, src: Source, raw: bytes) -> list[Output]:
        """Take one valid request; return what it makes known."""
        rid = req.request_id
        prior = self.pending.get(rid) or self.done.get(rid)
        if prior is not None:
            if (prior.partition, prior.offset) == (src.partition, src.offset):
                return self._replayed(rid, req)
            self._count("duplicate_request")
            first = "partition %d offset %d" % origin_of(prior.offset)
            return [self._dead_letter("duplicate_request",
                                      f"request_id {rid!r} was first seen at {first}", src, raw)]
        if self._is_late(req.ts):
            return [self._late(src, raw, req.ts)]
        pending = PendingRequest.of(req, src.partition, src.offset)
        self.pending[rid] = pending
        self._dirty[(REQUEST, rid)] = src.partition
        self._deadlines.push(req.ts + self.label_window, rid)
        early = self.early.pop(rid, None)
        if not early:
            return []
        out: list[Output] = []
        self._mark(EARLY, rid, early[0].partition)
        for fb in sorted(early, key=lambda e: (e.ts, e.offset)):
            out.extend(self._attach(pending, fb.ts, fb.type, fb.value, fb.fields, fb.offset))
            if rid not in self.pending:
                break
        return out

    def on_feedback(self, fb: Feedback, src: Source, raw: bytes) -> list[Output]:
        """Take one valid feedback event; return what it makes known."""
        late = self._is_late(fb.ts)
        if late and not self.correction_window:
            return [self._late(src, raw, fb.ts)]
        rid = fb.request_id
        pending = self.pending.get(rid)
        if pending is not None:
            return self._attach(pending, fb.ts, fb.type, fb.value, fb.fields, src.offset)
        marker = self.done.get(rid)
        if marker is not None:
            if self.rules.would_change(marker, fb):
                correction = self._correct(rid, marker, fb)
                if correction is not None:
                    return correction
                # It counts by the label rules, but the label is final and written:
                # late (after a restart the watermark may not show it, the state does).
                self._count("late")
                return [self._dead_letter("late", f"feedback at ts {fb.ts} arrived after "
                                          f"request {rid!r} was finalized", src, raw)]
            self._count(self._outside(marker.ts, fb.ts, fb.type) or "feedback_after_final")
            return []
        if late:
            return [self._late(src, raw, fb.ts)]
        entries = self.early.setdefault(rid, [])
        if any(e.offset == src.offset and e.partition == src.partition for e in entries):
            return []  # replay of feedback already buffered
        entries.append(EarlyFeedback(fb.ts, fb.type, fb.value, fb.fields, src.partition,
                                     src.offset, raw))
        self._mark(EARLY, rid, entries[0].partition)
        self._early_expiry.push(fb.ts, rid)
        return []

    def advance(self, watermark: int) -> list[Output]:
        """Move the watermark to ``watermark`` (never backwards); finalize what it closes.

        The closed time is ``watermark - allowed_lateness``. In order: regression
        requests whose earliest outcome is now certain are labeled; requests whose
        label window ended are finalized; early feedback that no request claimed in
        time becomes an orphan; done markers past their retention are forgotten.
        """
        return self._close(watermark - self.lateness, forget_done=True)

    def _close(self, closed: int, forget_done: bool) -> list[Output]:
        if self.closed_time is not None and closed <= self.closed_time:
            return []
        self.closed_time = closed
        out: list[Output] = []
        self._label_settled_outcomes(closed, out)
        self._finalize_expired_windows(closed, out)
        self._expire_early_feedback(closed, out)
        if forget_done:
            self.forget_done_markers(closed)
        return out

    def _label_settled_outcomes(self, closed: int, out: list[Output]) -> None:
        """Regression: a candidate outcome older than the closed time cannot be beaten."""
        for _, rid in self._ready.take(closed - 1):
            pending = self.pending.get(rid)
            if pending is not None and pending.candidates:
                best = min(pending.candidates, key=lambda c: (c[0], c[1]))
                out.append(self._finalize(pending, best[2], best[0]))

    def _finalize_expired_windows(self, closed: int, out: list[Output]) -> None:
        """Requests whose label window ended: a negative, their outcome, or unlabeled."""
        for deadline, rid in self._deadlines.take(closed):
            pending = self.pending.get(rid)
            if pending is None or pending.ts + self.label_window != deadline:
                continue
            if self.binary:
                out.append(self._finalize(pending, 0, deadline))
            elif pending.candidates:
                best = min(pending.candidates, key=lambda c: (c[0], c[1]))
                out.append(self._finalize(pending, best[2], best[0]))
            else:
                self._count("unlabeled")
                self._finalize(pending, None, deadline)

    def _expire_early_feedback(self, closed: int, out: list[Output]) -> None:
        """Feedback older than the closed time whose request never came: orphans."""
        for _, rid in self._early_expiry.take(closed - 1):
            entries = self.early.get(rid)
            if not entries:
                continue
            keep = [e for e in entries if e.ts >= closed]
            for e in entries:
                if e.ts < closed:
                    self._count("orphan_feedback")
                    out.append(self._dead_letter(
                        "orphan_feedback",
                        f"no request {rid!r} arrived within the label window of feedback "
                        f"at ts {e.ts}", Source("feedback", e.partition, e.offset),
                        e.original))
            self._mark(EARLY, rid, entries[0].partition)
            if keep:
                self.early[rid] = keep
            else:
                del self.early[rid]

    def flush_all(self) -> list[Output]:
        """End of input: finalize everything as if the watermark went to infinity.

        The done markers stay (and with them the changelog's): forgetting them is no
        finalization, it would only write a deletion per request at the end.
        """
        return self._close(2**62 - self.lateness, forget_done=False)

    # ---------------------------------------------------------------- helpers
    def _attach(self, pending: PendingRequest, ts: int, ftype: str, value, fields,
                offset: int) -> list[Output]:
        r_ts = pending.ts
        if not (r_ts <= ts < r_ts + self.label_window):
            self._count(self._outside(r_ts, ts, ftype) or "feedback_outside_window")
            return []
        if self.rules.labeling(ftype):
            self.feedback_delays.append(ts - r_ts)
        if self.binary:
            if ftype in self.positive:
                return [self._finalize(pending, 1, ts)]
            return []
        if ftype not in self.outcome_types:
            return []
        if pending.candidates is None:
            pending.candidates = []
        elif any(c[1] == offset for c in pending.candidates):
            return []
        outcome = self.rules.outcome(r_ts, ts, value, fields)
        if outcome is None:
            self._count("feedback_without_value")
            return []
        pending.candidates.append([ts, offset, outcome])
        self._mark(REQUEST, pending.request_id, pending.partition)
        self._ready.push(ts, pending.request_id)
        if self.closed_time is not None and ts < self.closed_time:
            best = min(pending.candidates, key=lambda c: (c[0], c[1]))
            return [self._finalize(pending, best[2], best[0])]
        return []

    def _outside(self, request_ts: int, ts: int, ftype: str) -> Optional[str]:
        """``feedback_after_window`` for labeling feedback past its request's window
        (the clicks a longer window would catch; their delays are recorded)."""
        if ts < request_ts + self.label_window or not self.rules.labeling(ftype):
            return None
        self.feedback_delays.append(ts - request_ts)
        return "feedback_after_window"

    def _correct(self, rid: str, marker: DoneMarker, fb: Feedback) -> Optional[list[Output]]:
        """A finalized label that ``fb`` changes, within the correction window: the
        corrected example (empty when it has no value). None: too late to correct."""
        if not self.correction_window or (
                self.closed_time is not None and
                self.closed_time >= marker.ts + self.label_window + self.correction_window):
            return None
        req = marker.to_request(rid)
        if req is None:  # finalized before corrections were kept
            return None
        if self.binary:
            label: Optional[float] = 1
        else:
            label = self.rules.outcome(req.ts, fb.ts, fb.value, fb.fields)
            if label is None:
                self._count("feedback_without_value")
                return []
        # An unlabeled (regression) request gets its first label; any other a new version.
        marker.version = marker.version + 1 if marker.label is not None else 1
        marker.label, marker.label_ts = label, fb.ts
        self.done.put(rid, marker)
        self._mark(REQUEST, rid, marker.partition)
        self._count("corrections")
        return [LabeledOut(self.rules.example(req, marker), marker.partition)]

    def _finalize(self, pending: PendingRequest, label, label_ts: int) -> Optional[LabeledOut]:
        rid = pending.request_id
        del self.pending[rid]
        kept = {"ts": pending.ts, "b": pending.body} if self.correction_window else None
        marker = DoneMarker(pending.ts, pending.partition, pending.offset, label, label_ts,
                            request=kept)
        self.done.put(rid, marker)
        self._dirty[(REQUEST, rid)] = pending.partition
        if label is None:
            return None
        if not self.rules.published(rid, marker):
            self._count("negatives_sampled_out")
            return None
        self._count("labeled")
        return LabeledOut(self.rules.example(pending.to_request(), marker), pending.partition)

    def _replayed(self, rid: str, req: Request) -> list[Output]:
        """The same request record read again (at-least-once replay after a restart)."""
        self._count("replayed")
        marker = self.done.get(rid)
        if marker is None or not self.rules.published(rid, marker):
            return []
        # Its label may not have reached the broker before the crash: send it again.
        # The record is rebuilt from the same bytes, so the copy is identical.
        return [LabeledOut(self.rules.example(req, marker), marker.partition)]

    def _is_late(self, ts: int) -> bool:
        return self.closed_time is not None and ts < self.closed_time

    def _late(self, src: Source, raw: bytes, ts: int) -> DeadLetter:
        self._count("late")
        return self._dead_letter("late", f"event time {ts} is more than the allowed lateness "
                                 f"behind the watermark (closed up to {self.closed_time})",
                                 src, raw)

    def _dead_letter(self, reason: str, detail: str, src: Source, raw: bytes) -> DeadLetter:
        partition, offset = origin_of(src.offset)
        return DeadLetter(reason, detail, self.input_topics[src.role], partition, offset, raw,
                          task=src.partition)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
