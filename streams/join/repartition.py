"""The repartition hop: input records, partitioned any way, to the join's tasks by key.

Producers partition as their client does (murmur2, crc32, or round-robin when they send
no key), but the join must see every event of one request in one task. Unless
``inputs.copartitioned`` promises the inputs are keyed right, the worker first reads
the input topics, reads each event's join key and event time (an event without a
usable one is dead-lettered here, naming its input topic, partition and offset) and
forwards its original bytes to the repartition topic of its role, to the partition of
its join key under dlabel's partitioner (``streams.kafka.partitioner``). A forwarded
record carries where it came from in a header, so that dead letters and replays still
name the input record: the join validates the rest of the event and dead-letters an
invalid one as the hop would have, with its input topic, partition and offset.

Watermarks keep their meaning through the hop as in Flink: after each batch the hop
sends every repartition partition a *watermark marker* per input partition it read
(the largest event time forwarded from it so far, and whether it had reached the end
of that input). The join tracks event time per (input partition, task), so a slow
input partition holds the watermark back exactly as it does without the hop.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

from schemas.config import PipelineConfig
from schemas.errors import EventError
from schemas.events import EventParser
from schemas.records import DeadLetter
from streams.kafka.partitioner import partitions_for

#: header of a forwarded record: b"<input partition>:<input offset>"
SOURCE_HEADER = "dlabel.source"
#: header of a watermark marker: b"<input partition>:<max event time or ->:<1 at end, else 0>"
WATERMARK_HEADER = "dlabel.watermark"
#: bits of an event's position given to its input offset (the input partition is above)
ORIGIN_SHIFT = 40
OFFSET_MASK = (1 << ORIGIN_SHIFT) - 1


class Forward(NamedTuple):
    """One record for the repartition topic of its role."""

    task: int
    key: Optional[bytes]
    value: bytes
    headers: list


def hop_task(role: str, partition: int) -> str:
    """The worker task of the hop from one input partition (its own transactions)."""
    return f"{role}-{partition}"


def position(origin_partition: int, offset: int) -> int:
    """One int naming an input record across the partitions of its topic."""
    return (origin_partition << ORIGIN_SHIFT) | offset


def origin_of(pos: int) -> tuple[int, int]:
    """The (input partition, input offset) of a ``position``."""
    return pos >> ORIGIN_SHIFT, pos & OFFSET_MASK


def decode_source(header: bytes) -> tuple[int, int]:
    """(input partition, input offset) from a ``SOURCE_HEADER`` value."""
    partition, offset = header.split(b":")
    return int(partition), int(offset)


def decode_watermark(header: bytes) -> tuple[int, Optional[int], bool]:
    """(input partition, max event time or None, at end) from a ``WATERMARK_HEADER`` value."""
    partition, ts, at_end = header.split(b":")
    return int(partition), None if ts == b"-" else int(ts), at_end == b"1"


class Repartitioner:
    """Validates input records and routes them to the join's tasks (no Kafka here)."""

    def __init__(self, config: PipelineConfig, parser: EventParser) -> None:
        self.tasks = config.topics.partitions
        self.input_topics = {"requests": config.topics.requests,
                             "feedback": config.topics.feedback}
        self._route = {"requests": parser.route_request, "feedback": parser.route_feedback}
        self._max_ts: dict[tuple[str, int], int] = {}

    def forward(self, role: str, partition: int, records: Sequence
                ) -> tuple[list[Forward], list[DeadLetter]]:
        """Route consumed records (``.offset``, ``.value``) of one input partition.

        Only the join key and the event time of each record are read here (for its task
        and the watermark markers): a record without a usable key or time is
        dead-lettered by the hop, naming its input record; any other invalid field is
        the join's to find (it dead-letters the record the same way, from the source
        header). So a record with a valid key and time counts for event time even if
        the join then finds it invalid.
        """
        route, tasks = self._route[role], self.tasks
        topic = self.input_topics[role]
        keys: list[bytes] = []
        kept: list = []  # (value, offset) of each routable record, in order
        dead: list[DeadLetter] = []
        max_ts = self._max_ts.get((role, partition))
        prefix = b"%d:" % partition
        task = hop_task(role, partition)
        for rec in records:
            value = rec.value
            try:
                rid, ts = route(value)
            except EventError as exc:
                dead.append(DeadLetter(exc.reason, exc.detail, topic, partition, rec.offset,
                                       value, task=task))
                continue
            keys.append(rid.encode())
            kept.append((value, rec.offset))
            if max_ts is None or ts > max_ts:
                max_ts = ts
        if max_ts is not None:
            self._max_ts[(role, partition)] = max_ts
        # one vectorised murmur2 over the batch's keys (a pure-Python hash cost ~2.6 us each);
        # tuple.__new__: Forward's own __new__ is a Python function, 3x the cost
        new = tuple.__new__
        forwards = [new(Forward, (t, key, value, [(SOURCE_HEADER, prefix + b"%d" % offset)]))
                    for t, key, (value, offset) in zip(partitions_for(keys, tasks), keys, kept)]
        return forwards, dead

    def max_ts(self, role: str, partition: int) -> Optional[int]:
        """The largest event time forwarded from ``partition`` of ``role`` (None: none)."""
        return self._max_ts.get((role, partition))

    def markers(self, role: str, partition: int, at_end: bool) -> list[Forward]:
        """A watermark marker for every task: how far ``partition`` of ``role`` has come."""
        max_ts = self._max_ts.get((role, partition))
        header = b"%d:%s:%d" % (partition, b"-" if max_ts is None else b"%d" % max_ts,
                                1 if at_end else 0)
        return [Forward(task, None, b"", [(WATERMARK_HEADER, header)])
                for task in range(self.tasks)]
