"""A processed batch handed to the committer: outputs to their tasks, state encoded.

``BatchSubmitter.submit`` turns what the join made of a batch into a ``Batch`` for the
``BatchCommitter``: it opens the batch's tasks (under exactly once, a transaction
each), queues the outputs on their tasks' publishers (``OutputPublisher``), encodes
the state the join changed for the changelog and hands the batch over with the input
positions it reached and the join's closed time. Under exactly once a batch first waits
for the one before it to commit, and takes in what that commit made visible
(``top_up``).

The join's outputs are of three kinds: the repartition hop's forwards (and watermark
markers) from one input partition, to the repartition topic of its role; labeled
examples, to the labeled topic's partition of their task; dead letters, to any
partition of the dead-letter topic. Each goes to its task's publisher (see
``hop_tasks`` for which task that is).
"""
from __future__ import annotations

import logging
import time
from typing import Mapping, Optional

from aiokafka.structs import TopicPartition

from schemas.closed_time_report import DRAINED
from schemas.records import DeadLetter, encode_labeled
from streams.common.metrics import JoinMetrics
from streams.join.batch_commit import Batch, BatchCommitter, encode_changes
from streams.join.hop_tasks import HopTasks
from streams.join.join_state import LabeledOut
from streams.join.processor import FEEDBACK, REQUESTS
from streams.join.state_reload import KIND_PREFIX
from streams.kafka.publisher import TaskPublishers

log = logging.getLogger("dlabel.worker")


class OutputPublisher:
    """Queues outputs on task publishers and counts what it sent.

    ``topics``: the pipeline's topics; ``repartition_topic``: role -> the repartition
    topic the hop writes for it."""

    def __init__(self, topics, hop: HopTasks, repartition_topic: Mapping[str, str]) -> None:
        self.topics = topics
        self.hop = hop
        self.repartition_topic = repartition_topic
        self.sent_labeled = 0
        #: repartition partitions the last batch forwarded events to
        self.forwarded_to: set[TopicPartition] = set()

    async def publish(self, pubs: TaskPublishers, outputs) -> dict:
        """Queue the outputs on ``pubs``; returns the labeled count per label value."""
        topics, hop = self.topics, self.hop
        labeled, for_task = topics.labeled, pubs.for_task
        labels: dict = {}
        forwarded_to = self.forwarded_to = set()
        for o in outputs:
            if type(o) is tuple:  # the hop's forwards (and markers) from one input
                tp, forwards = o
                pub = for_task(hop.task_of(tp))
                target = self.repartition_topic[hop.hop_roles[tp.topic]]
                for f in forwards:
                    pub.add(target, f.task, f.key, f.value, f.headers)
                    if f.key is not None:  # an event, not a watermark marker
                        forwarded_to.add(TopicPartition(target, f.task))
            elif type(o) is LabeledOut:
                ex = o.example
                for_task(o.partition).add(labeled, o.partition, ex["request_id"].encode(),
                                          encode_labeled(ex))
                label = ex["label"]
                labels[label] = labels.get(label, 0) + 1
                self.sent_labeled += 1
            elif type(o) is DeadLetter:
                task = o.partition if o.task is None else hop.join_task(o.task)
                await for_task(task).add_any_partition(topics.dead_letter, None, o.encode())
        return labels


#: Exactly once: how long a batch waits, once the batch before is committed, for the
#: events that batch forwarded to this worker's repartition partitions to be fetched
#: (they become visible with the commit's markers, a few milliseconds after it).
TOP_UP_WAIT_MS = 20


class BatchSubmitter:
    """Hands processed batches to ``committer``; remembers when it last did.

    ``seconds``: the loop's seconds per step (``publish``, ``persist``, and
    ``timer_``-prefixed for batches of the timer)."""

    def __init__(self, committer: BatchCommitter, hop: HopTasks, topics,
                 repartition_topic: Mapping[str, str], seconds: dict) -> None:
        self.committer, self.hop, self.seconds = committer, hop, seconds
        self.out = OutputPublisher(topics, hop, repartition_topic)
        self.metrics = JoinMetrics({REQUESTS: topics.requests, FEEDBACK: topics.feedback})
        self.closed_submitted: Optional[int] = None
        self.closed_submitted_at = 0.0  # monotonic; closed-time-only batches at most 1/s
        self.input_submitted_at: Optional[float] = None  # monotonic, last input batch

    async def submit(self, proc, outputs, positions: dict, from_input: bool,
                     drained: bool) -> None:
        """Encode the batch's outputs and the state changes of ``proc`` (the
        ``JoinProcessor``); hand them to the committer with ``positions`` (the next
        offset per input). ``drained``: the batch finishes a drain."""
        committer, out = self.committer, self.out
        t0 = time.perf_counter()
        tasks = {self.hop.task_of(tp) for tp in positions}
        await committer.open_batch(tasks)
        pub = committer.publishers()
        first = out.sent_labeled == 0
        self.metrics.observe(proc, await out.publish(pub, outputs))
        if first and out.sent_labeled:  # a start-up milestone (bench_recovery reads it)
            log.info("first labels handed to the producer: %d", out.sent_labeled)
        t1 = time.perf_counter()
        state = committer.publishers()
        store_writes = encode_changes(proc.join.take_dirty(), KIND_PREFIX,
                                      committer.changelog, state, committer.keeps_store)
        t2 = time.perf_counter()
        prefix = "" if from_input else "timer_"
        self.seconds[prefix + "publish"] += t1 - t0
        self.seconds[prefix + "persist"] += t2 - t1
        batch = Batch(pub, state, store_writes, dict(positions), from_input=from_input,
                      tasks=tasks, closed=DRAINED if drained else proc.join.closed_time)
        self.closed_submitted = proc.join.closed_time
        self.closed_submitted_at = time.monotonic()
        if from_input:
            self.input_submitted_at = self.closed_submitted_at
        await committer.submit(batch)

    async def top_up(self, feed, positions, room: int) -> tuple[dict, float]:
        """Exactly once: wait for the batch before to commit (its transactions end before
        this batch's begin), then fetch up to ``room`` more records from ``feed``: what
        its commit made visible (its forwards to our repartition partitions among
        ``positions``, waited for up to ``TOP_UP_WAIT_MS``) and what else came meanwhile
        joins this batch, not the next (one cycle less). The records, and the seconds."""
        committer, forwarded_to = self.committer, self.out.forwarded_to
        t1 = time.perf_counter()
        fresh = committer.busy and bool(forwarded_to.intersection(positions))
        await committer.wait()
        t2 = time.perf_counter()
        more = await feed.getmany(timeout_ms=TOP_UP_WAIT_MS if fresh else 0,
                                  max_records=room, wait_for=forwarded_to)
        waited = time.perf_counter() - t1
        self.seconds["wait_commit"] += t2 - t1
        self.seconds["top_up_fetch"] += waited - (t2 - t1)
        return more, waited

    def closed_moved(self, proc) -> bool:
        """The closed time of ``proc`` moved since the last batch (at most once a second:
        an idle join's closed time moves with the clock, and each move is a watermark
        report)."""
        return (proc.join.closed_time != self.closed_submitted
                and time.monotonic() - self.closed_submitted_at >= 1.0)
