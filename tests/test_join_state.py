"""The join's persisted state: compact pending requests, and state written before they
were compact still loads."""
from __future__ import annotations

from schemas.events import Request
from streams.join.join_state import DoneMarker, PendingRequest

REQ = Request("r1", 1_795_000_000_000, {"hour": 3, "category": "é", "price": None,
                                        "big": 2 ** 70}, 0.125, None)


def test_a_pending_request_round_trips_through_its_json():
    p = PendingRequest.of(REQ, 2, 7)
    again = PendingRequest.from_json("r1", p.to_json())
    assert again == p and again.to_request() == REQ
    assert isinstance(p.body, str)  # not orjson's bytes: those keep a 4 KiB buffer


def test_pending_state_of_the_previous_format_loads():
    old = {"p": 2, "o": 7, "ts": REQ.ts, "f": REQ.features, "pr": 0.125, "mv": None,
           "c": [[REQ.ts + 5, 9, 1.5]]}
    p = PendingRequest.from_json("r1", old)
    assert p.to_request() == REQ and p.candidates == [[REQ.ts + 5, 9, 1.5]]
    assert (p.partition, p.offset) == (2, 7)


def test_done_markers_stay_small_without_corrections_and_keep_the_request_with_them():
    plain = DoneMarker(REQ.ts, 1, 4, 0, REQ.ts + 60_000)
    assert plain.to_json() == [REQ.ts, 1, 4, 0, REQ.ts + 60_000]
    assert DoneMarker.from_json(plain.to_json()) == plain
    p = PendingRequest.of(REQ, 1, 4)
    kept = DoneMarker(REQ.ts, 1, 4, 1, REQ.ts + 5, version=2, request={"ts": p.ts, "b": p.body})
    again = DoneMarker.from_json(kept.to_json())
    assert again == kept and again.to_request("r1") == REQ
