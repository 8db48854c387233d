"""Records in, outputs out: parsing, watermark and join put together, no Kafka.

``JoinProcessor`` is what the worker runs for every batch it consumes, and what the
tests drive directly with tables of events (one code path for both). It never reads
the wall clock itself: the clock is injected (it only matters for idle inputs).
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Optional, Sequence

from schemas.config import PipelineConfig
from schemas.errors import EventError
from schemas.events import MIN_TS_MS, EventParser
from schemas.pii import PiiHasher
from schemas.records import DeadLetter
from streams.join.event_time_join import EventTimeJoin
from streams.join.join_state import Output, Source
from streams.join.repartition import (WATERMARK_HEADER, Forward, Repartitioner, decode_source,
                                      decode_watermark, position)
from streams.kafka.partitioner import partitions_for
from streams.join.watermark import WatermarkTracker

REQUESTS, FEEDBACK = "requests", "feedback"


class InputRecord(NamedTuple):
    """One consumed input record, as far as the join cares (a Kafka ConsumerRecord fits)."""

    offset: int
    value: bytes
    headers: tuple = ()   # repartition topics: where the record came from (see repartition)


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
        self.repartitioner = Repartitioner(config, self.parser)
        #: copartitioned inputs: each event's key must belong to the partition it is on
        self._check_routing = not config.repartitions
        self._tasks = config.topics.partitions
        #: (role, (input partition, task)) -> whether the hop was at that input's end
        self.hop_at_end: dict[tuple, bool] = {}
        #: (role, task) -> {input partition: the last input offset forwarded to the task}
        self._forwarded: dict[tuple[str, int], dict[int, int]] = {}
        self.reforwarded = 0  # events an at-least-once hop forwarded again (skipped)

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
        routed = self._routed(records, parse, partition) if self._check_routing else None
        for i, rec in enumerate(records):
            value = rec.value
            if routed is None:
                try:
                    event = parse(value)
                except EventError as exc:
                    event = exc
            else:
                event = routed[i]
            if isinstance(event, EventError):
                invalid = True
                out.append(DeadLetter(event.reason, event.detail, self.join.input_topics[role],
                                      partition, rec.offset, value))
                continue
            if type(event) is tuple:  # copartitioned: (its key's partition, its id)
                invalid = True
                out.append(self._misrouted(role, partition, rec.offset, value, event))
                continue
            ts = event.ts
            if max_ts is None or ts > max_ts:
                max_ts = ts
            res = on_event(event, Source(role, partition, position(partition, rec.offset)),
                           value)
            if res:
                out.extend(res)
        if max_ts is not None:
            self.watermark.observe(role, partition, max_ts)
        elif invalid:
            self.watermark.touch(role, partition)
        return self._counted(out) if out else out

    def _routed(self, records: Sequence[InputRecord], parse, partition: int) -> list:
        """Copartitioned inputs: each record parsed (the event, or its ``EventError``),
        or, for an event whose key belongs to another partition, that partition. The
        keys of a batch are hashed at once (``partitions_for``)."""
        parsed: list = []
        keys: list[bytes] = []
        at: list[int] = []
        for i, rec in enumerate(records):
            try:
                event = parse(rec.value)
            except EventError as exc:
                parsed.append(exc)
                continue
            parsed.append(event)
            keys.append(event.request_id.encode())
            at.append(i)
        for i, key, want in zip(at, keys, partitions_for(keys, self._tasks)):
            if want != partition:
                parsed[i] = (want, parsed[i].request_id)
        return parsed

    def _misrouted(self, role: str, partition: int, offset: int, value: bytes,
                   wrong: tuple[int, str]) -> DeadLetter:
        want, request_id = wrong
        return DeadLetter("misrouted", f"{self.config.join.key} {request_id!r} belongs "
                          f"to partition {want} (murmur2 of the key, as Java clients "
                          f"partition), not {partition}; key records by it with that "
                          "partitioner, or remove inputs.copartitioned to have dlabel "
                          "repartition", self.join.input_topics[role], partition, offset, value)

    def forward(self, role: str, partition: int, records: Sequence[InputRecord]
                ) -> tuple[list[Forward], list[Output]]:
        """The repartition hop for records of one input partition: (forwards, dead letters).

        The dead letters are the hop's task's (``hop_task``); they are counted here.
        """
        self.records_in[role] += len(records)
        forwards, dead = self.repartitioner.forward(role, partition, records)
        return forwards, self._counted(dead) if dead else dead

    def process_forwarded(self, role: str, task: int,
                          records: Sequence[InputRecord]) -> list[Output]:
        """Handle records of the repartition topic of ``role`` (partition ``task``), in order.

        Each record is an input event with its source in a header, or a watermark
        marker of an input partition; event time is tracked per (input partition, task).
        Otherwise as ``process``.
        """
        if role == REQUESTS:
            parse, on_event = self.parser.parse_request, self.join.on_request
        else:
            parse, on_event = self.parser.parse_feedback, self.join.on_feedback
        topic = self.join.input_topics[role]
        out: list[Output] = []
        max_ts: dict[int, int] = {}
        watermark = self.watermark
        forwarded = self._forwarded.setdefault((role, task), {})
        new_source = tuple.__new__  # Source's own __new__ is a Python function: 3x the cost
        for rec in records:
            name, header = rec.headers[0]
            if name == WATERMARK_HEADER:
                origin, ts, at_end = decode_watermark(header)
                key = (origin, task)
                self.hop_at_end[(role, key)] = at_end
                # a marker that moves nothing is no activity: its input may go idle
                if ts is not None and ts > (watermark.max_ts(role, key) or MIN_TS_MS):
                    watermark.observe(role, key, ts)
                continue
            origin, offset = decode_source(header)
            if offset <= forwarded.get(origin, -1):
                # forwarded again: an at-least-once hop replayed input it had forwarded
                # but not committed. Seen already, by the input offsets' order.
                self.reforwarded += 1
                continue
            forwarded[origin] = offset
            value = rec.value
            try:
                event = parse(value)
            except EventError as exc:  # the hop read only its key and time
                out.append(DeadLetter(exc.reason, exc.detail, topic, origin, offset, value,
                                      task=task))
                continue
            ts = event.ts
            if ts > max_ts.get(origin, ts - 1):
                max_ts[origin] = ts
            res = on_event(event, new_source(Source, (role, task, position(origin, offset))),
                           value)
            if res:
                out.extend(res)
        for origin, ts in max_ts.items():
            watermark.observe(role, (origin, task), ts)

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
