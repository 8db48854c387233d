"""Waiting in tests: on a condition, with a generous deadline, never on the clock alone.

``wait_until(predicate)`` polls until ``predicate()`` is truthy and returns that value;
past the deadline it fails the test, saying what it waited for. The deadline only
bounds a broken run: a healthy one returns as soon as the condition holds, so make it
generous (the machine may be shared and slow).

``read_to_end(bootstrap, topic)`` reads every record of a topic, from offset 0 up to the
end each partition had when called (taken from a Fetch's high watermark, which Tansu
reports right, unlike ListOffsets). Use it to assert exact contents of a topic instead
of reading "until nothing came for a while", which may stop before the first record.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 60.0


def wait_until(predicate: Callable[[], T], timeout: float = DEFAULT_TIMEOUT,
               interval: float = 0.05, what: str | None = None) -> T:
    """``predicate()``'s first truthy value; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for "
                                 f"{what or getattr(predicate, '__name__', repr(predicate))}")
        time.sleep(interval)


def end_offsets(bootstrap: str, topic: str, timeout: float = DEFAULT_TIMEOUT) -> dict[int, int]:
    """``{partition: end offset}`` of every partition of ``topic`` (which must exist)."""
    import asyncio

    from aiokafka.structs import TopicPartition as AioTP
    from kafka import KafkaConsumer

    from streams.kafka.tansu_quirks import fetch_end_offsets

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, allow_auto_create_topics=False)
    try:
        parts = wait_until(lambda: consumer.partitions_for_topic(topic), timeout,
                           what=f"the partitions of {topic}")
    finally:
        consumer.close()
    ends = asyncio.run(fetch_end_offsets(bootstrap, [AioTP(topic, p) for p in sorted(parts)],
                                         timeout_s=timeout))
    return {tp.partition: end for tp, end in ends.items()}


def read_to_end(bootstrap: str, topic: str, timeout: float = DEFAULT_TIMEOUT) -> list:
    """Every ConsumerRecord of ``topic`` up to its current end, by partition then offset."""
    from kafka import KafkaConsumer, TopicPartition

    ends = end_offsets(bootstrap, topic, timeout)
    tps = [TopicPartition(topic, p) for p in sorted(ends)]
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, allow_auto_create_topics=False)
    got: dict[int, list] = {p: [] for p in ends}
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)

        def caught_up() -> bool:
            for tp, records in consumer.poll(timeout_ms=200).items():
                got[tp.partition].extend(r for r in records if r.offset < ends[tp.partition])
            return all(consumer.position(tp) >= ends[tp.partition] for tp in tps)
        wait_until(caught_up, timeout, interval=0, what=f"{topic} read up to {ends}")
    finally:
        consumer.close()
    return [r for p in sorted(got) for r in got[p]]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (or is stopped); False once it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_dead(pid: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Returns once ``pid`` is gone (or a zombie); fails the test after ``timeout``."""
    wait_until(lambda: not alive(pid), timeout, what=f"process {pid} to exit")


def create_state_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create a topic with the join state's changelog configs (compacted) and wait for it."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from streams.kafka.topics import TOPIC_CONFIGS
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="dlabel-tests")
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(TOPIC_CONFIGS))])
        admin.wait_for_topics([name], timeout_ms=60_000)
    finally:
        admin.close()
