"""Closed-time reports: how the join tells the dataset sink which windows are complete.

Kafka has no watermarks of its own (Flink keeps them inside its network stack), so the
join worker publishes *closed-time reports* on a small compacted topic, one record per
input partition it owns, keyed by that partition::

    {"input": "requests:0", "closed": 1764237600000, "labeled_ends": {"0": 1234, "3": 88}}

``closed`` is the join's closed time (watermark minus allowed lateness): every request
with ``ts + label_window <= closed`` has been labeled, and every labeled example the
worker sent before the report is at an offset below ``labeled_ends[partition]`` of the
labeled topic (the worker sends a report only after the broker acked those examples).

The sink trusts a report only once it has consumed every labeled partition up to the
report's ``labeled_ends``; its closed time is the minimum, over all input partitions of
the pipeline, of the largest trusted ``closed``. A window ``[start, end)`` is complete
when that closed time reaches ``end + label_window``. Reports only ever raise the value
(a restarted worker rebuilds a lower closed time from its replay; the older, higher report
stays true), so compaction, duplicates and restarts are all harmless.
The join side is ``streams.join.closed_time_reporter``; the sink side is
``streams.dataset.closed_time``.
"""
from __future__ import annotations

import json
from typing import Mapping

from schemas.config import PipelineConfig

DRAINED = 2 ** 62  # ``closed`` of a worker that drained its bounded input


def input_names(config: PipelineConfig) -> list[str]:
    """Every input partition of the pipeline, as ``"requests:0"``-style names."""
    n = config.topics.partitions
    return [f"{role}:{p}" for role in ("requests", "feedback") for p in range(n)]


def encode_report(input_name: str, closed: int, labeled_ends: Mapping[int, int]) -> bytes:
    """The JSON value of one closed-time report."""
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
        raise ValueError(f"not a closed-time report: {raw[:80]!r} ({e})") from None
