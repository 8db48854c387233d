"""The join worker against real brokers (Tansu and Apache Kafka): output equals the oracle."""
from __future__ import annotations

from collections import Counter

import pytest

from streams.dev.simulate import generate, produce
from tests.oracle import assert_examples_match, expected_examples, is_valid_event
from tests.pipeline_runs import PII_KEY, dead_letters, labeled_records, load, run_drain, write_pipeline

pytestmark = pytest.mark.broker

# the dead-letter reason of each way the simulator spoils an event (SimEvent.kind)
SPOILED_REASON = {"broken_json": "malformed_json", "garbage": "malformed_json",
                  "zoneless_ts": "bad_timestamp", "nan_feature": "bad_type",
                  "bad_type": "bad_type", "missing_id": "missing_field",
                  "missing_type": "missing_field"}


def _split(events):
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    return reqs, fbs


@pytest.mark.parametrize("scenario,partitions", [("ctr", 1), ("ctr", 4), ("airport", 3)])
def test_worker_output_equals_oracle(any_broker, tmp_path, unique_name, scenario, partitions):
    broker = any_broker
    path = write_pipeline(tmp_path, scenario, broker.url, unique_name, partitions=partitions)
    cfg = load(path)
    events = generate(cfg, scenario, 1500, seed=7)
    produce(broker.bootstrap, cfg, events)

    summary = run_drain(path, tmp_path / "worker.log")

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    dls = dead_letters(broker.bootstrap, cfg.topics.dead_letter)
    assert not [d for d in dls if d["reason"] == "late"]
    reqs, fbs = _split(events)
    pii_key = PII_KEY.encode()
    expected = expected_examples(path, reqs, fbs, pii_key)
    assert len(expected) > 500
    assert_examples_match(expected, labeled.values())
    assert all(len(set(v)) == 1 for v in copies.values()), "repeated records must be identical"
    if type(broker).__name__ == "KafkaBroker":  # exactly once: not even identical repeats
        assert all(len(v) == 1 for v in copies.values())
    assert summary["labeled_sent"] >= len(labeled)

    # every invalid event is in the dead-letter topic with its reason and original bytes:
    # the simulator spoiled exactly those the oracle finds invalid
    spoiled = [e for e in events if e.kind.startswith("malformed:")]
    assert [e.value for e in events if not is_valid_event(path, e.role, e.value, pii_key)] \
        == [e.value for e in spoiled]
    want = Counter((SPOILED_REASON[e.kind.split(":", 1)[1]], e.value) for e in spoiled)
    got = Counter((d["reason"], d["original"]) for d in dls if d["reason"] in
                  {"malformed_json", "missing_field", "bad_type", "bad_timestamp"})
    assert want and got == want
    assert {d["topic"] for d in dls} <= {cfg.topics.requests, cfg.topics.feedback}
    reasons = Counter(d["reason"] for d in dls)
    assert reasons["duplicate_request"] > 0 and reasons["orphan_feedback"] > 0


def test_hashed_pii_never_reaches_the_labeled_topic(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=1)
    cfg = load(path)
    events = generate(cfg, "ctr", 200, seed=3, bad_fraction=0)
    produce(broker.bootstrap, cfg, events)
    run_drain(path, tmp_path / "worker.log")
    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    raw = b"".join(v for vs in copies.values() for v in vs)
    assert labeled and b"@example.com" not in raw and PII_KEY.encode() not in raw
    assert all(len(ex["user_email"]) == 64 for ex in labeled.values() if ex["user_email"])
