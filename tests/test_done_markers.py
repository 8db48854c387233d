"""Done markers: packed without loss, forgotten after ``join.dedupe_retention`` (with a
deletion for the changelog), and a duplicate caught only while its first is remembered."""
from __future__ import annotations

import sys

import pytest

from schemas.config import config_from_dict
from streams.join.done_markers import EXPIRY_BUCKET_MS, DoneMarkers
from streams.join.join_state import REQUEST, DoneMarker
from streams.join.processor import InputRecord, JoinProcessor
from tests.join_cases import MIN, config_dict, fb, req

T0 = 1_795_000_000_000
HOUR = 60 * MIN


@pytest.mark.parametrize("marker", [
    DoneMarker(T0, 3, (2 << 40) | 17, 0, T0 + 30 * MIN),
    DoneMarker(T0, 0, 5, 1, T0 + 7),
    DoneMarker(T0, 1, 5, 612.25, T0 + 9),
    DoneMarker(T0, 1, 5, None, T0 + 30 * MIN),
    DoneMarker(-5, 0, 0, 0, -1),
    DoneMarker(T0, 1, 5, 2 ** 60, T0 + 9),            # an int a double cannot hold
    DoneMarker(T0, 1, 2 ** 64, 1, T0 + 9),            # an offset beyond 64 bits
    DoneMarker(T0, 1, 5, 1, T0 + 9, version=3),
    DoneMarker(T0, 1, 5, 1, T0 + 9, request={"ts": T0, "b": "[{},0.5,null]"}),
], ids=["negative", "positive", "float", "unlabeled", "negative-times", "huge-int-label",
        "huge-offset", "version", "with-request"])
def test_a_marker_comes_back_as_it_went_in(marker):
    markers = DoneMarkers(keep_ms=HOUR)
    markers.put("r", marker)
    again = markers.get("r")
    assert again == marker
    assert type(again.label) is type(marker.label)  # 1 stays 1, not 1.0, in the example
    assert markers.json_of("r") == marker.to_json()
    assert list(markers.items()) == [("r", marker)]
    assert "r" in markers and len(markers) == 1
    assert markers.get("other") is None and markers.json_of("other") is None


def test_a_plain_marker_is_packed_small():
    markers = DoneMarkers(keep_ms=HOUR)
    markers.put("r", DoneMarker(T0, 3, (2 << 40) | 17, 0, T0 + 30 * MIN))
    stored = markers._markers["r"]
    assert isinstance(stored, bytes) and sys.getsizeof(stored) <= 72


def test_markers_are_forgotten_after_their_minute_of_expiry_with_their_partition():
    markers = DoneMarkers(keep_ms=HOUR)
    markers.put("a", DoneMarker(T0, 1, 0, 0, T0))
    markers.put("b", DoneMarker(T0 + 3 * MIN, 2, 1, 1, T0 + 3 * MIN))
    expiry_a = T0 + HOUR
    minute_end = (expiry_a // EXPIRY_BUCKET_MS + 1) * EXPIRY_BUCKET_MS
    assert markers.expire(expiry_a - 1) == []
    assert markers.expire(minute_end - 2) == []   # a's minute has not passed yet
    assert markers.expire(minute_end - 1) == [("a", 1)]
    assert markers.get("a") is None and markers.get("b") is not None
    assert markers.expire(T0 + 3 * MIN + HOUR + EXPIRY_BUCKET_MS) == [("b", 2)]
    assert len(markers) == 0 and markers.expire(T0 + 10 * HOUR) == []
    markers.put("a", DoneMarker(T0 + 5 * HOUR, 1, 9, 1, T0 + 5 * HOUR))  # the id again, later
    assert markers.expire(T0 + 6 * HOUR - 1) == []
    assert markers.expire(T0 + 7 * HOUR) == [("a", 1)]


def _join(retention: str):
    data = config_dict()
    data["join"]["dedupe_retention"] = retention
    return JoinProcessor(config_from_dict(data), None, clock=lambda: 0)


def _feed(proc, role, offset, raw):
    return proc.process(role, 0, [InputRecord(offset, raw)]) + proc.tick()


def _reasons(outputs):
    return [o.reason for o in outputs if hasattr(o, "reason")]


def test_a_duplicate_is_caught_while_remembered_and_labeled_again_after():
    proc = _join("1h")
    assert proc.join.dedupe_retention == HOUR
    _feed(proc, "requests", 0, req("a", T0))
    _feed(proc, "requests", 1, req("x", T0 + 40 * MIN))          # finalizes a (window 30m)
    assert proc.join.done.get("a").label == 0
    proc.join.take_dirty()
    # within a + window + retention: a duplicate
    out = _feed(proc, "requests", 2, req("a", T0 + 80 * MIN))
    assert _reasons(out) == ["duplicate_request"]
    # the closed time passes a's retention (and its minute): forgotten, a deletion persisted
    _feed(proc, "requests", 3, req("y", T0 + 95 * MIN))
    assert proc.join.done.get("a") is None
    assert (REQUEST, "a", 0, None) in proc.join.take_dirty()
    # the same id later is a new request, labeled on its own
    out = _feed(proc, "requests", 4, req("a", T0 + 100 * MIN)) + _feed(
        proc, "feedback", 0, fb("a", T0 + 101 * MIN))
    assert _reasons(out) == [] and [o.example["label"] for o in out] == [1]


def test_the_default_remembers_a_day():
    proc = _join("24h")
    _feed(proc, "requests", 0, req("a", T0))
    _feed(proc, "requests", 1, req("y", T0 + 20 * HOUR))
    out = _feed(proc, "requests", 2, req("a", T0 + 20 * HOUR + MIN))
    assert _reasons(out) == ["duplicate_request"]
    assert config_from_dict(config_dict()).join.dedupe_retention_ms == 24 * HOUR


def test_a_correction_window_longer_than_the_retention_keeps_markers_for_it():
    data = config_dict()
    data["join"].update(dedupe_retention="10m", correction_window="3h")
    proc = JoinProcessor(config_from_dict(data), None, clock=lambda: 0)
    assert proc.join.dedupe_retention == 3 * HOUR
