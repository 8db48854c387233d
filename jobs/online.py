"""In-window updates of the serving model (``model.update_every``): the champion's line
keeps learning the labels of the open windows, between two gated promotions.

Window-at-a-time retraining lags an online learner by up to a window: a label that
arrives at 10:05 is learned at the job of the 10:00 window, after 11:30. With
``model.update_every`` the updater learns each labeled example as it is published and
publishes a refreshed *serving* model every ``5m`` of event time (or every ``N rows``):

- **The line.** A copy of the champion (the gated model of ``champion.json``) learns,
  with ``partial_fit``, the closed windows after its lineage (read through their
  manifests) and then every labeled example of later windows, in the order of their
  ``label_ts``. Before the first champion the line is a new model (``v0000``).
- **Published as a sub-version** of the champion (``v0003.u0012``, jobs.serving),
  atomically; the model server reads ``serving.json``. The champion pointer, the
  versions and every promotion decision are the window jobs' alone: at each window close
  the job judges and promotes exactly as without updates.
- **A new champion** (a promotion at close, or ``dlabel models promote``) starts a new
  line from it at once: the closed windows after its lineage, then the open windows'
  rows learned so far (kept in memory until their window closes).
- **The guard** (jobs.online_guard): each batch is scored by the line and by the frozen
  champion before it is learned. When the line's rolling loss is worse by more than
  ``update_guard.tolerance``, the serving pointer goes back to the champion and updates
  stop until the next window closes; then a new line starts from the champion with the
  labels that arrive from then on.

Skipped: corrections (``label_version`` > 1: the job at close learns the corrected
window), repeated request ids (an at-least-once copy), rows of windows the line already
covers (closed when it started). Event time is the largest ``label_ts`` seen; the wall
clock (``now_ms``) only stamps records.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import pandas as pd

from schemas.config import PipelineConfig
from schemas.dataset_schema import arrow_schema, examples_to_table
from schemas.errors import JobError
from jobs import dataset as ds
from jobs.job import wall_ms
from jobs.models import AnyModel, new_model
from jobs.online_guard import Guard
from jobs.registry import Registry
from jobs.serving import ServingStore

log = logging.getLogger("dlabel.jobs.online")


@dataclass
class Line:
    """The serving line: the champion it continues (None: none yet), the model learning,
    the frozen champion (the guard's reference), and the windows it covers up to."""
    base: Optional[str]
    model: AnyModel
    frozen: Optional[AnyModel]
    floor_ms: Optional[int]  # rows of windows starting at or before this are covered
    replayed: list[str] = field(default_factory=list)
    rows: int = 0  # rows learned since the champion (replayed ones included)


class OnlineUpdater:
    """Learns labeled examples into the serving line and publishes it (module docstring).

    Feed it with ``add`` (labeled examples as the labeled topic carries them, with their
    (partition, offset) when read from Kafka) and call ``step`` as often as convenient:
    it starts a new line when the champion changed and publishes when an update is due.
    """

    def __init__(self, config: PipelineConfig, registry: Optional[Registry] = None,
                 store: Optional[ServingStore] = None,
                 now_ms: Callable[[], int] = wall_ms) -> None:
        spec = config.model.updates
        if not spec.enabled:
            raise JobError("in-window updates are off; set model.update_every (e.g. 5m)")
        self.config, self.spec, self.now_ms = config, spec, now_ms
        self.registry = registry or Registry(config.model.path, config.model.trusted_types)
        self.store = store or ServingStore(config.model.path, config.model.trusted_types)
        self.schema = arrow_schema(config)
        self.guard = Guard(config.label.kind, config.model.promotion.metric, spec.tolerance,
                           spec.guard_rows)
        self.line: Optional[Line] = None
        self.buffer: dict[int, dict[str, dict]] = {}  # open windows' rows, for a new line
        self.first_offsets: dict[int, dict[int, int]] = {}  # window -> partition -> offset
        self.position: dict[int, int] = {}  # partition -> next offset read
        self.pending: list[dict] = []
        self.event_time: Optional[int] = None
        self.next_due: Optional[int] = None
        self.suspended: Optional[str] = None
        self.suspended_at: int = 0  # closed windows when the guard stopped the updates
        self.skipped = {"corrections": 0, "duplicates": 0, "covered": 0}
        self.rollbacks = 0  # times the guard sent serving back to the champion

    # ---- input --------------------------------------------------------------------
    def add(self, rows: Iterable[dict[str, Any]],
            positions: Optional[Iterable[tuple[int, int]]] = None) -> None:
        """Take labeled examples (dicts, as on the labeled topic) in arrival order."""
        rows = list(rows)
        pos = list(positions) if positions is not None else [None] * len(rows)
        for row, at in zip(rows, pos):
            if at is not None:
                self.position[at[0]] = max(self.position.get(at[0], 0), at[1] + 1)
            if (row.get("label_version") or 1) > 1:
                self.skipped["corrections"] += 1
                continue
            w, rid = int(row["window_start"]), str(row["request_id"])
            rows_of = self.buffer.setdefault(w, {})
            if rid in rows_of:
                self.skipped["duplicates"] += 1
                continue
            rows_of[rid] = row
            if at is not None:
                first = self.first_offsets.setdefault(w, {})
                first[at[0]] = min(first.get(at[0], at[1]), at[1])
            self.pending.append(row)
            ts = int(row["label_ts"])
            self.event_time = ts if self.event_time is None else max(self.event_time, ts)

    def resume_offsets(self) -> dict[int, int]:
        """Per labeled partition, where a restarted updater reads from so that it sees
        every row of the open windows again (the earliest one buffered, else the end)."""
        out = dict(self.position)
        for firsts in self.first_offsets.values():
            for p, off in firsts.items():
                out[p] = min(out.get(p, off), off)
        return out

    # ---- the loop ---------------------------------------------------------------------
    def step(self) -> Optional[str]:
        """Start a new line if the champion changed (publishing it at once), else learn
        and publish when an update is due. Returns what ``serving.json`` now names when
        it moved, else None."""
        champion = self.registry.champion()
        if self.line is None or champion != self.line.base:
            reason = "first line" if self.line is None else \
                f"new champion {champion} (was {self.line.base})"
            self._new_line(champion, replay=True)
            return self._learn_and_publish(reason)
        if self.suspended:
            closed = len(ds.closed_windows(self.config.dataset.path))
            if closed > self.suspended_at:
                self._new_line(champion, replay=False)
                log.info("a window closed since the guard stopped the updates; a new line "
                         "starts from %s", champion)
            return None
        if not self._due():
            return None
        return self._learn_and_publish("in-window update")

    def _due(self) -> bool:
        if not self.pending or self.event_time is None:
            return False
        if self.spec.every_rows is not None:
            return len(self.pending) >= self.spec.every_rows
        every = self.spec.every_ms
        if self.next_due is None:
            self.next_due = (self.event_time // every + 1) * every
        return self.event_time >= self.next_due

    def _new_line(self, champion: Optional[str], replay: bool) -> None:
        """A line from ``champion``: the closed windows after its lineage (``replay``),
        then the open windows' rows (``replay``; else only rows that arrive from now on)."""
        reg, path = self.registry, self.config.dataset.path
        frozen = reg.load(champion) if champion else None
        model = frozen.copy() if frozen is not None else new_model(self.config)
        lineage = [ds.parse_window(w) for w in reg.lineage(champion)["windows"]] \
            if champion else []
        closed = ds.closed_windows(path)
        last = max(lineage) if lineage else None
        todo = [w for w in closed if last is None or w > last] if replay else []
        rows = 0
        for start in todo:
            df = ds.read_window(ds.open_window(path, start))
            if len(df):
                model.partial_fit(df.sort_values(["request_ts", "request_id"], kind="stable"))
                rows += len(df)
        floor = max(closed + lineage) if closed or lineage else None
        self.line = Line(champion, model, frozen, floor, [ds.window_iso(w) for w in todo], rows)
        for w in [w for w in self.buffer if floor is not None and w <= floor]:
            del self.buffer[w]
            self.first_offsets.pop(w, None)
        self.pending = [r for rows_of in self.buffer.values() for r in rows_of.values()] \
            if replay else []
        self.guard.reset()
        self.suspended = None
        self.next_due = None
        log.info("serving line from %s: %d closed window(s) replayed (%d rows), %d open "
                 "row(s) to learn", champion or "a new model", len(todo), rows,
                 len(self.pending))

    def _learn_and_publish(self, reason: str) -> Optional[str]:
        """Learn the pending rows (guard first), then publish the line, or roll back."""
        line = self.line
        batch = self._batch()
        if batch is not None:
            if line.frozen is not None:
                self.guard.observe(batch, line.model.predict(batch), line.frozen.predict(batch))
            line.model.partial_fit(batch)
            line.rows += len(batch)
        if self.spec.every_ms is not None and self.event_time is not None:
            every = self.spec.every_ms
            self.next_due = (self.event_time // every + 1) * every
        verdict = self.guard.verdict()
        facts = self._facts(reason, 0 if batch is None else len(batch))
        if verdict:
            self.rollbacks += 1
            self.suspended = verdict
            self.suspended_at = len(ds.closed_windows(self.config.dataset.path))
            self.store.point_at_champion(line.base, verdict, facts)
            log.warning("%s; serving the champion %s until the next window closes", verdict,
                        line.base)
            return line.base
        if line.rows == 0:  # nothing learned beyond the champion: serve it as it is
            if line.base is None:
                return None
            self.store.point_at_champion(line.base, reason, facts)
            return line.base
        name = self.store.publish(line.model, line.base, facts)
        self._prune_closed()
        return name

    def _batch(self) -> Optional[pd.DataFrame]:
        """The pending rows the line does not cover, as the dataset's frame, in label order."""
        floor = self.line.floor_ms
        keep = [r for r in self.pending if floor is None or int(r["window_start"]) > floor]
        self.skipped["covered"] += len(self.pending) - len(keep)
        self.pending = []
        if not keep:
            return None
        keep.sort(key=lambda r: (int(r["label_ts"]), str(r["request_id"])))
        return examples_to_table(keep, self.schema).to_pandas()

    def _prune_closed(self) -> None:
        """Forget the buffered rows of windows that closed (a new line reads them from
        their manifests)."""
        closed = set(ds.closed_windows(self.config.dataset.path))
        for w in [w for w in self.buffer if w in closed]:
            del self.buffer[w]
            self.first_offsets.pop(w, None)

    def _facts(self, reason: str, learned: int) -> dict[str, Any]:
        """What ``update.json`` records about this update."""
        return {"reason": reason, "event_time_ms": self.event_time,
                "created_ms": self.now_ms(), "rows_learned": learned,
                "line_rows": self.line.rows, "replayed_windows": self.line.replayed,
                "covers_windows_to_ms": self.line.floor_ms,
                "resume_offsets": {str(p): o for p, o in self.resume_offsets().items()},
                "guard": self.guard.facts(), "skipped": dict(self.skipped),
                "every_ms": self.spec.every_ms, "every_rows": self.spec.every_rows}
