"""A rebalance moves only the join state of the tasks that moved (memory store).

``BatchLoop._reload`` with the memory store: the state of a task this worker held in
the last assignment, and in every assignment since, stays in memory; only the tasks it
gains are read from the changelog (``streams.kafka.changelog_reader.read_latest``, here
replaced by a fake that records what it was asked for); the state of tasks it lost is
dropped. A task missing from any assignment in between may have been worked on by
another worker, so it is read again. No broker: the group is a fake.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka.structs import TopicPartition

from schemas.config import config_from_dict
from streams.join import batch_loop as batch_loop_module
from streams.join.batch_loop import BatchLoop
from streams.join.faust_adapter import WorkerOptions
from tests.join_cases import config_dict

CHANGELOG = "t-changelog"


class FakeGroup:
    group_id = "dlabel-t"
    changelog = CHANGELOG
    keeps_local_store = False

    def __init__(self, roles) -> None:
        self.roles = roles
        self.tasks: set[int] = set()

    def assigned(self, topics):
        return [TopicPartition(t, p) for t in topics for p in sorted(self.tasks)]

    def table_items(self):  # the memory store never reads Faust's table
        raise AssertionError("the memory store must not reload from Faust's table")


def pending(task: int, ts: int) -> dict:
    return {"p": task, "o": ts, "ts": ts, "f": {"price": 1.0, "category": "a"},
            "pr": None, "mv": None, "c": []}


def changelog_record(task: int, rid: str, value) -> tuple[bytes, tuple[int, bytes]]:
    return orjson.dumps("r:" + rid), (task, orjson.dumps(value))


@pytest.fixture
def loop(monkeypatch):
    cfg = config_from_dict({**config_dict(partitions=4), "inputs": {"copartitioned": True}})
    group = FakeGroup(None)
    lp = BatchLoop(cfg, WorkerOptions(bootstrap="127.0.0.1:1"), group, None, lambda: 0)
    group.roles = lp.join_roles
    # the changelog: two pending requests per task
    log = dict(changelog_record(t, f"t{t}-{i}", pending(t, 1000 * t + i))
               for t in range(4) for i in range(2))
    asked: list[list[int]] = []

    async def fake_read_latest(bootstrap, tps, *, read_committed, tansu=False):
        tasks = [tp.partition for tp in tps]
        assert all(tp.topic == CHANGELOG for tp in tps)
        asked.append(tasks)
        latest = {k: v for k, v in log.items() if v[0] in tasks}
        return latest, {tp: 2 for tp in tps}

    monkeypatch.setattr(batch_loop_module, "read_latest", fake_read_latest)
    lp.asked = asked
    return lp


def assign(lp: BatchLoop, tasks: set[int]) -> None:
    """What Faust does on an assignment: the callback with every assigned partition."""
    lp.group.tasks = set(tasks)
    lp.on_assigned({TopicPartition(t, p) for t in lp.join_roles for p in tasks})
    asyncio.run(lp._reload())


def held(lp: BatchLoop) -> dict[str, int]:
    return {rid: p.partition for rid, p in lp.proc.join.pending.items()}


def test_first_assignment_reads_every_task(loop):
    assign(loop, {0, 1, 2, 3})
    assert loop.asked == [[0, 1, 2, 3]]
    assert held(loop) == {f"t{t}-{i}": t for t in range(4) for i in range(2)}


def test_a_rebalance_reads_only_the_tasks_gained_and_drops_those_lost(loop):
    assign(loop, {0, 1})
    before = loop.proc.join.pending["t0-0"]
    assign(loop, {0, 2})
    assert loop.asked == [[0, 1], [2]]  # task 0 kept in memory, task 2 read
    assert held(loop) == {"t0-0": 0, "t0-1": 0, "t2-0": 2, "t2-1": 2}  # task 1 dropped
    kept = loop.proc.join.pending["t0-0"]
    assert kept is not before and kept.to_json() == before.to_json()  # a fresh join


def test_a_task_missing_from_an_assignment_in_between_is_read_again(loop):
    assign(loop, {0, 1})
    # an assignment without task 1, superseded before the loop got ready for it: task 1
    # may have been processed by another worker meanwhile
    loop.on_assigned({TopicPartition(t, 0) for t in loop.join_roles})
    assign(loop, {0, 1})
    assert loop.asked == [[0, 1], [1]]
    assert held(loop) == {f"t{t}-{i}": t for t in (0, 1) for i in range(2)}


def test_state_changed_in_memory_is_kept_not_reread(loop):
    assign(loop, {0, 1})
    del loop.proc.join.pending["t0-1"]  # as if finalized since (the changelog says so too)
    assign(loop, {0, 1, 3})
    assert loop.asked == [[0, 1], [3]]
    assert "t0-1" not in held(loop) and held(loop)["t3-0"] == 3
