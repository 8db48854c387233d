"""The join's state and outputs: pending requests, early feedback, done markers.

Each kind knows its persisted JSON form (``to_json``/``from_json``); ``EventTimeJoin``
keeps them in memory and reports which keys changed, the worker writes those to the
changelog-backed table.
"""
from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import orjson

from schemas.events import Request

#: Persisted state of one request: its pending state (a dict), its done marker (a list)
#: or nothing. One key for both halves of a request's life, so that finalizing it is
#: one changelog record, not a deletion plus a marker.
REQUEST = "request"
#: Persisted feedback that arrived before its request (a list of entries).
EARLY = "early"


class Source(NamedTuple):
    """Where an event was read: its role (``requests``/``feedback``), the join's task
    (partition) it belongs to, and its input record as one ``repartition.position``
    (input partition and offset: an event's identity across input partitions).
    A tuple: one is made per event (a frozen dataclass costs several times more)."""

    role: str
    partition: int
    offset: int


@dataclass(slots=True)
class LabeledOut:
    """A labeled example to publish, with the input partition it belongs to."""

    example: dict
    partition: int


Output = Any  # LabeledOut | DeadLetter


@dataclass(slots=True)
class PendingRequest:
    """A request waiting for its label, compact: a million of them stay in memory.

    The request's content (features, prediction, model version) is kept as one JSON
    string, ``body``, and decoded only when it is labeled (``to_request``): about 450 bytes a
    request instead of about 1,150 as a ``Request`` with its feature dict.
    """

    request_id: str
    ts: int
    partition: int
    offset: int
    body: str
    candidates: Optional[list] = None  # regression: [ts, offset, value], made on demand

    @classmethod
    def of(cls, req: Request, partition: int, offset: int) -> "PendingRequest":
        """A pending request for a parsed ``req``."""
        return cls(req.request_id, req.ts, partition, offset,
                   _pack([req.features, req.prediction, req.model_version]))

    def to_request(self) -> Request:
        """The request, decoded."""
        features, prediction, model_version = _unpack(self.body)
        return Request(self.request_id, self.ts, features, prediction, model_version)

    def to_json(self) -> dict:
        return {"p": self.partition, "o": self.offset, "ts": self.ts,
                "b": self.body, "c": self.candidates or []}

    @classmethod
    def from_json(cls, rid: str, d: dict) -> "PendingRequest":
        if "b" in d:
            body = d["b"]
        else:  # the format before the body was packed
            body = _pack([d["f"], d["pr"], d["mv"]])
        return cls(rid, d["ts"], d["p"], d["o"], body, [list(c) for c in d["c"]] or None)


def _pack(value: Any) -> str:
    # a str, not orjson's bytes: those keep orjson's 4 KiB output buffer allocated
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:  # an int beyond 64 bits
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _unpack(body: str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


@dataclass(slots=True)
class EarlyFeedback:
    """Feedback that arrived before its request: kept until its request or its expiry."""

    ts: int
    type: str
    value: Optional[float]
    fields: dict
    partition: int
    offset: int
    original: bytes

    def to_json(self) -> list:
        return [self.ts, self.type, self.value, self.fields, self.partition, self.offset,
                base64.b64encode(self.original).decode("ascii")]

    @classmethod
    def from_json(cls, d: list) -> "EarlyFeedback":
        return cls(d[0], d[1], d[2], d[3], d[4], d[5], base64.b64decode(d[6]))


@dataclass(slots=True)
class DoneMarker:
    """A finalized request: enough to dedupe and to re-emit its label on replay.

    ``version`` is the label's ``label_version``; with ``join.correction_window`` on,
    ``request`` keeps the request's time and packed content (``{"ts", "b"}``, see
    ``PendingRequest``) so that a correction can publish the whole example again.
    """

    ts: int
    partition: int
    offset: int
    label: Optional[float]  # None: regression request with no outcome (unlabeled)
    label_ts: int
    version: int = 1
    request: Optional[dict] = None

    def to_json(self) -> list:
        head = [self.ts, self.partition, self.offset, self.label, self.label_ts]
        if self.version == 1 and self.request is None:
            return head  # the common case stays as small as before corrections existed
        return head + [self.version, self.request]

    @classmethod
    def from_json(cls, d: list) -> "DoneMarker":
        return cls(*d)

    def to_request(self, rid: str) -> Optional[Request]:
        """The request, when the marker keeps it (corrections on), else None."""
        d = self.request
        if d is None:
            return None
        features, prediction, model_version = _unpack(d["b"])
        return Request(rid, d["ts"], features, prediction, model_version)
