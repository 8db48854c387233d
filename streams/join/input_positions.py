"""Where the worker stands in each input, and which inputs it has read to their end.

``positions`` (input partition -> next offset to read) are what the worker has
processed; ``skip_markers`` moves them past what the feed skipped. An input partition
is at its end (``at_end``) once its position reached the high watermark of the feed's
last fetch (right on every broker, unlike ListOffsets on Tansu). Only an input at its
end may idle in the watermark (``update_caught_up``), and a drain finishes only once
every input is (``owns_every_input``).
"""
from __future__ import annotations

from typing import Callable, Mapping

from aiokafka.structs import TopicPartition

from streams.join.hop_tasks import HopTasks

AtEnd = Callable[[TopicPartition], bool]


def at_end(feed, positions: Mapping[TopicPartition, int], tp: TopicPartition) -> bool:
    """Whether ``tp`` is read to the high watermark of ``feed``'s last fetch."""
    hw = feed.highwater(tp)
    return hw is not None and positions.get(tp, 0) >= hw


async def skip_markers(feed, positions: dict[TopicPartition, int]) -> None:
    """Move ``positions`` past what ``feed`` (the ``InputFeed``) skipped (transaction
    markers, aborted records): only between batches, when every record it returned is
    processed."""
    position = feed.position
    for tp, offset in positions.items():
        now = await position(tp)
        if now > offset:
            positions[tp] = now


def update_caught_up(proc, positions: Mapping[TopicPartition, int], at_end: AtEnd,
                     join_roles: Mapping[str, str], hop: HopTasks) -> None:
    """Tell the watermark of ``proc`` (the ``JoinProcessor``) which of the inputs in
    ``positions`` have reached their end (only those may idle)."""
    set_caught_up = proc.watermark.set_caught_up
    if not hop.hop_roles:
        for tp in positions:
            set_caught_up(join_roles[tp.topic], tp.partition, at_end(tp))
        return
    # through the hop: an input partition is at its end for a task once the task's
    # repartition partition is read to its end and the hop's last marker said so
    hop_at_end = proc.hop_at_end
    for tp in positions:
        role = join_roles.get(tp.topic)
        if role is None:
            continue
        task_at_end = at_end(tp)
        for origin in range(hop.input_count(role)):
            key = (origin, tp.partition)
            set_caught_up(role, key, task_at_end and hop_at_end.get((role, key), False))


def owns_every_input(positions: Mapping[TopicPartition, int], at_end: AtEnd, tasks: int,
                     hop: HopTasks) -> bool:
    """A drain is a one-worker bounded replay: it finishes only once this worker holds
    every input partition (after a crash, the dead member's partitions come back to
    the group when its session expires; draining without them would end too early),
    and has read each to its end. ``tasks``: the join's task count."""
    want = 2 * tasks + hop.total_input_partitions()
    return len(positions) >= want and all(at_end(tp) for tp in positions)
