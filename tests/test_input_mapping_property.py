"""Property: reshaping the events as producers write them, with the matching ``inputs:``
mapping (/tmp/spec/inputs.md), changes nothing.

Standard-format requests and feedback (valid and invalid, duplicates, orphans, events out
of order) are each rewritten into a random nested shape: every field moved under a random
object path whose names may hold dots and backslashes (escaped in the config as ``\\.``
and ``\\\\``), event times rewritten as ISO-8601 (Z / +01:00 / -05:30, extra sub-ms
digits) or epoch seconds / milliseconds / microseconds with the role's ``ts_unit``. The
production ``JoinProcessor`` runs both versions (same arrival order, same partitions);
their labeled examples must be equal field by field, the dead letters must have the same
reasons for the same events (and carry each one's original bytes), and both must equal
the oracle's (tests/oracle.py, which
reads the mapping itself).
"""
from __future__ import annotations

import copy
import json
import zlib
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.config import config_from_dict
from schemas.pii import PiiHasher
from streams.join.processor import InputRecord, JoinProcessor
from tests import oracle
from tests.join_cases import MIN, Run, config_dict, fb
from tests.test_join_property import fmt_ts, request_bytes, times

T0 = 1_795_000_000_000
KEY = b"k" * 32
_MISSING = object()

REQUEST_FIELDS = ("request_id", "ts", "features", "prediction", "model_version")
FEEDBACK_FIELDS = ("request_id", "ts", "type", "value")
STANDARD_NAMES = set(REQUEST_FIELDS) | set(FEEDBACK_FIELDS) | {"secs"}

# names of producers' objects: dots and backslashes need escaping in a path
_SEG_CHARS = st.sampled_from(list("abxyz_.\\@- é/"))
prefix_segments = st.text(_SEG_CHARS, min_size=1, max_size=5).filter(
    lambda s: s not in STANDARD_NAMES)
emails = st.sampled_from(["ann@example.com", "", None, _MISSING, "b.o@x", "ü@ß"])
secs_values = st.sampled_from([0, 1.5, 7, "12", None, _MISSING])


def escape(segment: str) -> str:
    return segment.replace("\\", "\\\\").replace(".", "\\.")


def config_for(kind: str, lateness: str) -> dict:
    mode = "binary" if kind == "binary" else "regression"
    value = "field:secs" if kind == "regression_field" else "elapsed_seconds"
    data = config_dict(mode, lateness=lateness, value=value)
    data["features"] = {**data["features"], "email": {"type": "str", "pii": "hash"}}
    return data


# ---------------------------------------------------------------- standard events

@st.composite
def standard_scenario(draw, kind: str):
    """(arrivals [(role, bytes)], partition of each arrival) in the formats of DESIGN.md."""
    n = draw(st.integers(1, 15))
    events: list[tuple[int, str, bytes]] = []
    ftypes = ["click", "view"] if kind == "binary" else ["exit", "view"]
    for i in range(n):
        rid = f"r{i}"
        ts = T0 + draw(st.integers(0, 90)) * MIN + draw(st.integers(0, 59_999))
        valid = draw(st.integers(0, 9)) != 0
        events.append((ts, "requests", _spice_request(draw, draw(request_bytes(rid, ts, valid)))))
        if valid and draw(st.integers(0, 3)) == 0:  # a later duplicate
            events.append((ts + draw(st.integers(0, 5 * MIN)), "requests",
                           _spice_request(draw, draw(request_bytes(rid, ts + 1)))))
        for _ in range(draw(st.integers(0, 3))):
            fts = ts + draw(st.one_of(st.integers(-2 * MIN, 40 * MIN),
                                      st.sampled_from([-1, 0, 30 * MIN - 1, 30 * MIN])))
            raw = fb(rid, fmt_ts(fts, draw(times)), draw(st.sampled_from(ftypes)),
                     draw(st.sampled_from([None, 2.5, 0])))
            events.append((fts, "feedback", _spice_feedback(draw, raw, kind)))
    for i in range(draw(st.integers(0, 2))):  # orphans
        fts = T0 + draw(st.integers(0, 90)) * MIN
        events.append((fts, "feedback", _spice_feedback(draw, fb(f"orphan{i}", fts), kind)))
    disorder = draw(st.integers(0, 10 * MIN))
    keyed = sorted((ts + draw(st.integers(0, disorder)), i, role, raw)
                   for i, (ts, role, raw) in enumerate(events))
    return [(role, raw) for _, _, role, raw in keyed]


def _spice_request(draw, raw: bytes) -> bytes:
    """Add a PII feature; sometimes drop a required field (invalid either way)."""
    obj = json.loads(raw)
    email = draw(emails)
    if email is not _MISSING and isinstance(obj.get("features"), dict):
        obj["features"]["email"] = email
    if draw(st.integers(0, 19)) == 0:
        obj.pop(draw(st.sampled_from(["request_id", "ts"])))
    return json.dumps(obj).encode()


def _spice_feedback(draw, raw: bytes, kind: str) -> bytes:
    obj = json.loads(raw)
    if kind == "regression_field":
        v = draw(secs_values)
        if v is not _MISSING:
            obj["secs"] = v
    if draw(st.integers(0, 19)) == 0:
        obj.pop(draw(st.sampled_from(["request_id", "ts", "type"])))
    return json.dumps(obj).encode()


# ---------------------------------------------------------------------- reshaping

@st.composite
def shapes(draw, fields: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """A random path per field, none a prefix of another: shared random prefixes, a last
    segment unique to the field (or the standard name when left unmapped)."""
    pool = draw(st.lists(prefix_segments, min_size=1, max_size=3, unique=True))
    out = {}
    for i, name in enumerate(fields):
        how = draw(st.sampled_from(["nested", "nested", "nested", "top", "unmapped"]))
        if how == "unmapped":
            out[name] = (name,)
            continue
        if name == "ts" and draw(st.booleans()):
            out[name] = ("@timestamp",) if how == "top" else (
                *draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2)), "@timestamp")
            continue
        last = draw(st.text(_SEG_CHARS, max_size=4)) + f"#{i}"
        prefix = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3)) if how == "nested" else []
        out[name] = (*prefix, last)
    return out


def _fields_config(shape: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {name: ".".join(escape(s) for s in path) for name, path in shape.items()
            if path != (name,)}


_TS_MARK = "\u2063ts-literal\u2063"


def _ts_text(draw, value: Any, unit: str) -> Any:
    """The same instant as ``value`` (a standard event time), in another format: an ISO
    string (any zone, extra sub-ms digits) or a JSON number literal of ``unit``. An
    invalid time stays as it is (invalid in any unit)."""
    try:
        ms = oracle.parse_event_time(value)
    except oracle.InvalidEvent:
        return value
    how = draw(st.sampled_from(["iso", "num", "num"]))
    if how == "iso":
        from datetime import datetime, timedelta, timezone
        offset = draw(st.sampled_from([None, 60, -330, 0]))
        zone = timezone.utc if offset is None else timezone(timedelta(minutes=offset))
        dt = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
        dt = dt.astimezone(zone)
        text = dt.strftime("%Y-%m-%dT%H:%M:%S")
        frac = f"{ms % 1000:03d}" + draw(st.sampled_from(["", "", "000", "999", "123456"]))
        if frac.strip("0") or draw(st.booleans()):
            text += "." + frac
        if offset is None:
            return text + "Z"
        return text + dt.strftime("%z")[:3] + ":" + dt.strftime("%z")[3:]
    if unit == "ms":
        literal = str(ms) + draw(st.sampled_from(["", "", ".0"]))
    elif unit == "s":
        sec, rest = divmod(ms, 1000)
        if rest == 0 and draw(st.booleans()):
            literal = str(sec)
        else:
            literal = f"{sec}.{rest:03d}" + draw(st.sampled_from(["", "", "9", "0001", "999999"]))
    else:
        literal = str(ms * 1000 + draw(st.integers(0, 999)))
    return (_TS_MARK, literal)


def reshape(draw, raw: bytes, shape: dict[str, tuple[str, ...]], unit: str) -> bytes:
    """Move each standard field of the event to its path (absent stays absent, null stays
    null); other keys stay at the top."""
    obj = json.loads(raw)
    out: dict = {k: v for k, v in obj.items() if k not in shape}
    literal = None
    for name, path in shape.items():
        if name not in obj:
            continue
        value = copy.deepcopy(obj[name])
        if name == "ts":
            value = _ts_text(draw, value, unit)
            if isinstance(value, tuple):
                literal, value = value[1], _TS_MARK
        node = out
        for seg in path[:-1]:
            node = node.setdefault(seg, {})
        node[path[-1]] = value
    text = json.dumps(out)
    if literal is not None:
        text = text.replace(json.dumps(_TS_MARK), literal)
        assert _TS_MARK not in text
    return text.encode()


@st.composite
def mapped_case(draw, kind: str):
    # a unique top-level "seq" (unmapped, ignored by the parser) names each arrival
    arrivals = [(role, json.dumps({**json.loads(raw), "seq": i}).encode())
                for i, (role, raw) in enumerate(draw(standard_scenario(kind)))]
    feedback_fields = FEEDBACK_FIELDS + (("secs",) if kind == "regression_field" else ())
    shape = {"requests": draw(shapes(REQUEST_FIELDS)), "feedback": draw(shapes(feedback_fields))}
    units = {role: draw(st.sampled_from(["s", "ms", "us"])) for role in shape}
    reshaped = [(role, reshape(draw, raw, shape[role], units[role])) for role, raw in arrivals]
    inputs: dict = {}
    for role in ("requests", "feedback"):
        spec: dict = {}
        fields = _fields_config(shape[role])
        if fields:
            spec["fields"] = fields
        if units[role] != "ms" or draw(st.booleans()):
            spec["ts_unit"] = units[role]
        if spec:
            inputs[role] = spec
    return arrivals, reshaped, inputs


# ------------------------------------------------------------------------ driving

def _partition_of(raw: bytes, partitions: int) -> int:
    try:
        rid = json.loads(raw).get("request_id")
    except Exception:
        return 0
    return zlib.crc32(str(rid).encode()) % partitions if partitions > 1 else 0


def run_processor(config: dict, arrivals, parts: list[int]) -> Run:
    proc = JoinProcessor(config_from_dict(config, environ={}), PiiHasher(KEY), clock=lambda: 0)
    offsets: dict[tuple[str, int], int] = {}
    run = Run()
    for (role, raw), part in zip(arrivals, parts):
        off = offsets.get((role, part), 0)
        offsets[(role, part)] = off + 1
        run.positions.append((role, part, off))
        run.take(proc.process(role, part, [InputRecord(off, raw)]))
        run.take(proc.tick())
    run.take(proc.drain())
    return run


def _dead(run: Run, inputs: list[tuple[str, bytes]]) -> Counter:
    """(reason, topic, arrival index) of each dead letter, checking that it carries the
    original bytes of that arrival (spec rule 7)."""
    out: Counter = Counter()
    for d in run.dead:
        i = json.loads(d["original"])["seq"]
        assert d["original"] == inputs[i][1], (d, inputs[i])
        assert d["topic"] == f"t.{inputs[i][0]}"
        out[(d["reason"], d["topic"], i)] += 1
    return out


def _matches_oracle(config: dict, inputs: list[tuple[str, bytes]], run: Run,
                    dead: Counter) -> dict:
    """The run's examples equal the oracle's on the inputs minus those dead-lettered as
    late (DESIGN: the contract holds for events no later than the allowed lateness)."""
    late = {i for reason, _, i in dead if reason == "late"}
    kept = [a for i, a in enumerate(inputs) if i not in late]
    expected = oracle.expected_examples(config, [r for role, r in kept if role == "requests"],
                                        [r for role, r in kept if role == "feedback"], KEY)
    oracle.assert_examples_match(expected, run.emitted)
    return expected


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data(), st.sampled_from(["binary", "regression", "regression_field"]),
       st.sampled_from([1, 3]), st.sampled_from([0, 2, 15]))
def test_mapped_inputs_label_like_standard_ones(data, kind, partitions, lateness_min):
    arrivals, reshaped, inputs = data.draw(mapped_case(kind))
    lateness = f"{lateness_min}m" if lateness_min else "0s"
    standard_cfg = config_for(kind, lateness)
    mapped_cfg = {**copy.deepcopy(standard_cfg), "inputs": inputs}
    # the same partition for an event and its reshaped twin (the key of the standard one)
    parts = [_partition_of(raw, partitions) for _, raw in arrivals]

    standard = run_processor(standard_cfg, arrivals, parts)
    mapped = run_processor(mapped_cfg, reshaped, parts)

    dead_std, dead_map = _dead(standard, arrivals), _dead(mapped, reshaped)
    assert dead_map == dead_std  # the same reasons for the same events
    exp_std = _matches_oracle(standard_cfg, arrivals, standard, dead_std)
    exp_map = _matches_oracle(mapped_cfg, reshaped, mapped, dead_map)
    assert exp_std == exp_map
    assert mapped.labeled == standard.labeled
    assert len(mapped.emitted) == len(standard.emitted) == len(standard.labeled)
