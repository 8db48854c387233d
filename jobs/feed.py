"""The windows topic as the jobs runner reads it: events, their windows and versions.

The runner reads the windows topic from the beginning (it is small and kept forever),
without a consumer group: which windows are done is the registry's business, not a
committed offset. ``parse_events`` keeps one entry per window (its manifest) and the
highest data ``version`` its events named (corrections, jobs.reevaluate); an event
repeating a (window, version) is a duplicate.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from aiokafka.errors import KafkaError as AioKafkaError
from aiokafka.structs import TopicPartition as AioTopicPartition
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from schemas.errors import BrokerError
from jobs.dataset import parse_window
from streams.kafka import clients as kafka_clients
from streams.kafka.tansu_quirks import fetch_end_offsets

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
        """The summary as a plain dict (for JSON output)."""
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
        self.bootstrap, self.topic = bootstrap, topic
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

    def read_until_idle(self, idle_s: float = 2.0, timeout_s: float = 120.0) -> list[bytes]:
        """Every record value up to the end each partition had when called, then any that
        follow until ``idle_s`` seconds pass without one (``idle_s`` 0: just the former).

        The ends are the high watermarks of a Fetch (right on Tansu too; the windows topic
        is written without transactions, so they are what ``read_committed`` reaches).
        BrokerError when the topic does not exist, or its ends are not reached within
        ``timeout_s`` seconds: never an empty, successful run for a slow first fetch.
        """
        self._assign()
        if not self.assigned:
            raise BrokerError(
                f"the windows topic {self.topic!r} does not exist on {self.bootstrap}: no "
                "window was ever published there. Check topics.windows in the config and "
                "--broker / DLABEL_BROKER, or start the pipeline (`dlabel worker`), which "
                "creates its topics; `dlabel jobs` without --until-idle waits for the topic")
        ends = self._end_offsets(min(timeout_s, 10.0))
        out: list[bytes] = []
        deadline = time.monotonic() + timeout_s
        last = time.monotonic()
        while True:
            behind = {p: at for p, end in ends.items()
                      if (at := self.consumer.position(TopicPartition(self.topic, p))) < end}
            if not behind and time.monotonic() - last >= idle_s:
                return out
            if behind and time.monotonic() > deadline:
                raise BrokerError(
                    f"in {timeout_s:g}s the runner read the windows topic {self.topic!r} on "
                    f"{self.bootstrap} only to offsets {behind} of its ends {ends} "
                    "({partition: offset}); check that the broker is up and not overloaded "
                    "(`dlabel status`), then run `dlabel jobs --until-idle` again")
            for records in self.consumer.poll(timeout_ms=200).values():
                out.extend(r.value for r in records)
                last = time.monotonic()

    def _end_offsets(self, timeout_s: float) -> dict[int, int]:
        """``{partition: end}`` of the assigned partitions that have records."""
        tps = [AioTopicPartition(self.topic, p) for p in sorted(self.assigned)]
        try:
            ends = asyncio.run(fetch_end_offsets(self.bootstrap, tps, timeout_s=timeout_s))
        except AioKafkaError as e:
            raise BrokerError(f"cannot read the end offsets of the windows topic {self.topic!r} "
                              f"on {self.bootstrap} ({e!r}); check the broker "
                              "(`dlabel status`) and run again") from None
        return {tp.partition: end for tp, end in ends.items() if end > 0}

    def close(self) -> None:
        """Close the consumer."""
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
