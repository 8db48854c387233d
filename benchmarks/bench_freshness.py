"""Label freshness under load: a click's positive label on the labeled topic, how soon.

    python benchmarks/bench_freshness.py --engine both --rate 500 --rate 2000 --rate 5000

Per engine (the embedded Tansu broker: at least once; Apache Kafka from the cached jars:
exactly once, the default guarantee there) and per rate, on fresh topics (4 partitions,
the ctr example pipeline): `dlabel worker --only join` starts and, once it reads its
inputs, a live stream is produced for ``--warmup-s`` + ``--seconds``: requests at the
rate, event time = the wall clock; a ``--click-fraction`` of them get a click 0.2-2 s
(uniform) after the request, sent when it is due with event time = its send time.
Every 5 ms what is due goes out as one hand-built aiokafka batch per partition, keyed
by request id (murmur2, as the Java clients). A ``read_committed`` consumer reads the
labeled topic. Per click sent after the warm-up, the latency is

- ``create``: from the click's send (wall clock just before ``send``) to the labeled
  record's timestamp (its create time, set by the worker's producer), and
- ``visible``: to the moment this benchmark's consumer received it (under exactly once:
  after the worker's transaction committed).

p50/p99/max over the clicks; a click whose label did not come within ``--grace-s``
after the stream ended is counted as missing. ``--runs`` repeats everything; the table
gives medians over the runs. Load average, the worker's CPU seconds and its batch
loop's figures (batches, input records per batch, seconds per step: ``DLABEL_WORKER_STATS``)
per run are printed with the rows. Nothing is asserted; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from streams.join.faust_adapter import changelog_topic  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.kafka_broker import SERVER_JVM_OPTIONS, KafkaBroker  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402
from tests.pipeline_runs import PII_KEY, load, write_pipeline  # noqa: E402
from tests.soak_run import click_value, request_value, send_batches  # noqa: E402



def start_worker(config_path: Path, log_path: Path, extra: list[str],
                 stats: Path) -> subprocess.Popen:
    env = {**os.environ, "DLABEL_PII_KEY": PII_KEY, "PYTHONUNBUFFERED": "1",
           "DLABEL_WORKER_STATS": str(stats)}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "-v", "worker", "-c",
                                 str(config_path), "--only", "join", *extra],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)


def stop_worker(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def read_stats(path: Path) -> dict:
    """The worker's batch-loop figures (``DLABEL_WORKER_STATS``, rewritten every 5 s)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def wait_reading(log_path: Path, proc: subprocess.Popen, timeout_s: float) -> float:
    """Seconds until the worker logs that it reads its inputs."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}; see {log_path}")
        if "reading inputs from" in log_path.read_text(errors="replace"):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise SystemExit(f"worker not reading after {timeout_s} s; see {log_path}")


async def live_stream(bootstrap: str, cfg, rate: float, seconds: float, warmup_s: float,
                      click_fraction: float, grace_s: float, seed: int) -> dict:
    """Produce the stream and read the labeled topic; the latencies of measured clicks."""
    rnd = random.Random(seed)
    topics = cfg.topics
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, client_id="bench-freshness")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, isolation_level="read_committed",
                                fetch_max_wait_ms=20, auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    tps = [TopicPartition(topics.labeled, p) for p in range(topics.partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    sent_at: dict[str, float] = {}      # click's request id -> send time (s, wall clock)
    measured: set[str] = set()
    create_ms: dict[str, float] = {}
    visible_ms: dict[str, float] = {}
    done = asyncio.Event()

    async def read_labels() -> None:
        while not done.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time()
            for records in batch.values():
                for rec in records:
                    ex = orjson.loads(rec.value)
                    rid = ex["request_id"]
                    if ex.get("label") == 1 and rid in sent_at and rid not in create_ms:
                        create_ms[rid] = rec.timestamp - sent_at[rid] * 1000
                        visible_ms[rid] = (now - sent_at[rid]) * 1000

    reader = asyncio.ensure_future(read_labels())
    clicks: list[tuple[float, str]] = []
    t_start = time.time()
    t_measure = t_start + warmup_s
    t_end = t_measure + seconds
    n_req = 0
    pending = []
    parts = topics.partitions

    async def send(topic: str, records: list) -> None:
        pending.extend(await send_batches(producer, topic, records, parts))

    try:
        while True:
            now = time.time()
            if now >= t_end and not clicks:
                break
            due = int((min(now, t_end) - t_start) * rate)
            ts = int(now * 1000)
            requests = []
            while n_req < due:
                rid = f"r{seed}-{n_req}"
                n_req += 1
                requests.append((rid.encode(), request_value(rid, ts, rnd)))
                if rnd.random() < click_fraction:
                    heapq.heappush(clicks, (now + rnd.uniform(0.2, 2.0), rid))
            if requests:
                await send(topics.requests, requests)
            due_clicks = []
            sent = time.time()
            while clicks and clicks[0][0] <= sent:
                _, rid = heapq.heappop(clicks)
                sent_at[rid] = sent
                if sent >= t_measure:
                    measured.add(rid)
                due_clicks.append((rid.encode(), click_value(rid, int(sent * 1000))))
            if due_clicks:
                await send(topics.feedback, due_clicks)
            if len(pending) > 200:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
        deadline = time.time() + grace_s
        while time.time() < deadline and not measured <= create_ms.keys():
            await asyncio.sleep(0.2)
    finally:
        done.set()
        await reader
        await producer.stop()
        await consumer.stop()
    got = [rid for rid in measured if rid in create_ms]
    return {"requests": n_req, "clicks_measured": len(measured), "labels": len(got),
            "missing": len(measured) - len(got),
            "create_ms": sorted(create_ms[r] for r in got),
            "visible_ms": sorted(visible_ms[r] for r in got)}


def pct(sorted_vals: list, q: float):
    if not sorted_vals:
        return None
    return round(sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))], 1)


def one_run(engine: str, broker, rate: float, run: int, args, tmp: Path) -> dict:
    work = tmp / f"{engine}-{int(rate)}-{run}"
    work.mkdir()
    name = f"fr{engine[0]}{os.getpid()}r{int(rate)}n{run}"
    path = write_pipeline(work, "ctr", broker.url, name, partitions=4)
    cfg = load(path)
    ensure_topics(broker.bootstrap, cfg, compacted=[changelog_topic(cfg)])
    log_path = work / "worker.log"
    stats_path = work / "stats.json"
    proc = start_worker(path, log_path, args.worker_arg or [], stats_path)
    try:
        ready_s = wait_reading(log_path, proc, 120)
        load1 = os.getloadavg()[0]
        cpu0 = cpu_seconds(proc.pid)
        stats0 = read_stats(stats_path)
        res = asyncio.run(live_stream(broker.bootstrap, cfg, rate, args.seconds, args.warmup_s,
                                      args.click_fraction, args.grace_s, seed=run + 1))
        cpu = cpu_seconds(proc.pid) - cpu0
        time.sleep(5.5)  # the worker rewrites its stats every 5 s
        stats1 = read_stats(stats_path)
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}; see {log_path}")
    finally:
        stop_worker(proc)
        if args.keep_logs:
            dest = Path(args.keep_logs) / f"{work.name}-worker.log"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(log_path.read_bytes())
    c, v = res.pop("create_ms"), res.pop("visible_ms")
    batches = stats1.get("batches", 0) - stats0.get("batches", 0)
    steps = {k: round(t - stats0.get("seconds", {}).get(k, 0.0), 2)
             for k, t in stats1.get("seconds", {}).items()}
    res["batches"] = batches
    res["records_per_batch"] = round(
        (stats1.get("records", 0) - stats0.get("records", 0)) / max(batches, 1), 1)
    res["steps_s"] = steps
    res["topped_up"] = stats1.get("topped_up", 0) - stats0.get("topped_up", 0)
    return {"engine": engine, "rate": rate, "run": run, "ready_s": round(ready_s, 2), **res,
            "create_p50_ms": pct(c, 0.5), "create_p99_ms": pct(c, 0.99),
            "create_max_ms": pct(c, 1.0), "visible_p50_ms": pct(v, 0.5),
            "visible_p99_ms": pct(v, 0.99), "visible_max_ms": pct(v, 1.0),
            "worker_cpu_s": round(cpu, 1), "worker_cpu_share": round(
                cpu / (args.seconds + args.warmup_s), 2), "load1": round(load1, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["kafka", "tansu", "both"], default="both")
    ap.add_argument("--rate", type=float, action="append",
                    help="requests/s (repeatable; default 500, 2000, 5000)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured stream length")
    ap.add_argument("--warmup-s", type=float, default=5.0)
    ap.add_argument("--click-fraction", type=float, default=0.1)
    ap.add_argument("--grace-s", type=float, default=15.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep-logs")
    ap.add_argument("--worker-arg", action="append",
                    help="extra argument for `dlabel worker` (repeatable)")
    args = ap.parse_args()
    rates = args.rate or [500.0, 2000.0, 5000.0]
    engines = ["kafka", "tansu"] if args.engine == "both" else [args.engine]
    print(f"# load average at start: {os.getloadavg()}", flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            broker = (KafkaBroker(heap="1g", jvm_options=SERVER_JVM_OPTIONS)
                      if engine == "kafka" else EmbeddedBroker())
            with broker:
                for run in range(args.runs):
                    for rate in rates:
                        try:
                            row = one_run(engine, broker, rate, run, args, Path(tmp))
                        except SystemExit as e:
                            row = {"engine": engine, "rate": rate, "run": run, "error": str(e)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    print(f"# load average at the end: {os.getloadavg()}", flush=True)
    print("\n| broker | guarantee | requests/s | clicks measured (median) | missing | "
          "create p50 ms | create p99 ms | visible p50 ms | visible p99 ms | worker CPU share |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for engine in engines:
        for rate in rates:
            ok = [r for r in rows if r["engine"] == engine and r["rate"] == rate
                  and "error" not in r]
            if not ok:
                continue

            def med(key):
                vals = [r[key] for r in ok if r.get(key) is not None]
                return round(statistics.median(vals), 1) if vals else "-"
            guarantee = "exactly once" if engine == "kafka" else "at least once"
            print(f"| {engine} | {guarantee} | {rate:,.0f} | {med('clicks_measured')} | "
                  f"{sum(r['missing'] for r in ok)} | {med('create_p50_ms')} | "
                  f"**{med('create_p99_ms')}** | {med('visible_p50_ms')} | "
                  f"{med('visible_p99_ms')} | {med('worker_cpu_share')} |")


if __name__ == "__main__":
    main()
