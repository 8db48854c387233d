"""Where the batch loop's time went and how large the join's state is, for benchmarks.

With ``DLABEL_WORKER_STATS`` set to a path, the worker rewrites that file every 5 s and
at the end of a drain (``benchmarks/`` poll it).
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping, Optional

#: the environment variable naming the stats file
STATS_ENV = "DLABEL_WORKER_STATS"


def write_stats(path: Optional[str], proc, seconds: Mapping[str, float], batches: int,
                sent_labeled: int, topped_up: int) -> None:
    """Write the stats file ``path`` (nothing if None or empty): the loop's ``seconds``
    per step and counters, and the state of ``proc`` (the ``JoinProcessor``)."""
    if path:
        join = proc.join
        tmp = f"{path}.tmp"  # readers poll the file: never show them half of it
        with open(tmp, "w") as f:
            json.dump({"seconds": dict(seconds), "batches": batches,
                       "records": sum(proc.records_in.values()),
                       "state": {"pending": len(join.pending), "done": len(join.done),
                                 "early": len(join.early)},
                       "labeled_sent": sent_labeled, "topped_up": topped_up,
                       "at": time.time()}, f)
        os.replace(tmp, path)


def stats_path() -> Optional[str]:
    """The stats file's path, if the environment asks for one."""
    return os.environ.get(STATS_ENV)
