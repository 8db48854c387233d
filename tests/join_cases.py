"""Shared helpers for join tests: configs and a driver that runs the processor."""
from __future__ import annotations

import json
import zlib
from typing import Any, Optional

from schemas.config import PipelineConfig, config_from_dict
from schemas.records import DeadLetter, decode_dead_letter, encode_labeled
from streams.join.event_time_join import LabeledOut
from streams.join.processor import InputRecord, JoinProcessor
from tests.oracle import assert_examples_match, expected_examples

MIN = 60_000


def config_dict(kind: str = "binary", window: str = "30m", lateness: str = "2m",
                value: str = "elapsed_seconds", partitions: int = 1,
                idle: str = "5s") -> dict[str, Any]:
    """A small pipeline config for tests, as the dict a YAML file would load to
    (what the oracle reads; ``make_config`` gives production's object of the same)."""
    label: dict[str, Any] = ({"kind": "binary", "positive": ["click"]} if kind == "binary"
                             else {"kind": "regression", "feedback": ["exit"], "value": value})
    return {
        "pipeline": "t",
        "broker": "kafka://127.0.0.1:9092",
        "topics": {"requests": "t.requests", "feedback": "t.feedback",
                   "labeled": "t.labeled", "dead_letter": "t.dead-letter",
                   "windows": "t.windows", "partitions": partitions},
        "join": {"key": "request_id", "label_window": window, "allowed_lateness": lateness,
                 "idle_timeout": idle},
        "label": label,
        "features": {"price": "float", "category": "str"},
        "slices": ["category"],
        "dataset": {"path": "data/t", "window": "1h"},
        "model": {"path": "models/t", "estimator": "sgd_classifier" if kind == "binary" else "sgd_regressor"},
    }


def make_config(kind: str = "binary", window: str = "30m", lateness: str = "2m",
                value: str = "elapsed_seconds", partitions: int = 1,
                idle: str = "5s") -> PipelineConfig:
    """A small pipeline config for tests (production's object of ``config_dict``)."""
    return config_from_dict(config_dict(kind, window, lateness, value, partitions, idle))


def req(rid: str, ts: int, **features) -> bytes:
    return json.dumps({"request_id": rid, "ts": ts, "features": features,
                       "prediction": 0.5, "model_version": "v1"}).encode()


def fb(rid: str, ts: int, type: str = "click", value: Optional[float] = None, **extra) -> bytes:
    return json.dumps({"request_id": rid, "ts": ts, "type": type, "value": value,
                       **extra}).encode()


class Run:
    """Result of driving the processor: labeled examples and dead letters."""

    def __init__(self) -> None:
        self.labeled: dict[str, dict] = {}
        self.emitted: list[dict] = []
        self.dead: list[dict] = []
        self.positions: list[tuple[str, int, int]] = []  # (role, partition, offset) per arrival

    def take(self, outputs) -> None:
        for o in outputs:
            if isinstance(o, LabeledOut):
                # through the wire format, as consumers see it
                example = json.loads(encode_labeled(o.example))
                self.emitted.append(example)
                self.labeled[example["request_id"]] = example
            elif isinstance(o, DeadLetter):
                self.dead.append(decode_dead_letter(o.encode()))

    def reasons(self) -> list[str]:
        return [d["reason"] for d in self.dead]

    def late_positions(self) -> set[tuple[str, int, int]]:
        """Where the events dead-lettered as late were read (identical bytes may repeat)."""
        role = {"t.requests": "requests", "t.feedback": "feedback"}
        return {(role[d["topic"]], d["partition"], d["offset"])
                for d in self.dead if d["reason"] == "late"}


def drive(config: PipelineConfig, arrivals: list[tuple[str, bytes]], drain: bool = True,
          partitions: int = 1, pii=None) -> Run:
    """Feed ``(role, raw)`` arrivals in order; partition = hash of arrival key, offsets per partition."""
    proc = JoinProcessor(config, pii, clock=lambda: 0)
    offsets: dict[tuple[str, int], int] = {}
    run = Run()
    for role, raw in arrivals:
        part = partition_of(raw, partitions)
        off = offsets.get((role, part), 0)
        offsets[(role, part)] = off + 1
        run.positions.append((role, part, off))
        run.take(proc.process(role, part, [InputRecord(off, raw)]))
        run.take(proc.tick())
    if drain:
        run.take(proc.drain())
    return run


def partition_of(raw: bytes, partitions: int) -> int:
    """The partition of an event by crc32 of its request id (0 when it has none)."""
    try:
        rid = json.loads(raw).get("request_id")
    except Exception:
        return 0
    return zlib.crc32(str(rid).encode()) % partitions if partitions > 1 else 0


def assert_run_matches_oracle(config: dict, arrivals: list[tuple[str, bytes]], run: Run,
                              pii_key: Optional[bytes] = None) -> dict[str, dict]:
    """The run's labeled examples equal the oracle's on the arrivals minus those the join
    dead-lettered as ``late`` (DESIGN: the contract holds for events no later than the
    allowed lateness), field by field; each request emitted once. Returns the oracle's."""
    late = run.late_positions()
    assert len(run.positions) == len(arrivals)
    kept = [a for a, pos in zip(arrivals, run.positions) if pos not in late]
    expected = expected_examples(config, [r for role, r in kept if role == "requests"],
                                 [r for role, r in kept if role == "feedback"], pii_key)
    assert_examples_match(expected, run.emitted)
    return expected
