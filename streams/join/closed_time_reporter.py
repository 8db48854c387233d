"""The join side of the closed-time reports (see ``schemas.closed_time_report``)."""
from __future__ import annotations

from typing import Mapping, Optional

from schemas.closed_time_report import encode_report
from schemas.config import PipelineConfig


class ClosedTimeReporter:
    """The join side: an ``after_outputs`` hook of the batch committer.

    Once a batch's outputs are acked, it adds one report per input partition the batch
    covered, when the batch's closed time moved (the committer acks the reports before
    the batch's state is written). ``labeled_ends`` accumulates the labeled offsets this
    worker has been acked for.
    """

    def __init__(self, config: PipelineConfig, roles: Mapping[str, str]) -> None:
        """``roles``: ``{topic: role}`` of the topics the join reads (its tasks)."""
        self.topic = config.topics.closed_time
        self.labeled = config.topics.labeled
        self.roles = roles
        self.ends: dict[int, int] = {}
        self.reported: Optional[int] = None

    async def hook(self, publishers, batch) -> None:
        for (topic, partition), last in (batch.acked or {}).items():
            if topic == self.labeled and last + 1 > self.ends.get(partition, 0):
                self.ends[partition] = last + 1
        closed = batch.closed
        if closed is None or closed == self.reported or not batch.positions:
            return
        for tp in sorted(batch.positions, key=lambda t: (t.topic, t.partition)):
            if tp.topic not in self.roles:
                continue  # an input the repartition hop reads: no closed time of its own
            name = f"{self.roles[tp.topic]}:{tp.partition}"
            publishers.for_task(tp.partition).add(self.topic, 0, name.encode(),
                                                  encode_report(name, closed, self.ends))
        self.reported = closed
