"""Reading a topic from the beginning, for `dlabel tail`, the demo and tests."""
from __future__ import annotations

import time
from typing import Iterator

from kafka import KafkaConsumer, TopicPartition

from streams.kafka import clients as kafka_clients


def read_topic(bootstrap: str, topic: str, idle_timeout_s: float = 2.0,
               max_records: int = 0) -> Iterator:
    """Yield ConsumerRecords of every partition of ``topic`` from offset 0.

    Stops after ``max_records`` (0: no limit) or ``idle_timeout_s`` without a record.
    No consumer group: nothing is committed.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             group_id=None, consumer_timeout_ms=int(idle_timeout_s * 1000),
                             isolation_level="read_committed",
                             **kafka_clients.kafka_python())
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        n = 0
        for record in consumer:
            yield record
            n += 1
            if max_records and n >= max_records:
                return
    finally:
        consumer.close()


def tail_topic(bootstrap: str, topic: str, max_records: int = 0,
               idle_timeout_s: float = 0.0) -> Iterator[str]:
    """Yield the values of ``topic`` as text, following it unless an idle timeout is set."""
    while True:
        for record in read_topic(bootstrap, topic, idle_timeout_s or 3600.0, max_records):
            yield record.value.decode("utf-8", errors="replace")
        if idle_timeout_s or max_records:
            return
        time.sleep(0.1)
