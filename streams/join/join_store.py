"""The event-time join's state in memory, its time indexes, and its persisted form.

``JoinStore`` holds what ``EventTimeJoin`` keeps between events: pending requests,
feedback that came before its request ("early"), each in a dict by request id with one
heap per kind of deadline, and the done markers of finalized requests (packed, with
their own expiry index: ``done_markers``). It tracks
which keys changed (``take_dirty``: what the worker writes to the changelog-backed
table once the outputs they produced are acked), loads persisted entries back after a
restart (``restore``, rebuilding the heaps), and forgets done markers past their
dedupe retention. The join's rules live in ``event_time_join``.
"""
from __future__ import annotations

import heapq
from bisect import bisect_right
from operator import itemgetter
from typing import Any

from streams.join.done_markers import DoneMarkers
from streams.join.join_state import (EARLY, REQUEST, DoneMarker, EarlyFeedback,
                                     PendingRequest)


_time = itemgetter(0)


class TimeIndex:
    """(time, request id) entries taken out in (time, id) order up to a time, as from a
    heap of them, but kept as one list per ``bucket_ms`` of time, sorted when taken.

    Entries mostly come in time order, so a bucket is appended to and rarely needs a
    sort; a heap of ~100k tuples cost ~20 scattered tuple comparisons a pop (~3 us per
    request in ``benchmarks/bench_hot_path.py``).
    """

    __slots__ = ("_span", "_lists", "_keys", "_unsorted")

    def __init__(self, bucket_ms: int = 1000) -> None:
        self._span = bucket_ms
        self._lists: dict[int, list[tuple[int, str]]] = {}  # bucket -> its entries
        self._keys: list[int] = []        # heap of the keys of ``_lists``
        self._unsorted: set[int] = set()  # buckets appended to out of order

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return sum(map(len, self._lists.values()))

    def push(self, ts: int, rid: str) -> None:
        entry = (ts, rid)
        bucket = ts // self._span
        entries = self._lists.get(bucket)
        if entries is None:
            self._lists[bucket] = [entry]
            heapq.heappush(self._keys, bucket)
            return
        if entry < entries[-1]:
            self._unsorted.add(bucket)
        entries.append(entry)

    def take(self, upto: int) -> list[tuple[int, str]]:
        """Remove and return the entries of time ``<= upto``, in (time, id) order."""
        out: list[tuple[int, str]] = []
        keys, lists, span = self._keys, self._lists, self._span
        while keys and keys[0] * span <= upto:
            bucket = keys[0]
            entries = lists[bucket]
            if bucket in self._unsorted:
                self._unsorted.discard(bucket)
                entries.sort()
            if (bucket + 1) * span - 1 <= upto:  # the whole bucket
                out += entries
                heapq.heappop(keys)
                del lists[bucket]
                continue
            i = bisect_right(entries, upto, key=_time)
            out += entries[:i]
            del entries[:i]
            if not entries:
                heapq.heappop(keys)
                del lists[bucket]
            break  # the next bucket starts after ``upto``
        return out


class JoinStore:
    """The join's state and its changes (see module docstring)."""

    def __init__(self, label_window_ms: int, done_after_ms: int) -> None:
        """``done_after_ms``: how long after its request's time a done marker is kept."""
        self.pending: dict[str, PendingRequest] = {}
        self.early: dict[str, list[EarlyFeedback]] = {}
        self.done = DoneMarkers(done_after_ms)
        self._window = label_window_ms
        self._deadlines = TimeIndex()     # (r.ts + window, id) of pending requests
        self._ready = TimeIndex()         # regression: (earliest candidate ts, id)
        self._early_expiry = TimeIndex()  # (f.ts, id)
        self._dirty: dict[tuple[str, str], int] = {}  # (kind, id) -> partition

    @property
    def has_changes(self) -> bool:
        """Whether state changed since the last ``take_dirty``."""
        return bool(self._dirty)

    def take_dirty(self) -> list[tuple[str, str, int, Any]]:
        """Return and clear the changed keys: ``[(kind, key, partition, json or None)]``.

        ``kind`` is ``REQUEST`` (value: a pending request's dict, a done marker's list,
        or None once both are gone) or ``EARLY`` (a list of early feedback, or None).
        """
        dirty, self._dirty = self._dirty, {}
        pending, done, early = self.pending.get, self.done.json_of, self.early.get
        result = []
        append = result.append
        for (kind, key), partition in dirty.items():
            if kind == REQUEST:
                v = pending(key)
                if v is not None:
                    append((kind, key, partition, v.to_json()))
                else:
                    append((kind, key, partition, done(key)))
            else:
                v = early(key)
                append((kind, key, partition, [e.to_json() for e in v] if v else None))
        return result

    def restore(self, kind: str, key: str, value: Any) -> None:
        """Load one persisted entry (after a restart); rebuilds the time indexes.

        ``REQUEST`` entries hold a pending request (dict) or a done marker (list).
        """
        if kind == REQUEST and isinstance(value, dict):
            p = PendingRequest.from_json(key, value)
            self.pending[key] = p
            self._deadlines.push(p.ts + self._window, key)
            if p.candidates:
                self._ready.push(min(c[0] for c in p.candidates), key)
        elif kind == EARLY:
            entries = [EarlyFeedback.from_json(v) for v in value]
            self.early[key] = entries
            for e in entries:
                self._early_expiry.push(e.ts, key)
        elif kind == REQUEST:
            self.done.put(key, DoneMarker.from_json(value))

    def forget_done_markers(self, closed: int) -> None:
        """Drop the done markers past their dedupe retention at closed time ``closed``
        (each is a deletion in the table)."""
        for rid, partition in self.done.expire(closed):
            self._dirty[(REQUEST, rid)] = partition

    def _mark(self, kind: str, key: str, partition: int) -> None:
        self._dirty[(kind, key)] = partition
