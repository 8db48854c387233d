"""The dataset sink's view of the join's closed time (see ``schemas.closed_time_report``)."""
from __future__ import annotations

from typing import Iterable, Mapping, Optional

from schemas.closed_time_report import DRAINED


class SinkClosedTime:
    """The sink's view of the join's closed time, from reports and its own read positions."""

    def __init__(self, inputs: Iterable[str]) -> None:
        self.inputs = list(inputs)
        self._trusted: dict[str, int] = {}
        self._waiting: dict[str, list[tuple[int, dict[int, int]]]] = {}

    def report(self, input_name: str, closed: int, labeled_ends: Mapping[int, int]) -> None:
        """Take one report (it becomes trusted once ``positions`` pass its ends)."""
        if closed <= self._trusted.get(input_name, -DRAINED):
            return
        self._waiting.setdefault(input_name, []).append((closed, dict(labeled_ends)))

    def update(self, positions: Mapping[int, int]) -> None:
        """Trust every waiting report whose ``labeled_ends`` the sink has read past.

        ``positions`` maps a labeled partition to the next offset the sink will read.
        """
        for name, waiting in list(self._waiting.items()):
            keep = []
            for closed, ends in waiting:
                if all(positions.get(p, 0) >= o for p, o in ends.items()):
                    if closed > self._trusted.get(name, -DRAINED):
                        self._trusted[name] = closed
                else:
                    keep.append((closed, ends))
            if keep:
                self._waiting[name] = keep
            else:
                del self._waiting[name]

    def current(self) -> Optional[int]:
        """The closed time every input has reached, or None while one never reported."""
        if any(name not in self._trusted for name in self.inputs):
            return None
        return min(self._trusted[name] for name in self.inputs)
