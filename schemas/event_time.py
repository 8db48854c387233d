"""Event times: ISO-8601 with a zone, or an integer epoch, to integer epoch milliseconds.

On the hot path (each event's time is read by the hop and again by the join): a bounded
cache of the ISO texts parsed lately makes the second read a dict lookup.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from schemas.errors import EventError, short_repr

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
MIN_TS_MS = -62_135_596_800_000  # 0001-01-01T00:00:00Z
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z

#: ISO-8601 event times parsed lately (text -> epoch ms, in range): with the repartition
#: hop each event's time is read twice, by the hop and then by the join (~1.4 us each);
#: the second read is a dict lookup. Emptied when full (~150 bytes an entry).
ISO_SEEN_SIZE = 32_768
_ISO_SEEN: dict[str, int] = {}


def parse_event_time(value: Any, field: str = "ts", unit: str = "ms") -> int:
    """Parse an event time (ISO-8601 with a zone, or an integer epoch in ``unit``) to epoch ms.

    ``unit`` (s, ms or us) applies to numbers only: seconds may have a fraction
    (truncated to the millisecond, exactly as written), ms and us must be whole.
    A zone-less time, a bool, a non-finite number, a fractional ms or us, a time
    outside years 1-9999 or anything else raises ``EventError('bad_timestamp', ...)``.
    """
    kind = type(value)
    if kind is int and unit == "ms":
        ms = value
    elif kind is str:
        ms = _ISO_SEEN.get(value)
        if ms is not None:
            return ms
        text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise EventError("bad_timestamp", f"{field}: {short_repr(value)} is not an ISO-8601 "
                                              "time; write e.g. 2026-11-27T10:00:00Z") from None
        if dt.tzinfo is None:  # else a fixed offset: fromisoformat makes only those
            raise EventError("bad_timestamp", f"{field}: {short_repr(value)} has no zone; "
                                              "add Z or an offset like +01:00")
        ms = (dt - _EPOCH) // _MS  # floored, also before 1970
        if MIN_TS_MS <= ms <= MAX_TS_MS:
            if len(_ISO_SEEN) >= ISO_SEEN_SIZE:
                _ISO_SEEN.clear()
            _ISO_SEEN[value] = ms
    elif kind is int or (kind is float and value - value == 0.0
                         and (unit == "s" or value.is_integer())):
        ms = _epoch_to_ms(value, unit, field)
    elif kind is Decimal and unit == "s" and value.is_finite():
        ms = _epoch_to_ms(value, unit, field)
    else:
        what = {"s": "epoch seconds", "ms": "integer epoch milliseconds",
                "us": "integer epoch microseconds"}[unit]
        raise EventError("bad_timestamp", f"{field}: {short_repr(value)} is not an ISO-8601 time "
                                          f"with a zone or {what}")
    if not MIN_TS_MS <= ms <= MAX_TS_MS:
        raise EventError("bad_timestamp", f"{field}: {short_repr(value)} is outside years 1-9999")
    return ms


def _epoch_to_ms(value: int | float | Decimal, unit: str, field: str) -> int:
    if unit == "us":
        return int(value) // 1000
    if unit == "ms":
        return int(value)
    if type(value) is int:
        return value * 1000
    # the decimal as written (a Decimal from the raw JSON, or the float's shortest
    # exact form): 0.123 s is 123 ms, not 122
    try:
        return math.floor((value if type(value) is Decimal else Decimal(repr(value))) * 1000)
    except (ArithmeticError, ValueError):
        raise EventError("bad_timestamp", f"{field}: {short_repr(value)} is outside years "
                                          "1-9999") from None
