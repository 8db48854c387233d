"""Work-arounds for the embedded Tansu broker, switched on only for it.

Tansu 0.6 answers ListOffsets(latest) with the first offset of the last record batch
plus one, not the true end of the partition. Faust builds the end of each changelog
partition it recovers from that answer, so after a restart it silently stops early and
drops the tail of the table. The high watermark in a Fetch response is right, so we
take the end from there (``fetch_end_offsets``; the Faust side of the fix is
``streams.join.faust_adapter.patch_table_recovery``, and
``streams.kafka.changelog_reader`` for the memory store). Real Kafka clusters never
run this code.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from kafka import KafkaAdminClient

from streams.kafka import clients as kafka_clients

log = logging.getLogger(__name__)

#: Tansu describes a topic with only the configs it was created with, and some clients
#: fail on a topic without ``retention.ms`` (Quix Streams reads it: KeyError). Tansu
#: never deletes a record (memory storage, no retention), so the input topics dlabel
#: creates there state that: -1, forever. On other brokers their retention stays the
#: operator's (the broker's ``log.retention.ms``), see ``streams.kafka.topics``.
TANSU_INPUT_TOPIC_CONFIGS = {"retention.ms": "-1"}


def is_tansu_cluster(cluster_id: object) -> bool:
    """True for the cluster id a Tansu broker reports (DescribeCluster, metadata)."""
    return str(cluster_id or "").startswith("tansu")


def admin_is_tansu(admin: KafkaAdminClient) -> bool:
    """Whether ``admin`` talks to Tansu; False when the cluster cannot be described
    (an old broker, or a user without DESCRIBE on the cluster: not Tansu either way)."""
    try:
        return is_tansu_cluster(admin.describe_cluster().get("cluster_id"))
    except Exception as exc:  # kafka-python raises several unrelated types here
        log.debug("cannot describe the cluster (%r): not Tansu", exc)
        return False


def is_tansu(bootstrap: str, timeout_s: float = 10.0) -> bool:
    """True when the cluster at ``bootstrap`` is a Tansu broker (by its cluster id)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                             client_id="dlabel-probe", **kafka_clients.kafka_python())
    try:
        return is_tansu_cluster(admin.describe_cluster().get("cluster_id"))
    finally:
        admin.close()


async def fetch_end_offsets(bootstrap: str, tps: Iterable[TopicPartition],
                            timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """True end offsets, from the high watermark of a Fetch response."""
    tps = list(tps)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, fetch_max_bytes=1024, max_partition_fetch_bytes=1024,
                                **kafka_clients.aiokafka())
    await consumer.start()
    try:
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        # an end of 0 is right: a partition with a batch says at least its first offset + 1
        ends: dict[TopicPartition, int] = {tp: 0 for tp in tps if reported[tp] == 0}
        tps = [tp for tp in tps if reported[tp] > 0]
        if not tps:
            return ends
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, reported[tp] - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(tp not in ends for tp in tps) and loop.time() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    ends[tp] = max(hw, reported[tp])
        for tp in tps:
            ends.setdefault(tp, reported[tp])
        return ends
    finally:
        await consumer.stop()
