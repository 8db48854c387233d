"""Soak: the join worker's RSS over a long steady-rate live stream.

    python benchmarks/bench_soak.py --rate 1000 --minutes 30 [--engine kafka] [--oracle]

One run of ``tests/soak_run.py``: `dlabel worker --only join` on fresh topics of the ctr
example pipeline, a live stream of ``--rate`` requests/s (10% clicked 0.2-2 s later)
for ``--minutes``, the worker's RSS and join state sampled every ``--sample-s``. Event
time runs ``--speedup`` times the wall clock (default: fast enough that the join's 24 h
dedupe retention turns over within 40% of the soak; ``--speedup 1`` shows the growth
a real-time stream has for its first 24 hours). Prints a JSON line per sample, then a
summary table (one row per tenth of the soak) and the halves' maxima; with
``--oracle`` the labels are compared with the oracle after a drain. Nothing is
asserted except the oracle; ``tests/test_soak.py`` asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.kafka_broker import SERVER_JVM_OPTIONS, KafkaBroker  # noqa: E402
from tests.pipeline_runs import PII_KEY, load, run_drain  # noqa: E402
from tests.soak_run import labeled_by_id, run_soak, speedup_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["tansu", "kafka"], default="tansu")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests/s")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--speedup", type=int, help="event time / wall clock (default: auto)")
    ap.add_argument("--oracle", action="store_true",
                    help="drain, then compare the labeled topic with the oracle")
    ap.add_argument("--out", help="also write the samples here (JSON lines)")
    args = ap.parse_args()
    seconds = args.minutes * 60
    speedup = args.speedup or speedup_for(seconds)
    print(f"# load average at start: {os.getloadavg()}; speedup {speedup}", flush=True)
    out = open(args.out, "w") if args.out else None

    def on_sample(row: dict) -> None:
        row["load1"] = round(os.getloadavg()[0], 2)
        print(json.dumps(row), flush=True)
        if out:
            out.write(json.dumps(row) + "\n")
            out.flush()

    t0 = time.monotonic()
    broker = (KafkaBroker(heap="1g", jvm_options=SERVER_JVM_OPTIONS)
              if args.engine == "kafka" else EmbeddedBroker())
    with broker, tempfile.TemporaryDirectory() as tmp:
        name = f"soak{os.getpid()}"
        soak, path = run_soak(broker.bootstrap, broker.url, Path(tmp), name, args.rate,
                              seconds, args.sample_s, speedup, keep_events=args.oracle,
                              on_sample=on_sample)
        print(f"# stream done after {time.monotonic() - t0:.0f} s: {soak.sent_requests} "
              f"requests, {soak.sent_clicks} clicks; load {os.getloadavg()}", flush=True)
        first, second = soak.halves()
        samples = soak.samples
        print("\n| minute | RSS MiB | pending | done markers | early | load1 |")
        print("|---|---|---|---|---|---|")
        step = max(1, len(samples) // 10)
        for s in samples[::step] + [samples[-1]]:
            print(f"| {s['t_s'] / 60:.1f} | {s['rss_mib']:,.0f} | {s['pending'] or 0:,} | "
                  f"{s['done'] or 0:,} | {s['early'] or 0:,} | {s['load1']:.1f} |")
        print(f"\nRSS max: first half {first:,.0f} MiB, second half {second:,.0f} MiB "
              f"({second - first:+,.0f} MiB); speedup {speedup}")
        if args.oracle:
            from tests.oracle import assert_examples_match, expected_examples
            run_drain(path, Path(tmp) / "drain.log", timeout=1800)
            labeled, copies = labeled_by_id(broker.bootstrap, load(path).topics.labeled)
            expected = expected_examples(path, soak.requests, soak.feedback, PII_KEY.encode())
            assert_examples_match(expected, labeled.values())
            assert all(len(set(v)) == 1 for v in copies.values())
            print(f"labels = oracle: {len(expected):,} requests")
    if out:
        out.close()


if __name__ == "__main__":
    main()
