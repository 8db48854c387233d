"""Records in, outputs out: parsing, watermark and join put together, no Kafka.

``JoinProcessor`` is what the worker runs for every batch it consumes, and what the
tests drive directly with tables of events (one code path for both). It never reads
the wall clock itself: the clock is injected (it only matters for idle inputs).
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from schemas.config import PipelineConfig
from schemas.errors import EventError
from schemas.events import EventParser
from schemas.pii import PiiHasher
from schemas.records import DeadLetter
from streams.join.event_time_join import EventTimeJoin
from streams.join.join_state import Output, Source
from streams.join.watermark import WatermarkTracker

REQUESTS, FEEDBACK = "requests", "feedback"


class InputRecord(NamedTuple):
    """One consumed input record, as far as the join cares (a Kafka ConsumerRecord fits)."""

    offset: int
    value: bytes


class JoinProcessor:
    """Parses records, tracks the watermark and runs the event-time join."""

    def __init__(self, config: PipelineConfig, pii: Optional[PiiHasher],
                 clock: Callable[[], int]) -> None:
        self.config = config
        self.parser = EventParser(config, pii)
        self.join = EventTimeJoin(config)
        self.watermark = WatermarkTracker(config.join.idle_timeout_ms, clock)
        self.records_in = {REQUESTS: 0, FEEDBACK: 0}
        self.dead_letters: dict[str, int] = {}

    def process(self, role: str, partition: int, records: Sequence[InputRecord]) -> list[Output]:
        """Handle consumed records of one input partition (``.offset``, ``.value``), in order.

        The watermark is not recomputed between records: call ``tick`` once after the
        batch (the worker does, once per fetched batch; tests that feed one record at a
        time tick after each). Events of a batch are judged against the watermark
        before the batch (none is judged against a watermark it moved itself), and
        negatives come out at the end of the batch.
        """
        self.records_in[role] += len(records)
        if role == REQUESTS:
            parse, on_event = self.parser.parse_request, self.join.on_request
        else:
            parse, on_event = self.parser.parse_feedback, self.join.on_feedback
        out: list[Output] = []
        max_ts: Optional[int] = None
        invalid = False
        for rec in records:
            value = rec.value
            try:
                event = parse(value)
            except EventError as exc:
                invalid = True
                out.append(DeadLetter(exc.reason, exc.detail, self.join.input_topics[role],
                                      partition, rec.offset, value))
                continue
            ts = event.ts
            if max_ts is None or ts > max_ts:
                max_ts = ts
            res = on_event(event, Source(role, partition, rec.offset), value)
            if res:
                out.extend(res)
        if max_ts is not None:
            self.watermark.observe(role, partition, max_ts)
        elif invalid:
            self.watermark.touch(role, partition)
        return self._counted(out) if out else out

    def tick(self) -> list[Output]:
        """Recompute the watermark (idle inputs may have moved it) and finalize."""
        wm = self.watermark.current()
        if wm is None:
            return []
        return self._counted(self.join.advance(wm))

    def drain(self) -> list[Output]:
        """End of input (bounded replay): finalize every pending request."""
        return self._counted(self.join.flush_all())

    def _counted(self, out: Iterable[Output]) -> list[Output]:
        out = [o for o in out if o is not None]
        for o in out:
            if type(o) is DeadLetter:
                self.dead_letters[o.reason] = self.dead_letters.get(o.reason, 0) + 1
        return out
