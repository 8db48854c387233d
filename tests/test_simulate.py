"""The event generator: deterministic, messy in the documented ways, producible."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from schemas.errors import ConfigError, EventError
from schemas.events import EventParser
from schemas.pii import PiiHasher
from streams.kafka.broker import EmbeddedBroker
from streams.dev.simulate import CATEGORIES, DEFAULT_START_MS, generate, produce
from tests.waiting import read_to_end

REASONS = {"broken_json": "malformed_json", "garbage": "malformed_json",
           "zoneless_ts": "bad_timestamp", "nan_feature": "bad_type", "bad_type": "bad_type",
           "missing_id": "missing_field", "missing_type": "missing_field"}


@pytest.fixture(params=["ctr", "airport"])
def scenario(request: pytest.FixtureRequest) -> str:
    return request.param


def test_deterministic_for_a_seed(make_config, scenario: str) -> None:
    cfg = make_config(scenario)
    a = generate(cfg, scenario, 1500, seed=7)
    b = generate(cfg, scenario, 1500, seed=7)
    c = generate(cfg, scenario, 1500, seed=8)
    assert a == b
    assert [e.value for e in a] != [e.value for e in c]


def test_contains_the_messy_cases(make_config, scenario: str) -> None:
    cfg = make_config(scenario)
    events = generate(cfg, scenario, 3000, seed=1)
    kinds = Counter(e.kind.split(":")[0] for e in events)
    assert kinds["request"] == 3000
    for kind in ("early_feedback", "duplicate", "malformed", "orphan", "feedback"):
        assert kinds[kind] > 0, kind
    arrivals = [e.arrival_ms for e in events]
    assert arrivals == sorted(arrivals) and arrivals[0] >= DEFAULT_START_MS
    first_seen: dict[bytes, int] = {}
    for i, e in enumerate(events):
        if e.kind == "request":
            first_seen[e.key] = i
    # early feedback really precedes its request in the list
    for i, e in enumerate(events):
        if e.kind == "early_feedback":
            assert i < first_seen[e.key]
    # duplicates come after the original with the same id
    for i, e in enumerate(events):
        if e.kind == "duplicate":
            assert first_seen[e.key] < i
    # orphans name ids that never exist
    assert all(e.key not in first_seen for e in events if e.kind == "orphan")
    # timestamps come in all three formats
    ts_kinds = Counter()
    for e in events:
        if not e.kind.startswith("malformed"):
            ts = json.loads(e.value)["ts"]
            ts_kinds["int" if isinstance(ts, int) else ts[-1] if ts.endswith("Z") else "offset"] += 1
    assert set(ts_kinds) == {"int", "Z", "offset"}


def test_events_parse_as_intended(make_config, scenario: str) -> None:
    """Valid events parse with the real parser; malformed ones fail with the right reason."""
    cfg = make_config(scenario)
    parser = EventParser(cfg, PiiHasher(b"test-key"))
    events = generate(cfg, scenario, 3000, seed=3)
    reasons = Counter()
    for e in events:
        parse = parser.parse_request if e.role == "requests" else parser.parse_feedback
        if e.kind.startswith("malformed:"):
            with pytest.raises(EventError) as err:
                parse(e.value)
            how = e.kind.split(":", 1)[1]
            assert err.value.reason == REASONS[how], (how, e.value)
            reasons[how] += 1
        else:
            parsed = parse(e.value)
            assert parsed.ts == e.ts
            assert e.key == parsed.request_id.encode()
    assert len(reasons) >= 4


def test_ctr_content(make_config) -> None:
    cfg = make_config("ctr")
    window = cfg.join.label_window_ms
    events = generate(cfg, "ctr", 5000, seed=2)
    reqs = {e.key: e for e in events if e.kind == "request"}
    cats, prices, emails = set(), Counter(), 0
    for e in reqs.values():
        obj = json.loads(e.value)
        f = obj["features"]
        cats.add(f["category"])
        prices["missing" if "price" not in f else type(f["price"]).__name__ + (
            "_empty" if f["price"] == "" else "")] += 1
        emails += f["user_email"].endswith("@example.com")
        assert f["hour"] == (e.ts // 3_600_000) % 24 and obj["model_version"] == "v1"
        assert obj["prediction"] is None or 0 <= obj["prediction"] <= 1
    assert cats == set(CATEGORIES) and emails == len(reqs)
    assert {"float", "str_empty", "missing", "str"} <= set(prices)
    fb = [(json.loads(e.value), e) for e in events if e.kind in ("feedback", "early_feedback")]
    types = Counter(o["type"] for o, _ in fb)
    assert types["click"] > 0 and types["view"] > types["click"]
    delays = [e.ts - reqs[e.key].ts for o, e in fb if o["type"] == "click"]
    inside = sum(0 <= d < window for d in delays)
    assert 0.8 * len(delays) < inside < len(delays)  # mostly in the window, some not


def test_airport_content(make_config) -> None:
    cfg = make_config("airport")
    events = generate(cfg, "airport", 3000, seed=4)
    reqs = {e.key: e for e in events if e.kind == "request"}
    exits: dict[bytes, int] = {}
    for e in events:
        if e.kind in ("feedback", "early_feedback") and json.loads(e.value)["type"] == "exit":
            exits[e.key] = min(exits.get(e.key, e.ts), e.ts)
    assert 0.9 * len(reqs) < len(exits) < len(reqs)  # a few never exit
    f = json.loads(next(iter(reqs.values())).value)["features"]
    assert set(f) == {"checkpoint", "hour", "passengers_in_line", "fast_track", "passport_id"}
    by_len = sorted((json.loads(reqs[k].value)["features"]["passengers_in_line"], t - reqs[k].ts)
                    for k, t in exits.items())
    half = len(by_len) // 2
    short = sum(d for _, d in by_len[:half]) / half
    long = sum(d for _, d in by_len[half:]) / (len(by_len) - half)
    assert long > 1.5 * short  # longer lines, longer waits


def test_scenario_must_fit_config(make_config) -> None:
    with pytest.raises(ConfigError):
        generate(make_config("ctr"), "airport", 10, seed=1)
    with pytest.raises(ValueError):
        generate(make_config("ctr"), "nope", 10, seed=1)


def test_a_large_stream(make_config) -> None:
    """50k requests in one call (how fast is a benchmark's business, not a test's)."""
    cfg = make_config("ctr")
    events = generate(cfg, "ctr", 50_000, seed=5)
    assert len(events) > 50_000
    kinds = Counter(e.kind for e in events)
    assert kinds["request"] == 50_000
    assert len({e.key for e in events if e.kind == "request"}) == 50_000  # ids never repeat


@pytest.mark.broker
def test_produce_round_trip(broker: EmbeddedBroker, make_config) -> None:
    cfg = make_config("ctr", broker=broker.url, partitions=4)
    events = generate(cfg, "ctr", 1000, seed=6)
    assert produce(broker.bootstrap, cfg, events) == len(events)
    expected = {cfg.topics.requests: [e for e in events if e.role == "requests"],
                cfg.topics.feedback: [e for e in events if e.role == "feedback"]}
    # everything the topics hold (up to their end now), not "until the count is reached"
    got = {t: [(r.partition, r.offset, r) for r in read_to_end(broker.bootstrap, t)]
           for t in expected}
    for topic, evs in expected.items():
        records = got[topic]
        assert len(records) == len(evs)
        assert sorted(r.value for _, _, r in records) == sorted(e.value for e in evs)
        # the same key always lands in the same partition ...
        where: dict[bytes, set[int]] = {}
        for p, _, r in records:
            if r.key is not None:
                where.setdefault(r.key, set()).add(p)
        assert all(len(ps) == 1 for ps in where.values())
        # ... and each partition keeps the produce order (= list order)
        for p in range(4):
            stored = [r.value for q, _, r in sorted(records, key=lambda x: x[:2])
                      if q == p and r.key is not None]
            sent = [e.value for e in evs if e.key is not None and where[e.key] == {p}]
            assert stored == sent
