"""Join worker throughput vs the raw-client ceiling, on the embedded broker.

    python benchmarks/bench_join.py --requests 200000 --runs 3

For each run, on the same freshly produced topics: the raw aiokafka consume rate of
the requests and feedback topics (getmany + json.loads: the ceiling), then the join
worker (`dlabel worker --drain` as a child process) over the same data; their ratio is
taken side by side in the run. Also: the pandas oracle time, the worker's peak RSS, and
the memory of pending requests held by the join. Medians over runs are printed as a
Markdown table for BENCHMARKS.md. Timing is not asserted anywhere.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from schemas.pii import PiiHasher  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.dev.simulate import generate, produce  # noqa: E402
from streams.kafka.tansu_quirks import fetch_end_offsets  # noqa: E402
from tests.oracle import oracle_labels  # noqa: E402
from tests.pipeline_runs import PII_KEY, load, write_pipeline  # noqa: E402


async def raw_consume(bootstrap: str, topics: list[str]) -> tuple[int, float]:
    """Read every record of ``topics`` with getmany + json.loads; (count, seconds)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, max_partition_fetch_bytes=4 << 20,
                                fetch_max_bytes=16 << 20)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t)]
        ends = await fetch_end_offsets(bootstrap, tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total, n = sum(ends.values()), 0
        t0 = time.perf_counter()
        while n < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for r in records:
                    try:
                        json.loads(r.value)
                    except ValueError:
                        pass
                n += sum(len(v) for v in batches.values())
        return n, time.perf_counter() - t0
    finally:
        await consumer.stop()


def run_worker(config_path: Path, log: Path) -> tuple[dict, float]:
    """`dlabel worker --drain` in a child; (summary, peak RSS MiB of the child).

    The summary gets ``seconds``: where the worker's batch loop spent its time.
    """
    stats = log.with_suffix(".stats.json")
    env = {**os.environ, "DLABEL_PII_KEY": PII_KEY, "DLABEL_WORKER_STATS": str(stats)}
    with open(log, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "streams.cli", "worker", "-c",
                               str(config_path), "--drain", "--batch-size", "5000"],
                              stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    text = log.read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode}):\n" + "\n".join(text[-30:]))
    last = text[-1]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary = json.loads(last[last.index("{"):])
    if stats.exists():
        summary["seconds"] = json.loads(stats.read_text())["seconds"]
    return summary, rss


def pending_worker_rss(broker, tmp: Path, n: int, store: str) -> dict:
    """RSS of a running worker (no --drain) holding ``n`` pending requests in ``store``.

    ``n`` requests without feedback, all inside one label window, so none is finalized;
    the worker runs until its committed offsets reach the ends of both inputs, then its
    RSS is read from /proc and it is stopped.
    """
    from kafka import KafkaAdminClient
    from tests.pipeline_runs import start_worker
    work = tmp / f"pending-{store}"
    work.mkdir()
    path = write_pipeline(work, "ctr", broker.url, f"pend{store}{os.getpid()}",
                          partitions=4, store=store)
    cfg = load(path)
    span_ms = cfg.join.label_window_ms // 2  # every request stays pending
    events = [e for e in generate(cfg, "ctr", n, seed=1, rate_per_s=n * 1000 / span_ms,
                                  bad_fraction=0, duplicate_fraction=0, orphan_fraction=0,
                                  early_fraction=0) if e.role == "requests"]
    produce(broker.bootstrap, cfg, events)
    del events
    gc.collect()
    tps = [TopicPartition(t, p) for t in (cfg.topics.requests, cfg.topics.feedback)
           for p in range(cfg.topics.partitions)]
    ends = asyncio.run(fetch_end_offsets(broker.bootstrap, tps))
    proc = start_worker(path, work / "worker.log")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    t0 = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"worker exited {proc.returncode}; see {work / 'worker.log'}")
            group = f"dlabel-{cfg.pipeline}"
            offsets = {tuple(tp): meta.offset for tp, meta in
                       admin.list_group_offsets({group: None}).get(group, {}).items()}
            done = all(offsets.get(tuple(tp), 0) >= end for tp, end in ends.items())
            if done:
                break
            time.sleep(1)
        seconds = time.monotonic() - t0
        time.sleep(2)
        with open(f"/proc/{proc.pid}/status") as f:
            status = {line.split(":")[0]: line.split()[1] for line in f if line.split()[1:]}
        return {"store": store, "pending": n, "rss_mib": int(status["VmRSS"]) / 1024,
                "peak_rss_mib": int(status["VmHWM"]) / 1024, "seconds_to_consume": seconds}
    finally:
        admin.close()
        proc.kill()
        proc.wait()


def pending_memory(config, n: int) -> float:
    """MiB per million pending requests held by the in-memory join."""
    from schemas.events import Request
    from streams.join.event_time_join import EventTimeJoin
    from streams.join.join_state import Source
    gc.collect()
    before = _rss_mib()
    join = EventTimeJoin(config)
    for i in range(n):
        join.on_request(Request(f"{i:032x}", 1_795_000_000_000 + i,
                                {"hour": 10, "category": "shoes", "price": 12.5,
                                 "user_email": "ab" * 32}, 0.25, "v1"),
                        Source("requests", 0, i), b"")
    after = _rss_mib()
    assert len(join.pending) == n
    return (after - before) * 1_000_000 / n


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--pending-rss", choices=["memory", "rocksdb"], action="append",
                    help="only measure the RSS of a worker holding --pending pending "
                         "requests with this store (repeatable)")
    args = ap.parse_args()
    rows = []
    if args.pending_rss:
        with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
            broker.start()
            for store in args.pending_rss:
                print(json.dumps(pending_worker_rss(broker, Path(tmp), args.pending, store)),
                      flush=True)
        return
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        broker.start()
        for run in range(args.runs):
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            path = write_pipeline(work, "ctr", broker.url, f"bench{run}-{os.getpid()}",
                                  partitions=args.partitions)
            cfg = load(path)
            events = generate(cfg, "ctr", args.requests, seed=run + 1)
            produce(broker.bootstrap, cfg, events)
            n_raw, s_raw = asyncio.run(raw_consume(broker.bootstrap,
                                                   [cfg.topics.requests, cfg.topics.feedback]))
            summary, rss = run_worker(path, work / "worker.log")
            n_join = summary["requests"] + summary["feedback"]
            t0 = time.perf_counter()
            oracle_labels(cfg, [e.value for e in events if e.role == "requests"],
                          [e.value for e in events if e.role == "feedback"],
                          PiiHasher(PII_KEY.encode()))
            s_oracle = time.perf_counter() - t0
            row = {"events": n_join, "raw_eps": n_raw / s_raw,
                   "join_eps": n_join / summary["busy_seconds"],
                   "oracle_s": s_oracle, "worker_peak_rss_mib": rss,
                   "labeled": summary["labeled_sent"]}
            row["ratio"] = row["join_eps"] / row["raw_eps"]
            rows.append(row)
            print(json.dumps({"run": run, **{k: round(v, 3) for k, v in row.items()},
                              "busy_s": summary["busy_seconds"],
                              "steps_s": {k: round(v, 2) for k, v in
                                          summary.get("seconds", {}).items()}}), flush=True)
        mem = pending_memory(cfg, args.pending)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\n| metric (median of {len(rows)} runs, {args.requests} requests, "
          f"{args.partitions} partitions) | value |\n|---|---|")
    print(f"| events per run (requests + feedback) | {med['events']:.0f} |")
    print(f"| raw aiokafka getmany + json.loads (ceiling) | {med['raw_eps']:,.0f} ev/s |")
    print(f"| dlabel join worker | {med['join_eps']:,.0f} ev/s |")
    print(f"| ratio join / ceiling (per run, then median) | {med['ratio']:.3f} |")
    print(f"| pandas oracle, same events | {med['oracle_s']:.2f} s |")
    print(f"| worker peak RSS | {med['worker_peak_rss_mib']:.0f} MiB |")
    print(f"| join memory per 1M pending requests (in-process) | {mem:,.0f} MiB |")


if __name__ == "__main__":
    main()
