"""Carrying the join's watermark to the dataset sink.

Kafka has no watermarks of its own (Flink keeps them inside its network stack), so the
join worker publishes *watermark reports* on a small compacted topic, one record per
input partition it owns, keyed by that partition::

    {"input": "requests:0", "closed": 1764237600000, "labeled_ends": {"0": 1234, "3": 88}}

``closed`` is the join's closed time (watermark minus allowed lateness): every request
with ``ts + label_window <= closed`` has been labeled, and every labeled example the
worker sent before the report is at an offset below ``labeled_ends[partition]`` of the
labeled topic (the worker sends a report only after the broker acked those examples).

The sink trusts a report only once it has consumed every labeled partition up to the
report's ``labeled_ends``; its watermark is the minimum, over all input partitions of
the pipeline, of the largest trusted ``closed``. A window ``[start, end)`` is complete
when that watermark reaches ``end + label_window``. Reports only ever raise the value
(a restarted worker rebuilds a lower watermark from its replay; the older, higher report
stays true), so compaction, duplicates and restarts are all harmless.
"""
from __future__ import annotations

import json
from typing import Iterable, Mapping, Optional

from schemas.config import PipelineConfig

DRAINED = 2 ** 62  # ``closed`` of a worker that drained its bounded input


def input_names(config: PipelineConfig) -> list[str]:
    """Every input partition of the pipeline, as ``"requests:0"``-style names."""
    n = config.topics.partitions
    return [f"{role}:{p}" for role in ("requests", "feedback") for p in range(n)]


def encode_report(input_name: str, closed: int, labeled_ends: Mapping[int, int]) -> bytes:
    """The JSON value of one watermark report."""
    return json.dumps({"input": input_name, "closed": int(closed),
                       "labeled_ends": {str(p): int(o) for p, o in sorted(labeled_ends.items())}},
                      separators=(",", ":")).encode()


def decode_report(raw: bytes) -> tuple[str, int, dict[int, int]]:
    """``(input, closed, labeled_ends)`` of a report; ValueError if it is not one."""
    try:
        obj = json.loads(raw)
        ends = {int(p): int(o) for p, o in obj["labeled_ends"].items()}
        return str(obj["input"]), int(obj["closed"]), ends
    except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a watermark report: {raw[:80]!r} ({e})") from None


class SinkWatermark:
    """The sink's view of the join watermark, from reports and its own read positions."""

    def __init__(self, inputs: Iterable[str]) -> None:
        self.inputs = list(inputs)
        self._trusted: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[int, dict[int, int]]]] = {}

    def report(self, input_name: str, closed: int, labeled_ends: Mapping[int, int]) -> None:
        """Take one report (it becomes trusted once ``positions`` pass its ends)."""
        if closed <= self._trusted.get(input_name, -DRAINED):
            return
        self._waiting.setdefault(input_name, []).append((closed, dict(labeled_ends)))

    def update(self, positions: Mapping[int, int]) -> None:
        """Trust every waiting report whose ``labeled_ends`` the sink has read past.

        ``positions`` maps a labeled partition to the next offset the sink will read.
        """
        for name, waiting in list(self._waiting.items()):
            keep = []
            for closed, ends in waiting:
                if all(positions.get(p, 0) >= o for p, o in ends.items()):
                    if closed > self._trusted.get(name, -DRAINED):
                        self._trusted[name] = closed
                else:
                    keep.append((closed, ends))
            if keep:
                self._waiting[name] = keep
            else:
                del self._waiting[name]

    def current(self) -> Optional[int]:
        """The closed time every input has reached, or None while one never reported."""
        if any(name not in self._trusted for name in self.inputs):
            return None
        return min(self._trusted[name] for name in self.inputs)

    def pending_ends(self) -> dict[int, int]:
        """The largest labeled offsets that waiting reports need the sink to read."""
        need: dict[int, int] = {}
        for waiting in self._waiting.values():
            for _, ends in waiting:
                for p, o in ends.items():
                    need[p] = max(need.get(p, 0), o)
        return need


class WatermarkReporter:
    """The join side: an ``after_outputs`` hook of the batch committer.

    Once a batch's outputs are acked, it adds one report per input partition the batch
    covered, when the batch's closed time moved (the committer acks the reports before
    the batch's state is written). ``labeled_ends`` accumulates the labeled offsets this
    worker has been acked for.
    """

    def __init__(self, config: PipelineConfig, roles: Mapping[str, str]) -> None:
        self.topic = config.topics.watermarks
        self.labeled = config.topics.labeled
        self.roles = roles
        self.ends: dict[int, int] = {}
        self.reported: Optional[int] = None

    async def hook(self, publisher, batch) -> None:
        for (topic, partition), last in (batch.acked or {}).items():
            if topic == self.labeled and last + 1 > self.ends.get(partition, 0):
                self.ends[partition] = last + 1
        closed = batch.closed
        if closed is None or closed == self.reported or not batch.positions:
            return
        for tp in sorted(batch.positions, key=lambda t: (t.topic, t.partition)):
            name = f"{self.roles[tp.topic]}:{tp.partition}"
            publisher.add(self.topic, 0, name.encode(), encode_report(name, closed, self.ends))
        self.reported = closed
