"""Done markers of finalized requests, packed, and their expiry in event time.

The join remembers every request it finalized for ``join.dedupe_retention`` past its
label window: a later request with the same id is a ``duplicate_request``, and an input
record read again after a restart sends its label again. At 1,000 requests/s and the
default 24 h that is 86 million markers, so a plain marker is kept as 37 packed bytes,
not as objects: about 200 bytes with its id and its dict slot, instead of about 415 as
a ``DoneMarker`` with its own ints and a heap entry (``benchmarks/bench_state_memory.py
--finalized``). A marker that keeps its request (corrections on), a later
``label_version`` or a value the packing cannot hold stays a ``DoneMarker``.

Expiry is indexed by minute of event time, as a list of ids per minute: a marker is
forgotten at the first closed time that has passed its whole minute, so at most a
minute after its own expiry. (Not a ``join_store.TimeIndex``: its exact order costs a
(time, id) tuple per entry, ~90 bytes a marker, and expiry needs no order.)
"""
from __future__ import annotations

import heapq
import struct
from typing import Iterator, Optional, Union

from streams.join.join_state import DoneMarker

#: ts, partition, offset (a ``repartition.position``), label kind, label, label_ts
_PACKED = struct.Struct("<qiQBdq")
_HEAD = struct.Struct("<qi")  # ts, partition: the start of ``_PACKED``
_NO_LABEL, _INT_LABEL, _FLOAT_LABEL = 0, 1, 2
_EXACT_INT = 2 ** 53
#: width of the expiry index's buckets, in event-time milliseconds
EXPIRY_BUCKET_MS = 60_000

Stored = Union[bytes, DoneMarker]


def pack(marker: DoneMarker) -> Stored:
    """The marker as packed bytes, or the marker itself when packing would lose something."""
    if marker.version != 1 or marker.request is not None:
        return marker
    label = marker.label
    if label is None:
        kind, value = _NO_LABEL, 0.0
    elif label.__class__ is int and -_EXACT_INT < label < _EXACT_INT:
        kind, value = _INT_LABEL, float(label)
    elif label.__class__ is float:
        kind, value = _FLOAT_LABEL, label
    else:
        return marker
    try:
        return _PACKED.pack(marker.ts, marker.partition, marker.offset, kind, value,
                            marker.label_ts)
    except struct.error:  # an int out of range
        return marker


def unpack(stored: Stored) -> DoneMarker:
    """The ``DoneMarker`` of a stored marker (a new object for packed bytes)."""
    if stored.__class__ is not bytes:
        return stored
    return DoneMarker(*_fields(stored))


def _fields(packed: bytes) -> list:
    """ts, partition, offset, label, label_ts of packed bytes (``DoneMarker.to_json``)."""
    ts, partition, offset, kind, value, label_ts = _PACKED.unpack(packed)
    label = None if kind == _NO_LABEL else int(value) if kind == _INT_LABEL else value
    return [ts, partition, offset, label, label_ts]


class DoneMarkers:
    """The done markers by request id, each kept ``keep_ms`` after its request's time.

    A marker read with ``get`` is a copy when packed: to change one, ``put`` it again.
    """

    def __init__(self, keep_ms: int, bucket_ms: int = EXPIRY_BUCKET_MS) -> None:
        self._keep = keep_ms
        self._bucket = bucket_ms
        self._markers: dict[str, Stored] = {}
        self._expiring: dict[int, list[str]] = {}  # bucket -> ids whose expiry is in it
        self._buckets: list[int] = []               # heap of the keys of ``_expiring``

    def __len__(self) -> int:
        return len(self._markers)

    def __contains__(self, rid: object) -> bool:
        return rid in self._markers

    def get(self, rid: str) -> Optional[DoneMarker]:
        """The marker of request ``rid``, or None."""
        stored = self._markers.get(rid)
        return None if stored is None else unpack(stored)

    def put(self, rid: str, marker: DoneMarker) -> None:
        """Remember (or replace) the marker of request ``rid``."""
        if rid not in self._markers:
            bucket = (marker.ts + self._keep) // self._bucket
            ids = self._expiring.get(bucket)
            if ids is None:
                self._expiring[bucket] = ids = []
                heapq.heappush(self._buckets, bucket)
            ids.append(rid)
        self._markers[rid] = pack(marker)

    def json_of(self, rid: str) -> Optional[list]:
        """The persisted form (``DoneMarker.to_json``) of ``rid``'s marker, or None."""
        stored = self._markers.get(rid)
        if stored is None:
            return None
        return _fields(stored) if stored.__class__ is bytes else stored.to_json()

    def items(self) -> Iterator[tuple[str, DoneMarker]]:
        """Every (request id, marker), markers decoded."""
        for rid, stored in self._markers.items():
            yield rid, unpack(stored)

    def expire(self, closed: int) -> list[tuple[str, int]]:
        """Forget the markers whose minute of expiry the closed time ``closed`` has
        passed; return their (request id, partition) (each is a deletion to persist)."""
        forgotten: list[tuple[str, int]] = []
        markers, keep, span = self._markers, self._keep, self._bucket
        while self._buckets and (self._buckets[0] + 1) * span - 1 <= closed:
            for rid in self._expiring.pop(heapq.heappop(self._buckets)):
                stored = markers.get(rid)
                if stored is None:
                    continue
                if stored.__class__ is bytes:
                    ts, partition = _HEAD.unpack_from(stored)
                else:
                    ts, partition = stored.ts, stored.partition
                if ts + keep <= closed:
                    del markers[rid]
                    forgotten.append((rid, partition))
                else:  # replaced meanwhile by a marker of a later time: index it again
                    del markers[rid]
                    self.put(rid, unpack(stored))
        return forgotten
