"""Figures of the bad-input fuzz run for BENCHMARKS.md (the test asserts; this counts).

    python benchmarks/fuzz_figures.py --events 10800

Draws bad events with the test's own hypothesis strategy, mixes them into the valid
simulated stream at random places, runs everything through the worker's
``JoinProcessor`` and prints events tried, dead letters by reason and crashes.
"""
from __future__ import annotations

import argparse
import random
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import strategies as st  # noqa: E402

from tests.join_cases import drive  # noqa: E402
from tests.test_fuzz import CONFIG, VALID, bad_event  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_800)
    ap.add_argument("--chunk", type=int, default=90)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    rnd = random.Random(1)
    tried, crashes = 0, 0
    reasons: Counter = Counter()
    kinds: Counter = Counter()
    while tried < args.events:
        bad = st.lists(bad_event(), min_size=args.chunk, max_size=args.chunk).example()
        arrivals = [(e.role, e.value) for e in VALID]
        for role, raw, _ in bad:
            arrivals.insert(rnd.randint(0, len(arrivals)), (role, raw))
        bad_bytes = {raw for _, raw, _ in bad}
        try:
            run = drive(CONFIG, arrivals)
        except Exception as e:  # noqa: BLE001 - counting crashes is the point
            crashes += 1
            print("crash:", type(e).__name__, e)
            continue
        tried += len(bad)
        reasons.update(d["reason"] for d in run.dead if d["original"] in bad_bytes)
        kinds.update(r for _, _, r in bad)
    print(f"bad events tried: {tried}; crashes: {crashes}")
    print("dead-lettered by reason: " + ", ".join(f"{k} {v}" for k, v in reasons.most_common()))


if __name__ == "__main__":
    main()
