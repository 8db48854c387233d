"""The windows topic as the jobs runner reads it: events, their windows and versions.

The runner reads the windows topic from the beginning (it is small and kept forever),
without a consumer group: which windows are done is the registry's business, not a
committed offset. ``parse_events`` keeps one entry per window (its manifest) and the
highest data ``version`` its events named (corrections, jobs.reevaluate); an event
repeating a (window, version) is a duplicate.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from schemas.errors import BrokerError
from jobs.dataset import parse_window
from streams.kafka import clients as kafka_clients

log = logging.getLogger("dlabel.jobs.runner")


@dataclass
class RunSummary:
    """What one runner pass did: window names by outcome, event counts."""
    trained: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)  # jobs.launch's command exited 0
    skipped: list[str] = field(default_factory=list)
    reevaluated: list[str] = field(default_factory=list)  # "<window>@v<n>"
    failed: list[str] = field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    ignored: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def groupless_consumer(bootstrap: str, client_id: str) -> KafkaConsumer:
    """A ``read_committed`` consumer with no group and no commits (the caller assigns
    partitions and keeps its own positions); BrokerError when the broker is unreachable."""
    try:
        return KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, allow_auto_create_topics=False,
                             isolation_level="read_committed", client_id=client_id,
                             **kafka_clients.kafka_python())
    except KafkaError as e:
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap} ({e}); start one "
                          "with `dlabel broker`") from None


class WindowsFeed:
    """Reads the windows topic from offset 0 on every partition; no group, no commits."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = groupless_consumer(bootstrap, "dlabel-jobs")
        self.assigned: set[int] = set()

    def _assign(self) -> None:
        parts = self.consumer.partitions_for_topic(self.topic) or set()
        if parts - self.assigned:
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            new = [tp for tp in tps if tp.partition not in self.assigned]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*new)
            self.assigned = set(parts)

    def poll(self, idle_s: float = 2.0) -> list[bytes]:
        """New record values, until ``idle_s`` seconds pass without one."""
        self._assign()
        if not self.assigned:
            time.sleep(min(idle_s, 0.5))
            return []
        out: list[bytes] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = self.consumer.poll(timeout_ms=200)
            for records in batch.values():
                out.extend(r.value for r in records)
                last = time.monotonic()
        return out

    def close(self) -> None:
        self.consumer.close()


def parse_events(values: Iterable[bytes], pipeline: str, summary: RunSummary,
                 versions: dict[int, int] | None = None) -> dict[int, str | None]:
    """``{window_start_ms: manifest}`` of this pipeline's valid events (duplicates once);
    ``versions`` (when given) gets each window's highest data version (1 without one)."""
    out: dict[int, str | None] = {}
    seen: set[tuple[int, int]] = set()
    for raw in values:
        summary.events += 1
        try:
            ev = json.loads(raw)
            if ev.get("pipeline") != pipeline:
                raise ValueError(f"pipeline {ev.get('pipeline')!r} is not {pipeline!r}")
            start = parse_window(ev["window_start"])
            version = int(ev.get("version") or 1)
        except Exception as e:  # a bad event must not stop the runner
            summary.ignored += 1
            log.warning("ignoring windows event %r: %s", raw[:200], e)
            continue
        if (start, version) in seen:
            summary.duplicates += 1
        seen.add((start, version))
        out[start] = ev.get("manifest") or out.get(start)
        if versions is not None:
            versions[start] = max(version, versions.get(start, 1))
    return out
