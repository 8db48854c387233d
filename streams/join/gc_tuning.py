"""The worker's garbage collector thresholds."""
from __future__ import annotations

import gc

#: Young-generation threshold of the cyclic garbage collector in the worker.
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Collect cyclic garbage less often than CPython's default (every 700 allocations).

    The worker allocates a few containers per record (parsed JSON, events, outputs),
    and the default thresholds made the collector take ~30% of the in-process join's
    time (41k -> 57k events/s with these, in-process, 100k requests). The join's state
    holds no reference cycles: it is freed by reference counting as before; only
    cyclic garbage (asyncio, aiokafka) waits a little longer.
    """
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), max(middle, 20), old)
