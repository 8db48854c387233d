"""The labeled topic as the in-window updater reads it, and the updater's loop.

``dlabel jobs`` (following the windows topic) runs the loop between window jobs when
``model.update_every`` is set: it reads the labeled topic ``read_committed`` (no consumer
group: where to resume is the serving pointer's ``resume_offsets``, the earliest row of
a window still open, so a restarted updater rebuilds its line from the champion, the
closed windows' manifests and the open windows' rows), feeds jobs.online and lets it
publish. At start it reads up to the topic's end before the first step.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from typing import Any, Optional

from kafka import TopicPartition

from schemas.config import PipelineConfig
from schemas.errors import DlabelError
from jobs.feed import groupless_consumer
from jobs.online import OnlineUpdater
from jobs.serving import ServingStore, updater_lock

log = logging.getLogger("dlabel.jobs.online")


class LabeledFeed:
    """Every partition of the labeled topic from given offsets; no group, no commits."""

    def __init__(self, bootstrap: str, topic: str, offsets: dict[int, int]) -> None:
        self.topic = topic
        self.consumer = groupless_consumer(bootstrap, "dlabel-updates")
        self.offsets = dict(offsets)
        self.tps: list[TopicPartition] = []
        self._assign()

    def _assign(self) -> None:
        """Assign every partition of the topic (none yet if it does not exist yet)."""
        parts = sorted(self.consumer.partitions_for_topic(self.topic) or ())
        if not parts:
            return
        self.tps = [TopicPartition(self.topic, p) for p in parts]
        self.consumer.assign(self.tps)
        for tp in self.tps:
            if tp.partition in self.offsets:
                self.consumer.seek(tp, self.offsets[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)

    def poll(self, timeout_s: float) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
        """(examples, their (partition, offset)) read within ``timeout_s``; undecodable
        records are skipped (the sink dead-letters them)."""
        if not self.tps:
            self._assign()
            if not self.tps:
                time.sleep(timeout_s)
                return [], []
        rows, where = [], []
        for tp, records in self.consumer.poll(timeout_ms=int(timeout_s * 1000)).items():
            for r in records:
                try:
                    row = json.loads(r.value)
                except (TypeError, ValueError):
                    continue
                if isinstance(row, dict) and "request_id" in row and "label_ts" in row:
                    rows.append(row)
                    where.append((tp.partition, r.offset))
        return rows, where

    def at_end(self) -> bool:
        """Whether every partition has been read to its end (as of now)."""
        if not self.tps:
            return True
        ends = self.consumer.end_offsets(self.tps)
        return all(self.consumer.position(tp) >= ends[tp] for tp in self.tps)

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()


class UpdaterLoop:
    """The updater, its feed and its lock, stepped by the jobs runner between jobs."""

    def __init__(self, config: PipelineConfig) -> None:
        self.stack = ExitStack()
        self.stack.enter_context(updater_lock(config.model.path))
        store = ServingStore(config.model.path, config.model.trusted_types)
        self.updater = OnlineUpdater(config, store=store)
        ptr = store.pointer() or {}
        offsets = {int(p): int(o) for p, o in (ptr.get("resume_offsets") or {}).items()}
        self.feed = LabeledFeed(config.bootstrap_servers, config.topics.labeled, offsets)
        self.stack.callback(self.feed.close)
        while not self.feed.at_end():  # catch up before the first line is published
            self.updater.add(*self.feed.poll(0.5))
        log.info("in-window updates on (%s); read %d labeled row(s) to catch up",
                 _cadence(config), len(self.updater.pending))

    def tick(self, timeout_s: float = 0.5) -> Optional[str]:
        """Read what arrived within ``timeout_s``, then let the updater step. A failing
        step (e.g. a champion that cannot be loaded) is logged and tried again at the next
        tick; the last published serving model stays in place, and the window jobs go on."""
        self.updater.add(*self.feed.poll(timeout_s))
        try:
            return self.updater.step()
        except DlabelError as e:
            log.error("in-window update failed (serving.json unchanged): %s", e)
            return None

    def close(self) -> None:
        """Close the feed and release the updater's lock."""
        self.stack.close()


def _cadence(config: PipelineConfig) -> str:
    u = config.model.updates
    return f"every {u.every_rows} rows" if u.every_rows else f"every {u.every_ms // 1000}s " \
                                                            "of event time"
