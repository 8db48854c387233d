"""Tansu's consumer group quirks and their work-arounds (``streams.kafka.tansu_quirks``).

Tansu keeps a member that died without leaving until another member's request finds
its session expired, and aiokafka does not leave in Tansu's first generation (0). A
worker restarted from the same state directory drops its predecessor with a LeaveGroup
(``MemberSlot``, ``evict_predecessor``); a stopping worker leaves in generation 0 too
(``leave_in_generation_zero``). Both only on Tansu.
"""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from streams import pipeline
from streams.kafka.tansu_quirks import MemberSlot, evict_predecessor, leave_in_generation_zero
from tests.waiting import create_state_topic

#: long enough that no session ends during a test: only a LeaveGroup removes a member
SESSION_MS = 10_000


def _members(bootstrap: str, group: str) -> set[str]:
    """The group's member ids (DescribeGroups; kafka-python's admin cannot parse the
    authorized operations Tansu sends)."""
    async def describe() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (response,) = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        (described,) = response.to_object()["groups"]
        return {m["member_id"] for m in described["members"]}
    return asyncio.run(describe())


async def _joined(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    """A started group member with its assignment."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                                session_timeout_ms=SESSION_MS, heartbeat_interval_ms=1000,
                                enable_auto_commit=False)
    await consumer.start()
    for _ in range(300):
        if consumer.assignment():
            return consumer
        await consumer.getmany(timeout_ms=100)
    await consumer.stop()
    raise AssertionError("no assignment within 30 s")


async def _die_without_leaving(consumer: AIOKafkaConsumer) -> str:
    """Stop ``consumer`` as SIGKILL would: no LeaveGroup. Returns its member id."""
    member = consumer._coordinator.member_id

    async def no_leave():
        return None

    consumer._coordinator._maybe_leave_group = no_leave
    await consumer.stop()
    return member


def test_member_slots_hand_over_only_a_dead_workers_member_id(tmp_path):
    first = MemberSlot.claim(str(tmp_path), "dlabel-g")
    assert first is not None and first.predecessor is None
    first.record("member-a")
    second = MemberSlot.claim(str(tmp_path), "dlabel-g")  # a live peer: its own slot
    assert second is not None and second.path != first.path and second.predecessor is None
    first.release()  # the worker holding it died
    restarted = MemberSlot.claim(str(tmp_path), "dlabel-g")
    assert restarted is not None and restarted.path == first.path
    assert restarted.predecessor == "member-a"
    other_group = MemberSlot.claim(str(tmp_path), "dlabel-h")
    assert other_group is not None and other_group.predecessor is None
    for slot in (second, restarted, other_group):
        slot.release()


@pytest.mark.parametrize("tansu", [False, True])
def test_predecessor_is_evicted_only_on_tansu(tansu, make_config, monkeypatch, tmp_path):
    config = make_config()
    calls, seen = [], {}

    class Stop(Exception):
        pass

    def fake_evict(bootstrap, group, state_dir):
        calls.append((group, state_dir))
        return "slot"

    def fake_build_app(config, opts, pii):
        seen["opts"] = opts
        raise Stop

    monkeypatch.setattr(pipeline, "prepare", lambda config, bootstrap: tansu)
    monkeypatch.setattr(pipeline, "evict_predecessor", fake_evict)
    monkeypatch.setattr(pipeline, "build_app", fake_build_app)
    monkeypatch.setattr(pipeline, "load_pii_key", lambda config: None)
    with pytest.raises(Stop):
        pipeline.run_join_worker(config, web_port=1)
    assert calls == ([(f"dlabel-{config.pipeline}", config.state_dir)] if tansu else [])
    assert seen["opts"].member_slot == ("slot" if tansu else None)


@pytest.mark.broker
def test_restarted_worker_drops_its_dead_predecessor(broker, tmp_path, unique_name):
    topic, group = f"{unique_name}-in", f"dlabel-{unique_name}"
    create_state_topic(broker.bootstrap, topic, partitions=2)
    slot = MemberSlot.claim(str(tmp_path), group)

    async def first_worker() -> str:
        consumer = await _joined(broker.bootstrap, topic, group)
        slot.record(consumer._coordinator.member_id)
        return await _die_without_leaving(consumer)

    dead = asyncio.run(first_worker())
    slot.release()  # its process is gone
    assert dead in _members(broker.bootstrap, group)  # Tansu keeps it for its session

    restarted = evict_predecessor(broker.bootstrap, group, str(tmp_path))
    try:
        assert restarted is not None and restarted.predecessor == dead
        assert dead not in _members(broker.bootstrap, group)
    finally:
        restarted.release()


@pytest.mark.broker
def test_stopping_member_leaves_in_generation_zero(broker, unique_name):
    topic, group = f"{unique_name}-in", f"dlabel-{unique_name}"
    create_state_topic(broker.bootstrap, topic, partitions=2)
    leave_in_generation_zero()

    async def join_and_stop() -> tuple[str, int]:
        consumer = await _joined(broker.bootstrap, topic, group)
        member, generation = consumer._coordinator.member_id, consumer._coordinator.generation
        await consumer.stop()
        return member, generation

    member, generation = asyncio.run(join_and_stop())
    assert generation == 0  # Tansu's first generation; aiokafka leaves only above 0
    assert member not in _members(broker.bootstrap, group)
