"""The join worker against the real embedded broker: output equals the oracle."""
from __future__ import annotations

from collections import Counter

import pytest

from schemas.errors import EventError
from schemas.events import EventParser
from schemas.pii import PiiHasher
from streams.dev.simulate import generate, produce
from tests.oracle import assert_matches_oracle, oracle_labels
from tests.pipeline_runs import PII_KEY, dead_letters, labeled_records, load, run_drain, write_pipeline

pytestmark = pytest.mark.broker


def _split(events):
    reqs = [e.value for e in events if e.role == "requests"]
    fbs = [e.value for e in events if e.role == "feedback"]
    return reqs, fbs


@pytest.mark.parametrize("scenario,partitions", [("ctr", 1), ("ctr", 4), ("airport", 3)])
def test_worker_output_equals_oracle(broker, tmp_path, unique_name, scenario, partitions):
    path = write_pipeline(tmp_path, scenario, broker.url, unique_name, partitions=partitions)
    cfg = load(path)
    events = generate(cfg, scenario, 1500, seed=7)
    produce(broker.bootstrap, cfg, events)

    summary = run_drain(path, tmp_path / "worker.log")

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    dls = dead_letters(broker.bootstrap, cfg.topics.dead_letter)
    assert not [d for d in dls if d["reason"] == "late"]
    reqs, fbs = _split(events)
    pii = PiiHasher(PII_KEY.encode())
    expected = oracle_labels(cfg, reqs, fbs, pii)
    assert len(expected) > 500
    assert_matches_oracle(expected, labeled)
    assert all(len(set(v)) == 1 for v in copies.values()), "repeated records must be identical"
    assert summary["labeled_sent"] >= len(labeled)

    # every invalid event is in the dead-letter topic with its parser's reason and original bytes
    parser = EventParser(cfg, pii)
    want = Counter()
    for role, raws in (("requests", reqs), ("feedback", fbs)):
        for raw in raws:
            try:
                parser.parse_request(raw) if role == "requests" else parser.parse_feedback(raw)
            except EventError as e:
                want[(e.reason, raw)] += 1
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
