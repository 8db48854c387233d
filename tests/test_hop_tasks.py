"""Which task each input partition belongs to, and which of the repartition hop's inputs
share a join task's transaction (``streams.join.hop_tasks``); the hop's watermark
markers. No broker: partition counts come from a fake, the group is a fake.

The rule: an input topic with as many partitions as the join has tasks
(``topics.partitions``) shares task ``p``'s transaction for its partition ``p`` (Faust
co-partitions topics of equal counts, so the hop from ``p`` always moves with join
task ``p``); any other input partition has its own hop task, ``<role>-<p>``.
"""
from __future__ import annotations

import asyncio

import pytest
from aiokafka.structs import TopicPartition as TP

from schemas.config import repartition_topic
from streams.join.batch_loop import BatchLoop
from streams.join.faust_adapter import WorkerOptions
from streams.join.hop_tasks import HopMarkers, HopTasks, shared_hop_inputs
from streams.join.processor import FEEDBACK, REQUESTS, InputRecord, JoinProcessor
from streams.join.repartition import WATERMARK_HEADER, decode_watermark, hop_task
from tests.join_cases import make_config, req

TASKS = 4
REQ, FB = "t.requests", "t.feedback"          # the inputs, as producers wrote them
REQ_R, FB_R = repartition_topic(REQ), repartition_topic(FB)  # the join's topics
HOP_ROLES = {REQ: REQUESTS, FB: FEEDBACK}


def learned(requests: int, feedback: int, hop_roles=HOP_ROLES) -> HopTasks:
    """``HopTasks`` once it learned the inputs' partition counts (from a fake)."""
    hop = HopTasks(hop_roles, TASKS)
    counts = {REQ: requests, FB: feedback}

    async def count(topic: str) -> int:
        return counts[topic]

    asyncio.run(hop.learn_partitions(count))
    return hop


@pytest.mark.parametrize("requests, feedback, shared", [
    (TASKS, TASKS, {REQ, FB}),        # both co-partitioned with the join's tasks
    (TASKS, 3, {REQ}),                # fewer partitions than tasks
    (12, TASKS, {FB}),                # more partitions than tasks
    (1, 2 * TASKS, set()),            # neither
])
def test_an_input_shares_the_join_tasks_transaction_iff_it_has_as_many_partitions(
        requests, feedback, shared):
    assert shared_hop_inputs(HOP_ROLES, {REQ: requests, FB: feedback}, TASKS) == shared
    hop = learned(requests, feedback)
    assert hop.shared == shared
    for topic, count in ((REQ, requests), (FB, feedback)):
        tasks = {hop.task_of(TP(topic, p)) for p in range(count)}
        if topic in shared:  # one transaction per task: the join's
            assert tasks == set(range(TASKS))
        else:  # its own transaction per input partition
            assert tasks == {hop_task(HOP_ROLES[topic], p) for p in range(count)}


def test_an_input_whose_partition_count_is_not_known_shares_nothing():
    assert shared_hop_inputs(HOP_ROLES, {}, TASKS) == frozenset()
    assert HopTasks(HOP_ROLES, TASKS).task_of(TP(REQ, 1)) == hop_task(REQUESTS, 1)


def test_the_task_of_each_kind_of_topic_partition():
    hop = learned(requests=TASKS, feedback=6)
    # the join's own topics (here the repartition topics): the task of the same number
    assert [hop.task_of(TP(REQ_R, p)) for p in range(TASKS)] == [0, 1, 2, 3]
    assert hop.task_of(TP(FB_R, 3)) == 3
    # a hop input co-partitioned with the join's tasks: the join task of its number
    assert hop.task_of(TP(REQ, 2)) == 2
    # a hop input with another count: the hop's own task, also where the number exists
    assert hop.task_of(TP(FB, 2)) == "feedback-2" == hop_task(FEEDBACK, 2)
    assert hop.task_of(TP(FB, 5)) == "feedback-5"


def test_without_the_hop_every_input_partition_is_the_join_task_of_its_number():
    cfg = make_config(partitions=TASKS)
    hop = HopTasks({}, TASKS)  # inputs.copartitioned: the join reads the inputs

    async def count(topic: str) -> int:
        raise AssertionError("no hop: no partition count to ask")

    asyncio.run(hop.learn_partitions(count))
    assert hop.shared == frozenset()
    assert hop.task_of(TP(cfg.topics.requests, 3)) == 3
    assert hop.task_of(TP(cfg.topics.feedback, 0)) == 0


def test_a_shared_inputs_dead_letters_go_to_the_join_task_and_its_own_ids_are_fenced():
    hop = learned(requests=TASKS, feedback=6)
    # the hop names its dead letters' task before it knows whether it is shared
    assert hop.join_task(hop_task(REQUESTS, 3)) == 3
    assert hop.join_task(hop_task(FEEDBACK, 3)) == "feedback-3"
    assert hop.join_task(2) == 2
    # the ids a shared input had of its own are fenced at each assignment, never used
    assigned = [TP(REQ, 1), TP(REQ, 2), TP(FB, 1), TP(REQ_R, 1), TP(FB_R, 1)]
    assert hop.shared_hop_ids(assigned) == {"requests-1", "requests-2"}
    assert learned(3, 6).shared_hop_ids(assigned) == set()


def test_partition_counts_are_asked_once():
    hop = HopTasks(HOP_ROLES, TASKS)
    asked: list[str] = []

    async def count(topic: str) -> int:
        asked.append(topic)
        return TASKS

    asyncio.run(hop.learn_partitions(count))
    asyncio.run(hop.learn_partitions(count))  # the next assignment
    assert sorted(asked) == [FB, REQ]
    assert hop.shared == {REQ, FB}


class FakeGroup:
    group_id = "dlabel-t"
    changelog = "t-changelog"
    keeps_local_store = False


@pytest.mark.parametrize("requests, feedback", [(TASKS, TASKS), (TASKS, 3), (5, 3)])
def test_the_batch_loop_commits_and_publishes_by_the_same_tasks(requests, feedback):
    """The worker's committer groups input offsets by the loop's rule (one task each)."""
    cfg = make_config(partitions=TASKS)  # the hop is on by default
    loop = BatchLoop(cfg, WorkerOptions(bootstrap="127.0.0.1:1"), FakeGroup(), None,
                     lambda: 0)
    counts = {cfg.topics.requests: requests, cfg.topics.feedback: feedback}

    async def count(topic: str) -> int:
        return counts[topic]

    asyncio.run(loop.hop.learn_partitions(count))
    for topic, n in counts.items():
        role = loop.hop_roles[topic]
        for p in range(n):
            want = p if n == TASKS else hop_task(role, p)
            assert loop.committer.task_of(TP(topic, p)) == want
            assert loop.submitter.out.hop.task_of(TP(topic, p)) == want
    for topic in cfg.join_inputs.values():
        assert loop.committer.task_of(TP(topic, 2)) == 2


# ---------------------------------------------------------------- watermark markers
def progress(due: list) -> dict:
    """{input partition: (its partition, max event time, at end)} of ``HopMarkers.due``,
    checking that each input got one marker per task, all alike."""
    out = {}
    for tp, markers in due:
        assert sorted(m.task for m in markers) == list(range(TASKS))
        assert all(m.key is None and m.headers[0][0] == WATERMARK_HEADER for m in markers)
        (value,) = {decode_watermark(m.headers[0][1]) for m in markers}
        out[tp] = value
    return out


def test_markers_go_out_when_an_inputs_progress_changed():
    proc = JoinProcessor(make_config(partitions=TASKS), None, lambda: 0)
    rep = proc.repartitioner
    markers = HopMarkers(HOP_ROLES)
    positions = {TP(REQ, 0): 0, TP(REQ, 1): 0, TP(FB, 0): 0, TP(REQ_R, 0): 0}
    ends: set = set()

    def at_end(tp: TP) -> bool:
        return tp in ends

    # first: every hop input's, even one that forwarded nothing; never the join's topics
    assert progress(markers.due(rep, positions, at_end)) == {
        TP(REQ, 0): (0, None, False), TP(REQ, 1): (1, None, False),
        TP(FB, 0): (0, None, False)}
    assert markers.due(rep, positions, at_end) == []  # nothing changed
    proc.forward(REQUESTS, 1, [InputRecord(7, req("a", 1_000, price=1.0, category="x"))])
    ends.add(TP(FB, 0))  # an empty input that reached its end: a marker says so
    assert progress(markers.due(rep, positions, at_end)) == {
        TP(REQ, 1): (1, 1_000, False), TP(FB, 0): (0, None, True)}
    proc.forward(REQUESTS, 1, [InputRecord(8, req("b", 900, price=1.0, category="x"))])
    assert markers.due(rep, positions, at_end) == []  # an older event: no progress
    # only those just read, when asked so
    ends.add(TP(REQ, 0))
    assert markers.due(rep, positions, at_end, records={TP(REQ, 1): []}) == []
    assert progress(markers.due(rep, positions, at_end)) == {TP(REQ, 0): (0, None, True)}
    # a new assignment: every input's progress again
    markers.clear()
    assert set(progress(markers.due(rep, positions, at_end))) == {
        TP(REQ, 0), TP(REQ, 1), TP(FB, 0)}


def test_no_markers_without_the_hop():
    proc = JoinProcessor(make_config(partitions=TASKS), None, lambda: 0)
    assert HopMarkers({}).due(proc.repartitioner, {TP(REQ, 0): 0}, lambda tp: True) == []
