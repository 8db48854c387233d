"""Bad input is contained: generated garbage mixed with valid events never crashes the
join; each bad event becomes exactly one dead letter with its reason and original bytes;
the valid events are labeled exactly as the oracle says.

Hypothesis draws the bad events (broken JSON, wrong types, huge strings, deep nesting,
zone-less and absurd times, NaN, lone surrogates, duplicate ids, binary garbage,
oversized messages); over the examples below more than 10,000 bad events go through the
same ``JoinProcessor`` the worker runs, with the labeled examples taken through their
wire encoding.
"""
from __future__ import annotations

import json
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import MAX_EVENT_BYTES, MAX_STRING_CHARS
from streams.dev.simulate import generate
from tests.join_cases import config_dict, drive, make_config
from tests.oracle import assert_examples_match, expected_examples

CONFIG_DICT = config_dict("binary")
CONFIG = make_config("binary")
VALID = generate(CONFIG, "ctr", 300, seed=4, bad_fraction=0.0, rate_per_s=1.0)
EXAMPLES = 120
BAD_PER_EXAMPLE = 90  # 120 x 90 = 10,800 bad events
KNOWN = {"malformed_json", "missing_field", "bad_type", "bad_timestamp", "too_large",
         "duplicate_request", "orphan_feedback", "late"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@st.composite
def bad_event(draw) -> tuple[str, bytes, str | None]:
    """(role, bytes, the reason it must get, or None when any dead-letter reason will do)."""
    role = draw(st.sampled_from(["requests", "feedback"]))
    base = json.loads(draw(st.sampled_from([e.value for e in VALID if e.role == role])))
    kind = draw(st.sampled_from(["truncated", "garbage", "wrong_type", "huge_string", "deep",
                                 "zoneless", "nan", "oversized", "surrogate", "not_object",
                                 "missing", "huge_int"]))
    raw = json.dumps(base).encode()
    if kind == "truncated":
        return role, raw[: draw(st.integers(0, len(raw) - 1))], "malformed_json"
    if kind == "garbage":
        junk = draw(st.binary(min_size=1, max_size=200))
        try:
            if isinstance(json.loads(junk), dict):
                return role, b"\xff" + junk, "malformed_json"
        except (ValueError, UnicodeDecodeError):
            pass
        return role, junk, None  # e.g. b"1": valid JSON, not an object
    if kind == "wrong_type":
        field = draw(st.sampled_from(["request_id", "ts"]))
        # a number is a valid event time (epoch ms, a fraction floored: DESIGN.md
        # "Inputs"), so a float ts is no wrong type; a string may be a valid ISO time
        valid = (str, int, float) if field == "ts" else (str, int)
        base[field] = draw(json_values.filter(lambda v: not isinstance(v, valid)
                                              or isinstance(v, bool)))
        return role, json.dumps(base).encode(), None
    if kind == "huge_string":
        base["request_id"] = "x" * (MAX_STRING_CHARS + draw(st.integers(1, 10_000)))
        return role, json.dumps(base).encode(), "too_large"
    if kind == "deep":
        depth = draw(st.integers(1_000, 200_000))
        return role, b'{"request_id":"d","ts":1,"features":' + b"[" * depth + b"]" * depth + b"}", None
    if kind == "zoneless":
        base["ts"] = "2026-11-18T11:30:00"
        return role, json.dumps(base).encode(), "bad_timestamp"
    if kind == "nan":
        return role, raw.replace(b'"ts": ', b'"ts": NaN, "x": ', 1), None
    if kind == "oversized":
        base["padding"] = "p" * (MAX_EVENT_BYTES + 1)
        return role, json.dumps(base).encode(), "too_large"
    if kind == "surrogate":
        return role, raw.replace(b'"request_id": "', b'"request_id": "\\ud800', 1), None
    if kind == "not_object":
        return role, json.dumps(draw(st.lists(json_values, max_size=3))).encode(), "malformed_json"
    if kind == "missing":
        base.pop(draw(st.sampled_from(["request_id", "ts"])))
        return role, json.dumps(base).encode(), "missing_field"
    base["ts"] = 0
    digits = b"9" * draw(st.integers(20, 6000))
    return role, json.dumps(base).encode().replace(b'"ts": 0', b'"ts": ' + digits, 1), None


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(bad=st.lists(bad_event(), min_size=BAD_PER_EXAMPLE, max_size=BAD_PER_EXAMPLE),
       slots=st.lists(st.integers(0, len(VALID)), min_size=BAD_PER_EXAMPLE,
                      max_size=BAD_PER_EXAMPLE))
def test_bad_events_are_dead_lettered_and_valid_ones_labeled(bad, slots):
    arrivals = [(e.role, e.value) for e in VALID]
    where = sorted(range(len(bad)), key=lambda i: slots[i], reverse=True)
    for i in where:  # insert from the back so earlier slots stay put
        arrivals.insert(slots[i], bad[i][:2])
    bad_bytes = Counter(raw for _, raw, _ in bad)

    run = drive(CONFIG, arrivals)  # must not raise

    assert set(run.reasons()) <= KNOWN
    dead = Counter(d["original"] for d in run.dead if d["original"] in bad_bytes)
    assert dead == bad_bytes, "every bad event is dead-lettered exactly once"
    for role, raw, reason in bad:
        if reason is not None:
            got = {d["reason"] for d in run.dead if d["original"] == raw}
            assert got == {reason}, (raw[:80], got)
    reqs = [v for r, v in arrivals if r == "requests"]
    fbs = [v for r, v in arrivals if r == "feedback"]
    assert_examples_match(expected_examples(CONFIG_DICT, reqs, fbs), run.emitted)


def test_memory_bounds_per_message_and_per_pending_request():
    """Documented bounds: a message above MAX_EVENT_BYTES or a string above
    MAX_STRING_CHARS is dead-lettered as too_large before it can enter the join state."""
    from schemas.errors import EventError
    from schemas.events import EventParser
    import pytest
    parser = EventParser(CONFIG, None)
    ok = {"request_id": "r", "ts": 1, "features": {"category": "c" * MAX_STRING_CHARS}}
    assert parser.parse_request(json.dumps(ok).encode()).features["category"]
    for value in ({**ok, "features": {"category": "c" * (MAX_STRING_CHARS + 1)}},
                  {**ok, "request_id": "r" * (MAX_STRING_CHARS + 1)},
                  {**ok, "pad": "x" * MAX_EVENT_BYTES}):
        with pytest.raises(EventError) as e:
            parser.parse_request(json.dumps(value).encode())
        assert e.value.reason == "too_large"
