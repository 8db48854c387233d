"""A large invalid event on the real brokers: dead-lettered whole, the worker goes on.

A dead letter carries its input record's bytes as base64 (4/3 the size) in a JSON
envelope, so an invalid input of ~900 KB, which an input topic with Kafka's default
limit (1 MiB) takes, makes a dead letter over that limit. The worker creates the
dead-letter topic with room for it (``topics.DEAD_LETTER_TOPIC_CONFIGS``); an existing
one with less room is refused at start, naming the fix.
"""
from __future__ import annotations

import json

import pytest

from schemas.records import DEAD_LETTER_ORIGINAL_MAX_BYTES, DeadLetter, decode_dead_letter
from schemas.errors import BrokerError
from streams.dev.simulate import SimEvent, generate, produce
from streams.kafka.topics import DEAD_LETTER_MAX_MESSAGE_BYTES, ensure_topics
from tests.oracle import assert_examples_match, expected_examples
from tests.pipeline_runs import (PII_KEY, dead_letters, labeled_records, load, run_drain,
                                 write_pipeline)

BIG = 900_000  # bytes of one invalid request: under the input topic's 1 MiB, over it as base64


def _big_request(ts: int) -> bytes:
    return json.dumps({"request_id": "big-1", "ts": ts, "prediction": 0.5,
                       "model_version": "v1",
                       "features": {"category": "x" * BIG}}).encode()


@pytest.mark.broker
@pytest.mark.timeout(600)
def test_large_invalid_event_goes_whole_to_the_dead_letter_topic(any_broker, tmp_path,
                                                                 unique_name):
    path = write_pipeline(tmp_path, "ctr", any_broker.url, unique_name, partitions=2)
    cfg = load(path)
    events = generate(cfg, "ctr", 300, seed=11)
    middle = events[len(events) // 2]
    big = _big_request(middle.ts)
    events.insert(len(events) // 2, SimEvent("requests", b"big-1", big, middle.ts,
                                             "malformed:too_large", middle.arrival_ms))
    produce(any_broker.bootstrap, cfg, events)
    run_drain(path, tmp_path / "drain.log")  # exits 0: the worker did not crash on it

    letters = [d for d in dead_letters(any_broker.bootstrap, cfg.topics.dead_letter)
               if d["reason"] == "too_large"]
    assert [d["original"] for d in letters] == [big]
    assert "900000 characters" in letters[0]["detail"]
    expected = expected_examples(path, [e.value for e in events if e.role == "requests"],
                                 [e.value for e in events if e.role == "feedback"],
                                 PII_KEY.encode())
    labeled, _ = labeled_records(any_broker.bootstrap, cfg.topics.labeled)
    assert_examples_match(expected, labeled)


@pytest.mark.broker
@pytest.mark.kafka
def test_existing_dead_letter_topic_too_small_is_refused_at_start(kafka_broker, tmp_path,
                                                                  unique_name):
    from kafka.admin import KafkaAdminClient, NewTopic

    path = write_pipeline(tmp_path, "ctr", kafka_broker.url, unique_name, partitions=2)
    cfg = load(path)
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:  # as a user would create it: the broker's default limit
        admin.create_topics([NewTopic(cfg.topics.dead_letter, 2, 1)])
    finally:
        admin.close()
    with pytest.raises(BrokerError) as err:
        ensure_topics(kafka_broker.bootstrap, cfg)
    msg = str(err.value)
    assert cfg.topics.dead_letter in msg and "max.message.bytes" in msg
    assert f"max.message.bytes={DEAD_LETTER_MAX_MESSAGE_BYTES}" in msg  # the fix


def test_an_original_past_the_bound_is_cut_and_says_so():
    huge = b"{" + b"x" * (DEAD_LETTER_ORIGINAL_MAX_BYTES + 10)
    letter = decode_dead_letter(DeadLetter("too_large", "2 MiB is over the limit", "t", 0, 7,
                                           huge).encode())
    assert letter["original"] == huge[:DEAD_LETTER_ORIGINAL_MAX_BYTES]
    assert letter["detail"].startswith("2 MiB is over the limit")
    assert f"first {DEAD_LETTER_ORIGINAL_MAX_BYTES} of {len(huge)} bytes" in letter["detail"]
    assert "t partition 0 offset 7" in letter["detail"]
    small = DeadLetter("bad_type", "d", "t", 0, 1, b"{}")
    assert decode_dead_letter(small.encode())["detail"] == "d"
    assert len(DeadLetter("too_large", "d", "t", 0, 1, huge).encode()) < DEAD_LETTER_MAX_MESSAGE_BYTES
