"""A steady-rate soak of the join worker: a live stream for a while, its RSS sampled.

Shared by ``tests/test_soak.py`` (slow-marked: RSS bounded, labels equal to the oracle)
and ``benchmarks/bench_soak.py`` (the figure in BENCHMARKS.md).

``dlabel worker --only join`` runs on fresh topics of the ctr example pipeline while a
producer sends requests at a steady rate and clicks for a fraction of them 0.2-2 s
(wall clock) after their request, keyed by request id. Every ``sample_s`` the worker's
RSS (``/proc``, its process and any children) and its join state sizes
(``DLABEL_WORKER_STATS``) are sampled. At the end the worker is stopped with SIGTERM.

Event time runs ``speedup`` times the wall clock (from the soak's start). The join keeps
a finalized request's id for 24 h of event time past its label deadline, to catch
duplicates: at ``speedup`` 1 its state grows for 24 hours at any steady rate (by design,
not a leak), so a 30-minute soak could show only that growth. Faster event time turns
the whole retention over inside the soak (``speedup_for``), so the state, and a
worker's RSS that does not leak, reach a plateau there.
"""
from __future__ import annotations

import asyncio
import heapq
import json
import math
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import orjson
from aiokafka import AIOKafkaProducer

from streams.join.faust_adapter import changelog_topic
from streams.kafka.partitioner import partition_for
from streams.kafka.topics import ensure_topics
from tests.pipeline_runs import load, worker_cmd, worker_env, write_pipeline
from tests.waiting import read_to_end, wait_until

#: Event time the join keeps finalized ids past their deadline (its dedupe retention),
#: plus the ctr example's label window and allowed lateness.
STATE_TURNOVER_MS = (24 * 60 + 30 + 2) * 60 * 1000
CATEGORIES = ("books", "games", "garden", "music", "shoes", "toys")


def speedup_for(seconds: float, within: float = 0.4) -> int:
    """Event-time speed-up that turns the join's state over within ``within`` of a soak."""
    return max(1, math.ceil(STATE_TURNOVER_MS / 1000 / (within * seconds)))


@dataclass
class Soak:
    """What a soak produced and saw."""

    samples: list[dict] = field(default_factory=list)  # t_s, rss_mib, pending, done, early
    requests: list[bytes] = field(default_factory=list)
    feedback: list[bytes] = field(default_factory=list)
    sent_requests: int = 0
    sent_clicks: int = 0
    speedup: int = 1

    def halves(self) -> tuple[float, float]:
        """(max RSS MiB over the first half of the samples, max over the second half)."""
        rss = [s["rss_mib"] for s in self.samples]
        mid = len(rss) // 2
        return max(rss[:mid]), max(rss[mid:])


def process_rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (0 for a process gone)."""
    total = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{p}/task").iterdir():
                kids = (task / "children").read_text().split()
                todo.extend(int(k) for k in kids)
        except (OSError, ValueError):
            continue
    return total / 1024


def read_stats(path: Path) -> dict:
    """The worker's ``DLABEL_WORKER_STATS`` file ({} before its first write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def request_value(rid: str, ts: int, rnd: random.Random) -> bytes:
    return orjson.dumps({"request_id": rid, "ts": ts, "features": {
        "hour": 12, "category": rnd.choice(CATEGORIES), "price": round(rnd.uniform(1, 200), 2),
        "user_email": f"user{rnd.randrange(10_000)}@example.com"},
        "prediction": round(rnd.random(), 4), "model_version": "v1"})


def click_value(rid: str, ts: int) -> bytes:
    return orjson.dumps({"request_id": rid, "ts": ts, "type": "click", "value": None})


async def send_batches(producer: AIOKafkaProducer, topic: str, records: list,
                       partitions: int) -> list:
    """Send ``(key, value)`` records as hand-built batches, one per partition (murmur2 of
    the key); the delivery futures. (A ``send`` per record costs the sender ~60% of a
    core at 5,000 records/s, CPU that a benchmark's worker competes for.)"""
    by_partition: dict[int, list] = {}
    for key, value in records:
        by_partition.setdefault(partition_for(key, partitions), []).append((key, value))
    futures = []
    for partition, recs in by_partition.items():
        batch = producer.create_batch()
        for key, value in recs:
            if batch.append(key=key, value=value, timestamp=None) is None:
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures


async def steady_stream(bootstrap: str, cfg, rate: float, seconds: float, speedup: int,
                        soak: Soak, on_tick: Callable[[float], None],
                        click_fraction: float = 0.1, seed: int = 1,
                        keep_events: bool = True) -> None:
    """Produce requests at ``rate`` for ``seconds`` (and their clicks), into ``soak``.

    Every 5 ms what is due goes out as one batch per partition (murmur2 of the request
    id, as the Java clients). ``on_tick(elapsed_s)`` runs every tick (the sampler).
    """
    rnd = random.Random(seed)
    topics, parts = cfg.topics, cfg.topics.partitions
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, client_id="dlabel-soak")
    await producer.start()
    pending: list = []

    async def send(topic: str, records: list) -> None:
        pending.extend(await send_batches(producer, topic, records, parts))

    t0 = time.time()
    t0_ms = int(t0 * 1000)

    def event_ms(wall: float) -> int:
        return t0_ms + int((wall - t0) * 1000 * speedup)

    clicks: list[tuple[float, str]] = []
    soak.speedup = speedup
    try:
        while True:
            now = time.time()
            elapsed = now - t0
            if elapsed >= seconds and not clicks:
                break
            on_tick(elapsed)
            due = int(min(elapsed, seconds) * rate)
            ts = event_ms(now)
            requests = []
            while soak.sent_requests < due:
                rid = f"s{seed}-{soak.sent_requests}"
                soak.sent_requests += 1
                value = request_value(rid, ts, rnd)
                requests.append((rid.encode(), value))
                if keep_events:
                    soak.requests.append(value)
                if rnd.random() < click_fraction:
                    heapq.heappush(clicks, (now + rnd.uniform(0.2, 2.0), rid))
            if requests:
                await send(topics.requests, requests)
            due_clicks = []
            while clicks and clicks[0][0] <= now:
                _, rid = heapq.heappop(clicks)
                value = click_value(rid, ts)
                due_clicks.append((rid.encode(), value))
                if keep_events:
                    soak.feedback.append(value)
                soak.sent_clicks += 1
            if due_clicks:
                await send(topics.feedback, due_clicks)
            if len(pending) > 200:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def start_worker(config_path: Path, log_path: Path, stats_path: Path) -> subprocess.Popen:
    """`dlabel worker --only join` in its own session, writing its stats to ``stats_path``."""
    env = {**worker_env(), "DLABEL_WORKER_STATS": str(stats_path)}
    with open(log_path, "ab") as log:
        return subprocess.Popen(worker_cmd(config_path, "--only", "join"), stdout=log,
                                stderr=subprocess.STDOUT, env=env,
                                cwd=str(Path(__file__).resolve().parent.parent),
                                start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 60) -> int:
    """SIGTERM the worker's group and wait (SIGKILL after ``timeout``); its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return proc.wait()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(30)


def run_soak(bootstrap: str, broker_url: str, work: Path, name: str, rate: float,
             seconds: float, sample_s: float = 10.0, speedup: Optional[int] = None,
             keep_events: bool = True,
             on_sample: Callable[[dict], None] = lambda s: None) -> tuple[Soak, Path]:
    """Run one soak; returns what it saw and the pipeline's config path.

    The worker is stopped (SIGTERM) at the end; its log is ``work / "worker.log"``.
    """
    path = write_pipeline(work, "ctr", broker_url, name, partitions=4)
    cfg = load(path)
    ensure_topics(bootstrap, cfg, compacted=[changelog_topic(cfg)])
    log_path, stats_path = work / "worker.log", work / "stats.json"
    proc = start_worker(path, log_path, stats_path)
    soak = Soak()
    try:
        wait_until(lambda: proc.poll() is not None
                   or "reading inputs from" in log_path.read_text(errors="replace"),
                   timeout=180, what="the worker reading its inputs")
        assert proc.poll() is None, f"worker exited {proc.returncode}; see {log_path}"
        next_at = [0.0]

        def sample(elapsed: float) -> None:
            if elapsed < next_at[0]:
                return
            next_at[0] = elapsed + sample_s
            stats = read_stats(stats_path)
            state = stats.get("state", {})
            row = {"t_s": round(elapsed, 1), "rss_mib": round(process_rss_mib(proc.pid), 1),
                   "pending": state.get("pending"), "done": state.get("done"),
                   "early": state.get("early"), "labeled_sent": stats.get("labeled_sent"),
                   "requests_sent": soak.sent_requests}
            soak.samples.append(row)
            on_sample(row)
            if proc.poll() is not None:
                raise AssertionError(f"worker exited {proc.returncode}; see {log_path}")

        asyncio.run(steady_stream(bootstrap, cfg, rate, seconds,
                                  speedup or speedup_for(seconds), soak, sample,
                                  keep_events=keep_events))
    finally:
        rc = stop_worker(proc)
    assert rc == 0, f"worker exited {rc} on SIGTERM; see {log_path}"
    return soak, path


def labeled_by_id(bootstrap: str, topic: str, timeout: float = 1800
                  ) -> tuple[dict[str, dict], dict[str, list[bytes]]]:
    """The labeled topic read to its end, as ``pipeline_runs.labeled_records`` gives it
    (the first copy per request id, and every copy), with room for a long soak's
    millions of records."""
    copies: dict[str, list[bytes]] = {}
    for rec in read_to_end(bootstrap, topic, timeout=timeout):
        copies.setdefault(orjson.loads(rec.value)["request_id"], []).append(rec.value)
    return {rid: orjson.loads(vals[0]) for rid, vals in copies.items()}, copies
