"""Memory of the join's pending requests, in process (no broker, no Faust, no store).

Feeds N simulated CTR requests (unique ids, all at the same event time, so none is
finalized) through ``JoinProcessor`` in batches of 5,000, writing the dirty state after
each batch as the worker does, and prints the RSS growth per pending request. With
``--finalized`` it instead loads N done markers (as a restarted worker loads them from
the changelog: what the worker keeps for every request finalized in the last
``join.dedupe_retention``) and prints the RSS growth per done marker.

    python benchmarks/bench_state_memory.py --requests 1000000
    python benchmarks/bench_state_memory.py --requests 1000000 --finalized
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas.config import load_config  # noqa: E402
from schemas.pii import PiiHasher  # noqa: E402
from streams.dev.simulate import generate  # noqa: E402
from streams.join.join_state import REQUEST  # noqa: E402
from streams.join.processor import InputRecord, JoinProcessor  # noqa: E402


def rss_mib() -> float:
    """Resident set size of this process (Linux)."""
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--finalized", action="store_true",
                    help="finalize the requests and measure their done markers")
    args = ap.parse_args()
    cfg = load_config(ROOT / "examples/ctr.yaml", environ={"DLABEL_PII_KEY": "k" * 32})
    cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, copartitioned=True),
                              topics=dataclasses.replace(cfg.topics, partitions=1))
    shapes = [orjson.loads(e.value) for e in generate(cfg, "ctr", 20_000, 1, bad_fraction=0.0,
                                                      duplicate_fraction=0.0,
                                                      orphan_fraction=0.0)
              if e.role == "requests"]
    proc = JoinProcessor(cfg, PiiHasher(b"k" * 32), clock=lambda: 0)
    if args.finalized:
        return done_markers(proc, args.requests)
    gc.collect()
    base = rss_mib()
    n = args.requests
    for start in range(0, n, 5000):
        batch = []
        for i in range(start, min(n, start + 5000)):
            d = dict(shapes[i % len(shapes)], request_id=f"{i:032x}", ts=1_795_000_000_000)
            batch.append(InputRecord(i, orjson.dumps(d)))
        proc.process("requests", 0, batch)
        proc.join.take_dirty()
    gc.collect()
    grown = rss_mib() - base
    print(f"pending={len(proc.join.pending):,} rss_growth_mib={grown:.0f} "
          f"bytes_per_pending_request={grown * 2 ** 20 / n:.0f} total_rss_mib={rss_mib():.0f}")


def done_markers(proc: JoinProcessor, n: int) -> None:
    """RSS growth per done marker, loaded as the changelog holds them (a negative label
    at the deadline, positions as the repartition hop makes them)."""
    gc.collect()
    base = rss_mib()
    t0 = 1_795_000_000_000
    for i in range(n):
        ts = t0 + i
        proc.join.restore(REQUEST, f"{i:032x}", [ts, i % 4, ((i % 4) << 40) | i, 0, ts + 1_800_000])
    gc.collect()
    grown = rss_mib() - base
    print(f"done_markers={len(proc.join.done):,} rss_growth_mib={grown:.0f} "
          f"bytes_per_done_marker={grown * 2 ** 20 / n:.0f} total_rss_mib={rss_mib():.0f}")

if __name__ == "__main__":
    main()
