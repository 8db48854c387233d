"""The task of each input partition the worker reads, and the hop's watermark markers.

Every record the worker reads belongs to a *task*: what one worker owns at a time and,
under exactly once, what one Kafka transaction holds (one transactional id per task,
see ``streams.kafka.task_producers``). A partition of a topic the join reads (an input
topic with ``inputs.copartitioned``, else a repartition topic) belongs to the join's
task of the same number. A partition of a topic the repartition hop reads belongs to
the hop's own task (``repartition.hop_task``), unless that topic has as many
partitions as the join has tasks (``topics.partitions``): then input partition ``p``
always moves with join task ``p`` and the hop shares that task's transaction
(``shared_hop_inputs``).

``HopMarkers`` says which of the hop's inputs need a new watermark marker after a batch.
No Kafka here: the worker's ``BatchLoop`` feeds both what it learned from the broker.
"""
from __future__ import annotations

from typing import Awaitable, Callable, Iterable, Mapping, Optional, Union

from aiokafka.structs import TopicPartition

from streams.join.repartition import hop_task

#: a task: a join task's number, or the name of a hop task (``repartition.hop_task``)
Task = Union[int, str]


def shared_hop_inputs(hop_roles: Mapping[str, str], input_partitions: Mapping[str, int],
                      tasks: int) -> frozenset[str]:
    """The hop's input topics that share the join task's transaction: those with as many
    partitions as the join has ``tasks`` (one transaction per task and batch instead of
    three: fewer round trips to the transaction coordinator before each commit).

    Faust's assignor gives partition ``p`` of every topic with the same partition
    count to one worker (co-partitioning: the inputs, their repartition topics, the
    state changelog), so the hop from input partition ``p`` always moves with join
    task ``p``, and the new owner of task ``p`` registering its transactional id fences
    whoever ran both before. The hop's own ids (used while the counts differed, or by an
    older worker) are fenced too at each assignment (``HopTasks.shared_hop_ids``), so no
    zombie still holding one can commit."""
    return frozenset(topic for topic in hop_roles if input_partitions.get(topic) == tasks)


class HopTasks:
    """Which task each input partition belongs to (see the module docstring).

    ``hop_roles``: topic -> role of the topics the hop reads (empty without the hop);
    ``tasks``: the join's task count (``topics.partitions``)."""

    def __init__(self, hop_roles: Mapping[str, str], tasks: int) -> None:
        self.hop_roles = hop_roles
        self.tasks = tasks
        self._hop_topic = {role: topic for topic, role in hop_roles.items()}
        #: partition counts of the topics the hop reads (any count: the producers')
        self.input_partitions: dict[str, int] = {}
        #: hop inputs whose tasks are the join's (``shared_hop_inputs``), and the hop
        #: task names that stand for a join task then
        self.shared: frozenset[str] = frozenset()
        self.alias: dict[str, int] = {}

    async def learn_partitions(self, count: Callable[[str], Awaitable[int]]) -> None:
        """Ask ``count(topic)`` the partition count of each hop input not known yet, then
        decide which of them share the join's tasks."""
        for topic in self.hop_roles:
            if topic not in self.input_partitions:
                self.input_partitions[topic] = await count(topic)
        self.shared = shared_hop_inputs(self.hop_roles, self.input_partitions, self.tasks)
        self.alias = {hop_task(self.hop_roles[topic], p): p
                      for topic in self.shared for p in range(self.tasks)}

    def task_of(self, tp: TopicPartition) -> Task:
        """The task an input partition belongs to: the join's partition number, or for an
        input of the repartition hop, that hop's task (``repartition.hop_task``), unless
        the hop's input is co-partitioned with the join's tasks (``shared_hop_inputs``).
        """
        role = self.hop_roles.get(tp.topic)
        if role is None or tp.topic in self.shared:
            return tp.partition
        return hop_task(role, tp.partition)

    def join_task(self, task: Task) -> Task:
        """``task`` itself, or the join task a shared hop input's task name stands for
        (the hop names its dead letters' task before it knows whether it is shared)."""
        return self.alias.get(task, task)

    def shared_hop_ids(self, assigned: Iterable[TopicPartition]) -> set[str]:
        """The hop's own task names of the shared inputs among ``assigned``: not used
        while shared, but fenced at every assignment (``shared_hop_inputs``)."""
        return {hop_task(self.hop_roles[tp.topic], tp.partition)
                for tp in assigned if tp.topic in self.shared}

    def input_count(self, role: str) -> int:
        """The partition count of the hop's input topic of ``role``."""
        return self.input_partitions[self._hop_topic[role]]

    def total_input_partitions(self) -> int:
        """How many partitions the hop reads in all."""
        return sum(self.input_partitions[topic] for topic in self.hop_roles)

    def watermark_inputs(self, assigned: set[tuple[str, int]]) -> set:
        """What the watermark tracks for the join's ``assigned`` (role, task) pairs: those
        themselves, or through the hop one per (input partition, task) (see
        ``repartition``)."""
        if not self.hop_roles:
            return assigned
        inputs = {role: self.input_partitions[topic]
                  for topic, role in self.hop_roles.items()}
        return {(role, (origin, task)) for role, task in assigned
                for origin in range(inputs[role])}


class HopMarkers:
    """The hop's watermark markers: each hop input partition gets a new one when its
    progress (largest event time forwarded, at its end or not) changed since the last."""

    def __init__(self, hop_roles: Mapping[str, str]) -> None:
        self.hop_roles = hop_roles
        self.marked: dict[TopicPartition, tuple] = {}  # hop input -> progress last sent

    def clear(self) -> None:
        """Forget what was sent (a new assignment: send every input's progress again)."""
        self.marked.clear()

    def due(self, repartitioner, positions: Iterable[TopicPartition],
            at_end: Callable[[TopicPartition], bool], records: Optional[dict] = None) -> list:
        """``(input partition, markers)`` of the hop's inputs among ``positions`` whose
        progress changed since their last marker, even an empty one's that reached its
        end (``records``: only those just read). ``repartitioner``: the join's
        ``repartition.Repartitioner``; ``at_end(tp)``: whether ``tp`` is read to its end."""
        if not self.hop_roles:
            return []
        out = []
        for tp in positions:
            role = self.hop_roles.get(tp.topic)
            if role is None or (records is not None and tp not in records):
                continue
            progress = (repartitioner.max_ts(role, tp.partition), at_end(tp))
            if self.marked.get(tp) != progress:
                self.marked[tp] = progress
                out.append((tp, repartitioner.markers(role, tp.partition, progress[1])))
        return out
