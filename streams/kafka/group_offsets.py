"""The offsets a consumer group has committed, read from its coordinator."""
from __future__ import annotations

from typing import Iterable, Optional

from aiokafka.structs import TopicPartition
from kafka import KafkaAdminClient

from streams.kafka import clients as kafka_clients


def committed_offsets(bootstrap: str, group_id: str, tps: Iterable[TopicPartition],
                      client_id: str = "dlabel-offsets") -> dict[TopicPartition, Optional[int]]:
    """``{tp: next offset to read}`` as ``group_id`` committed it (None: nothing committed).

    Read from the group coordinator at the time of the call (after a transactional
    producer fenced its predecessor, this includes every transaction that committed).
    """
    tps = list(tps)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id=client_id,
                             **kafka_clients.kafka_python())
    try:
        committed = admin.list_group_offsets(group_id).get(group_id, {}) or {}
    finally:
        admin.close()
    result: dict[TopicPartition, Optional[int]] = {}
    for tp in tps:
        meta = committed.get(tp) or committed.get((tp.topic, tp.partition))
        result[tp] = meta.offset if meta is not None and meta.offset >= 0 else None
    return result
