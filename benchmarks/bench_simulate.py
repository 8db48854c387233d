"""Simulator throughput: generate CTR events, then produce them to the embedded broker.

    python benchmarks/bench_simulate.py --requests 50000 --runs 3

Per run, on fresh topics of one embedded Tansu broker: ``generate`` (the events of
``--requests`` requests, with their feedback and the messy cases, in arrival order)
and ``produce`` (aiokafka, hand-built batches, acks=all, every record acknowledged
when it returns; topic creation is not timed), each timed on its own and together.
Prints the per-run JSON lines and a Markdown table of the medians for BENCHMARKS.md.
Nothing is asserted (a test used to require 50,000 requests generated in under 5 s;
that figure now lives in BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.dev.simulate import generate, produce  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402
from tests.pipeline_runs import load, write_pipeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--scenario", choices=["ctr", "airport"], default="ctr")
    args = ap.parse_args()
    print(f"# load average at start: {os.getloadavg()}", flush=True)
    rows = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            path = write_pipeline(work, args.scenario, broker.url, f"sim{run}-{os.getpid()}",
                                  partitions=args.partitions)
            cfg = load(path)
            ensure_topics(broker.bootstrap, cfg)
            t0 = time.perf_counter()
            events = generate(cfg, args.scenario, args.requests, seed=run + 1)
            t1 = time.perf_counter()
            n = produce(broker.bootstrap, cfg, events, ensure=False)
            t2 = time.perf_counter()
            row = {"events": n, "generate_s": t1 - t0, "produce_s": t2 - t1,
                   "total_s": t2 - t0, "generate_eps": n / (t1 - t0),
                   "produce_eps": n / (t2 - t1), "total_eps": n / (t2 - t0),
                   "load1": os.getloadavg()[0]}
            rows.append(row)
            print(json.dumps({"run": run, **{k: round(v, 3) for k, v in row.items()}}),
                  flush=True)
            del events
    print(f"# load average at the end: {os.getloadavg()}", flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\n{args.scenario}, {args.requests:,} requests, {args.partitions} partitions, "
          f"embedded Tansu broker, median of {args.runs} runs\n")
    print("| step | seconds | events/s |\n|---|---|---|")
    print(f"| generate ({med['events']:,.0f} events) | {med['generate_s']:.2f} | "
          f"{med['generate_eps']:,.0f} |")
    print(f"| produce (acks=all, all acked) | {med['produce_s']:.2f} | "
          f"{med['produce_eps']:,.0f} |")
    print(f"| generate + produce | {med['total_s']:.2f} | {med['total_eps']:,.0f} |")


if __name__ == "__main__":
    main()
