"""Event-time watermark over the input partitions, with idle detection.

The watermark is the minimum, over the input partitions that count, of the largest
event time seen on each (Flink's per-partition watermark). Reading one topic ahead of
the other therefore never moves it past the slower one. A partition stops counting
once it is caught up with its end and has been quiet for ``idle_timeout_ms`` of
(injected) clock time, so a quiet partition does not hold finalization back forever.
When every partition is idle, event time is taken to advance with the clock from the
moment the last one went quiet: the world did not stop, it just had nothing to say.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

Clock = Callable[[], int]


@dataclass(slots=True)
class _PartitionState:
    max_ts: Optional[int] = None
    last_active: int = 0
    caught_up: bool = True


class WatermarkTracker:
    """Tracks per-partition event time and computes a monotonic watermark."""

    def __init__(self, idle_timeout_ms: int, clock: Clock) -> None:
        self.idle_timeout_ms = idle_timeout_ms
        self.clock = clock
        self._parts: dict[tuple[str, int], _PartitionState] = {}
        self._watermark: Optional[int] = None

    def assign(self, partitions: Iterable[tuple[str, int]]) -> None:
        """Start tracking these (role, partition) inputs; an unseen one is not idle yet."""
        now = self.clock()
        for key in partitions:
            self._parts.setdefault(key, _PartitionState(last_active=now))

    def observe(self, role: str, partition: int, ts: int) -> None:
        """Record an event time seen on an input."""
        state = self._parts.get((role, partition))
        if state is None:
            state = self._parts[(role, partition)] = _PartitionState()
        if state.max_ts is None or ts > state.max_ts:
            state.max_ts = ts
        state.last_active = self.clock()

    def touch(self, role: str, partition: int) -> None:
        """Record activity (any record, even invalid) without an event time."""
        state = self._parts.get((role, partition))
        if state is not None:
            state.last_active = self.clock()

    def set_caught_up(self, role: str, partition: int, caught_up: bool) -> None:
        """Say whether the input's position has reached its end (only then can it idle)."""
        state = self._parts.get((role, partition))
        if state is not None:
            state.caught_up = caught_up

    def max_ts(self, role: str, partition: int) -> Optional[int]:
        """The largest event time seen on an input, or None."""
        state = self._parts.get((role, partition))
        return state.max_ts if state else None

    def newest_ts(self) -> Optional[int]:
        """The newest event time seen on any assigned input partition."""
        return max((s.max_ts for s in self._parts.values() if s.max_ts is not None),
                   default=None)

    @property
    def last(self) -> Optional[int]:
        """The watermark as last computed by ``current`` (None before it is bounded)."""
        return self._watermark

    def current(self) -> Optional[int]:
        """The watermark now (monotonic), or None while nothing bounds it yet."""
        now = self.clock()
        active: list[Optional[int]] = []
        seen = [s.max_ts for s in self._parts.values() if s.max_ts is not None]
        last_active = max((s.last_active for s in self._parts.values()), default=now)
        for state in self._parts.values():
            idle = state.caught_up and now - state.last_active >= self.idle_timeout_ms
            if not idle:
                active.append(state.max_ts)
        if active:
            candidate = None if any(t is None for t in active) else min(active)
        elif seen:
            candidate = max(seen) + max(0, now - last_active - self.idle_timeout_ms)
        else:
            candidate = None
        if candidate is not None and (self._watermark is None or candidate > self._watermark):
            self._watermark = candidate
        return self._watermark

    def all_caught_up(self, quiet_ms: int) -> bool:
        """True when every tracked input is at its end and has been quiet for ``quiet_ms``."""
        now = self.clock()
        return all(s.caught_up and now - s.last_active >= quiet_ms
                   for s in self._parts.values())
