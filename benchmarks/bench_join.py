r"""Join worker throughput vs the raw-client ceiling, on Tansu and/or Apache Kafka.

    python benchmarks/bench_join.py --requests 200000 --runs 3
    python benchmarks/bench_join.py --engine both --guarantee exactly_once \
        --guarantee at_least_once --requests 200000 --runs 5 --no-pending-memory
    python benchmarks/bench_join.py --engine both --inputs hop --inputs copartitioned \
        --requests 100000 --runs 3 --no-pending-memory
    git archive HEAD | tar -x -C /tmp/before   # a checkout to compare with
    python benchmarks/bench_join.py --code /tmp/before --requests 100000 --runs 3 \
        --no-pending-memory

For each run, on the same freshly produced topics: the raw aiokafka consume rate of
the requests and feedback topics (getmany + json.loads: the ceiling; each record counted
once), then the join worker (`dlabel -v worker --drain --guarantee G` as a child process)
over the same data, raw and worker alternating; their ratio is taken side by side in the
run, on the same broker. ``--engine`` picks the broker (the embedded Tansu broker, a
single-node Apache Kafka from the cached jars, or both, started side by side);
``--guarantee`` (repeatable) the worker's processing guarantee; ``--code`` (repeatable)
another checkout whose worker runs too, side by side with the current code in every run
(before/after a change, under the same load). Every (engine,
guarantee) pair is measured in every run on the same simulated events (seed = run + 1),
in an order rotated from run to run; exactly_once is skipped on Tansu (no transactions)
and ``auto`` means at_least_once there and exactly_once on Kafka. With both guarantees
on Kafka, the cost of exactly once is the ratio of its join rate to at-least-once's, per
run, then the median.

Join ev/s: the input records divided by the time from the worker's first input read
(its "reading inputs from" log line) to the arrival of the last label on the labeled
topic, read while the worker runs (read_committed): the final finalization of a drain
(the negatives of the last label window, after the inputs have been quiet for the
drain's 1.5 s) is included. The steady rate divides by the worker's own busy time
(first batch -> last input batch durable) instead. The labels read are compared field
by field with the oracle (``tests/oracle.py``: ``expected_examples`` then
``assert_examples_match``; identical at-least-once repeats dropped first); a run that
differs is printed as MISMATCH and the script exits non-zero at the end.

Also: the oracle's time and label count, the worker's CPU time and peak RSS (its own
``VmHWM`` from /proc, per run), and the memory of pending requests held by the join.
Medians over runs are printed as a Markdown table for BENCHMARKS.md. Timing is not
asserted anywhere. The functions here are reused by ``benchmarks/peers/bench_peers.py``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from benchmarks.io_floor import input_consumer, io_floor  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.kafka_broker import SERVER_JVM_OPTIONS, KafkaBroker  # noqa: E402
from streams.dev.simulate import generate, produce  # noqa: E402
from streams.kafka.tansu_quirks import fetch_end_offsets  # noqa: E402
from tests.oracle import expected_examples  # noqa: E402
from tests.pipeline_runs import PII_KEY, load, write_pipeline  # noqa: E402


async def raw_consume(bootstrap: str, topics: list[str], partitions: int) -> tuple[int, float]:
    """Read every record of ``topics`` (``partitions`` each) with getmany + json.loads;
    (count, seconds). Each record is counted once, whatever the number of partitions a
    ``getmany`` returns (it used to add the whole batch once per partition in it, which
    overstated the count and stopped the read early)."""
    consumer = input_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        ends = await fetch_end_offsets(bootstrap, tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total, n = sum(ends.values()), 0
        t0 = time.perf_counter()
        idle_since = time.monotonic()
        while n < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for r in records:
                    try:
                        json.loads(r.value)
                    except ValueError:
                        pass
                n += len(records)
            if batches:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 30:  # e.g. records deleted by retention
                raise RuntimeError(f"raw read stalled at {n} of {total} records")
        return n, time.perf_counter() - t0
    finally:
        await consumer.stop()


def input_count(bootstrap: str, topics: list[str], partitions: int) -> int:
    """Records in ``topics`` (true ends, from a fetch's high watermark)."""
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    return sum(asyncio.run(fetch_end_offsets(bootstrap, tps)).values())


class OutputTail:
    """Reads ``topic`` from its beginning in a thread while a system under test writes
    it (read_committed: what a consumer of the labeled topic sees), keeping each record's
    value and the wall time (``time.time()``) the last record arrived.

    ``wait_quiet(quiet_s)`` returns once no record came for ``quiet_s`` seconds and the
    reader is at the end of every partition it fetched.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        import threading
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.values: list[bytes] = []
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.at_end = False  # at the high watermark of every partition, last we looked
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"tail-{topic}", daemon=True)
        self._started = threading.Event()

    def __enter__(self) -> "OutputTail":
        self._thread.start()
        self._started.wait(60)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._read())
        except BaseException as e:  # noqa: BLE001 - reported by wait_quiet
            self._error = e
            self._started.set()

    async def _read(self) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    group_id=None, isolation_level="read_committed",
                                    fetch_max_wait_ms=100, max_partition_fetch_bytes=4 << 20,
                                    fetch_max_bytes=16 << 20)
        await consumer.start()
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            self._started.set()
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=50_000)
                if batches:
                    now = time.time()
                    for records in batches.values():
                        self.values.extend(r.value for r in records)
                    if self.first_at is None:
                        self.first_at = now
                    self.last_at = now
                at_end = True
                for tp in tps:
                    at_end = at_end and (consumer.highwater(tp) or 0) <= await consumer.position(tp)
                self.at_end = at_end
        finally:
            await consumer.stop()

    def quiet_for(self) -> float:
        """Seconds since the last record arrived (inf before the first one)."""
        return float("inf") if self.last_at is None else time.time() - self.last_at

    def wait_quiet(self, quiet_s: float, timeout: float = 120) -> None:
        """Until no record came for ``quiet_s`` and the reader is at the end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._error is not None:
                raise RuntimeError(f"tail of {self.topic} failed: {self._error!r}")
            if self.at_end and self.quiet_for() >= quiet_s:
                return
            time.sleep(0.1)
        raise RuntimeError(f"tail of {self.topic}: not quiet within {timeout} s")


def run_child(cmd: list[str], log: Path, env: dict | None = None, cwd: Path = ROOT,
              until: Callable[[subprocess.Popen], bool] | None = None,
              timeout: float = 1800) -> dict:
    """Run ``cmd`` as a child (output to ``log``) until it exits, or until ``until(proc)``
    is true or ``timeout`` s passed (then it gets SIGTERM, and SIGKILL 20 s later; ``stopped``
    says which: "until" or "timeout"); sample its own peak RSS
    (``VmHWM``: rusage's maxrss of a child starts at this process's RSS when it forked,
    as Linux carries the high-water mark over the exec) and CPU time (utime + stime)
    from /proc every 0.1 s. Returns rc, spawned_at / ended_at (``time.time()``),
    peak_rss_mib and cpu_s of this one child (its own children excluded)."""
    rss = cpu = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    stopped: str | bool = False
    with open(log, "wb") as out:
        spawned_at = time.time()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env=env or dict(os.environ), cwd=cwd)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                rss = max(rss, _status_mib(proc.pid, "VmHWM"))
                try:
                    with open(f"/proc/{proc.pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    cpu = max(cpu, (int(fields[11]) + int(fields[12])) / tick)
                except (OSError, IndexError, ValueError):
                    pass
                if not stopped and ((until is not None and until(proc))
                                    or time.monotonic() > deadline):
                    stopped = "until" if time.monotonic() <= deadline else "timeout"
                    proc.terminate()
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return {"rc": proc.returncode, "stopped": stopped, "spawned_at": spawned_at,
            "ended_at": time.time(), "peak_rss_mib": rss, "cpu_s": cpu}


#: the join worker logs this (with -v, timestamped) right before its first input fetch
READING = "dlabel.worker: reading inputs from"


def first_read_at(log: Path) -> float | None:
    """Wall time of the worker's first "reading inputs from" log line (its local-time
    ``%Y-%m-%d %H:%M:%S,mmm`` stamp), or None."""
    import re
    from datetime import datetime
    for line in log.read_text(errors="replace").splitlines():
        i = line.find(READING)
        if i >= 0:
            m = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", line[:i])
            return (datetime.strptime(m.group(0), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    if m else None)
    return None


def run_worker(config_path: Path, log: Path, guarantee: str = "auto", only: str | None = None,
               tail: OutputTail | None = None, code: Path = ROOT) -> tuple[dict, float]:
    """`dlabel -v worker --drain --guarantee G` in a child; (summary, peak RSS MiB of the
    child, this run's only).

    The summary gets ``seconds`` (where the worker's batch loop spent its time),
    ``cpu_s`` (the worker process's whole life, start-up and drain included, its sink
    child excluded), ``spawned_at`` and ``first_read_at`` (wall times: the child's start
    and its "reading inputs from", right before its first fetch). With ``tail`` (the
    labeled topic's reader, started before), it returns only once the tail has read
    every label the worker wrote (it exits after its final, finalizing batch is durable).
    ``code``: the checkout whose worker runs (its directory is the child's working
    directory, so ``python -m streams.cli`` imports that code).
    """
    stats = log.with_suffix(".stats.json")
    env = {**os.environ, "DLABEL_PII_KEY": PII_KEY, "DLABEL_WORKER_STATS": str(stats)}
    cmd = [sys.executable, "-m", "streams.cli", "-v", "worker", "-c", str(config_path),
           "--drain", "--batch-size", "5000", "--guarantee", guarantee]
    if only:
        cmd += ["--only", only]
    child = run_child(cmd, log, env, cwd=code)
    text = log.read_text(errors="replace").strip().splitlines()
    if child["rc"] != 0:
        raise SystemExit(f"worker failed ({child['rc']}):\n" + "\n".join(text[-30:]))
    last = text[-1]
    summary = json.loads(last[last.index("{"):])
    if stats.exists():
        summary["seconds"] = json.loads(stats.read_text())["seconds"]
    summary["cpu_s"] = child["cpu_s"]
    summary["spawned_at"] = child["spawned_at"]
    summary["first_read_at"] = first_read_at(log)
    if tail is not None:
        tail.wait_quiet(1.0)
    return summary, child["peak_rss_mib"]


def decode_labels(values: list[bytes]) -> tuple[list[dict], int]:
    """The labeled topic's records as dicts, identical repeats (at least once) dropped;
    (examples, repeats). A repeat that differs from its first copy is kept, so the
    oracle comparison reports it."""
    seen: dict[str, bytes] = {}
    out, repeats = [], 0
    for v in values:
        ex = json.loads(v)
        rid = ex.get("request_id")
        if rid in seen and seen[rid] == v:
            repeats += 1
            continue
        seen.setdefault(rid, v)
        out.append(ex)
    return out, repeats


def compare_with_oracle(expected: dict, values: list[bytes]) -> tuple[bool, str, int]:
    """Field-by-field comparison of the labeled topic with the oracle
    (``tests/oracle.py``'s ``assert_examples_match``): (equal, first lines of the
    differences, identical repeats dropped)."""
    from tests.oracle import assert_examples_match
    examples, repeats = decode_labels(values)
    try:
        assert_examples_match(expected, examples)
    except AssertionError as e:
        return False, "\n".join(str(e).splitlines()[:12]), repeats
    return True, "", repeats


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
    return _status_mib("self", "VmRSS")


def _status_mib(pid, field: str) -> float:
    """``field`` (e.g. VmRSS, VmHWM) of /proc/<pid>/status in MiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


#: what ``--guarantee auto`` means on each engine (the worker decides the same way)
AUTO = {"tansu": "at_least_once", "kafka": "exactly_once"}


def configurations(engines: list[str], guarantees: list[str], inputs: list[str],
                   codes: tuple[str, ...] = ("current",)) -> list[tuple[str, str, str, str]]:
    """(engine, effective guarantee, inputs, code) to measure, in order, without repeats."""
    out: list[tuple[str, str, str, str]] = []
    for engine in engines:
        for g in guarantees:
            g = AUTO[engine] if g == "auto" else g
            if engine == "tansu" and g == "exactly_once":
                print("# skipped tansu/exactly_once: Tansu has no transactions", flush=True)
                continue
            for i in inputs:
                for code in codes:
                    if (engine, g, i, code) not in out:
                        out.append((engine, g, i, code))
    return out


def start_brokers(stack: contextlib.ExitStack, engines: list[str]) -> dict:
    """Start each engine's broker (stopped when ``stack`` closes)."""
    brokers = {}
    for engine in engines:
        if engine == "tansu":
            brokers[engine] = stack.enter_context(EmbeddedBroker())
        else:  # the long-running broker's JVM options (C2), not the quick-start ones
            brokers[engine] = stack.enter_context(
                KafkaBroker(heap="1g", jvm_options=SERVER_JVM_OPTIONS))
    return brokers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--engine", choices=["tansu", "kafka", "both"], default="tansu",
                    help="the broker: embedded Tansu (default), Apache Kafka, or both")
    ap.add_argument("--guarantee", choices=["auto", "exactly_once", "at_least_once"],
                    action="append",
                    help="the worker's --guarantee (repeatable; default auto: at least "
                         "once on Tansu, exactly once on Kafka)")
    ap.add_argument("--inputs", choices=["hop", "copartitioned"], action="append",
                    help="hop: the worker repartitions its inputs (the default); "
                         "copartitioned: inputs.copartitioned: true, no hop (repeatable: "
                         "both in one run give the hop's cost side by side)")
    ap.add_argument("--code", type=Path, action="append", default=[],
                    help="also run the worker of this checkout (e.g. `git archive HEAD | "
                         "tar -x -C /tmp/before`), side by side with the current code in "
                         "every run, on the same topics' data (repeatable)")
    ap.add_argument("--io-floor", action="store_true",
                    help="also run, after each raw read, the worker's Kafka I/O with no "
                         "join (benchmarks/io_floor.py), with and without the hop: the "
                         "most a worker on aiokafka could reach (ratio to raw)")
    ap.add_argument("--pending", type=int, default=1_000_000)
    ap.add_argument("--no-pending-memory", action="store_true",
                    help="skip the in-process memory of --pending pending requests")
    ap.add_argument("--pending-rss", choices=["memory", "rocksdb"], action="append",
                    help="only measure the RSS of a worker holding --pending pending "
                         "requests with this store (repeatable)")
    args = ap.parse_args()
    engines = ["tansu", "kafka"] if args.engine == "both" else [args.engine]
    if args.pending_rss:
        with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
            broker = start_brokers(stack, engines[:1])[engines[0]]
            for store in args.pending_rss:
                print(json.dumps(pending_worker_rss(broker, Path(tmp), args.pending, store)),
                      flush=True)
        return
    code_roots = {"current": ROOT, **{str(c): c.resolve() for c in args.code}}
    configs = configurations(engines, args.guarantee or ["auto"], args.inputs or ["hop"],
                             tuple(code_roots))
    print(f"# load average at start: {os.getloadavg()}", flush=True)
    rows: dict[tuple[str, str, str, str], list[dict]] = {c: [] for c in configs}
    oracle_s: list[float] = []
    mismatches = 0
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        brokers = start_brokers(stack, engines)
        cfg = None
        for run in range(args.runs):
            events = expected = None
            order = configs[run % len(configs):] + configs[:run % len(configs)]
            for engine, guarantee, inputs, code in order:
                broker = brokers[engine]
                tag = (f"{engine[0]}{'e' if guarantee == 'exactly_once' else 'a'}{inputs[0]}"
                       f"{list(code_roots).index(code)}")
                work = Path(tmp) / f"run{run}-{tag}"
                work.mkdir()
                path = write_pipeline(work, "ctr", broker.url,
                                      f"bench{run}{tag}-{os.getpid()}",
                                      partitions=args.partitions)
                if inputs == "copartitioned":  # the simulator keys by request id, murmur2
                    with open(path, "a") as f:
                        f.write("\ninputs: {copartitioned: true}\n")
                cfg = load(path)
                if events is None:  # the same events for every configuration of the run
                    events = generate(cfg, "ctr", args.requests, seed=run + 1)
                    t0 = time.perf_counter()
                    expected = expected_examples(
                        path, [e.value for e in events if e.role == "requests"],
                        [e.value for e in events if e.role == "feedback"], PII_KEY.encode())
                    oracle_s.append(time.perf_counter() - t0)
                    print(json.dumps({"run": run, "oracle_s": round(oracle_s[-1], 2),
                                      "oracle_labels": len(expected)}), flush=True)
                produce(broker.bootstrap, cfg, events)
                inputs_topics = [cfg.topics.requests, cfg.topics.feedback]
                n_in = input_count(broker.bootstrap, inputs_topics, cfg.topics.partitions)
                load_before = os.getloadavg()[0]
                # raw and worker alternate: raw, worker, raw, worker, ... on fresh topics
                n_raw, s_raw = asyncio.run(raw_consume(broker.bootstrap, inputs_topics,
                                                       cfg.topics.partitions))
                floors = {}
                if args.io_floor:  # raw, floor with the hop, floor without, worker
                    for hop in (True, False):
                        n_floor, s_floor = asyncio.run(io_floor(
                            broker.bootstrap, cfg.topics.requests, cfg.topics.feedback,
                            cfg.topics.partitions, cfg.join.key, hop))
                        floors[f"floor_{'hop' if hop else 'direct'}_ratio"] = (
                            n_floor / s_floor) / (n_raw / s_raw)
                with OutputTail(broker.bootstrap, cfg.topics.labeled,
                                cfg.topics.partitions) as tail:
                    summary, rss = run_worker(path, work / "worker.log", guarantee, tail=tail,
                                              code=code_roots[code])
                ok, why, repeats = compare_with_oracle(expected, tail.values)
                mismatches += not ok
                first = summary["first_read_at"] or summary["spawned_at"]
                to_last = (tail.last_at or first) - first
                row = {"events": n_in, "raw_events": n_raw, "raw_eps": n_raw / s_raw,
                       "join_eps": n_in / to_last,
                       "steady_eps": n_in / summary["busy_seconds"],
                       "worker_peak_rss_mib": rss, "labeled": summary["labeled_sent"],
                       "labels_read": len(tail.values), "repeats": repeats,
                       "oracle_match": ok, "oracle_labels": len(expected),
                       "busy_s": summary["busy_seconds"], "first_to_last_label_s": to_last,
                       "start_to_last_label_s": (tail.last_at or first) - summary["spawned_at"],
                       "load1": load_before, "worker_cpu_s": summary["cpu_s"], **floors}
                row["ratio"] = row["join_eps"] / row["raw_eps"]
                row["steady_ratio"] = row["steady_eps"] / row["raw_eps"]
                rows[(engine, guarantee, inputs, code)].append(row)
                print(json.dumps({"run": run, "engine": engine, "guarantee": guarantee,
                                  "inputs": inputs, "code": code,
                                  **{k: (round(v, 3) if isinstance(v, float) else v)
                                     for k, v in row.items()},
                                  "batches": summary.get("batches"),
                                  "steps_s": {k: round(v, 2) for k, v in
                                              summary.get("seconds", {}).items()}}),
                      flush=True)
                if not ok:
                    print(f"# MISMATCH with the oracle ({engine}, {guarantee}, {inputs}, "
                          f"{code}, run {run}):\n{why}", flush=True)
            del events, expected
        mem = None if args.no_pending_memory else pending_memory(cfg, args.pending)
    print(f"# load average at the end: {os.getloadavg()}", flush=True)
    med = {c: {k: statistics.median(r[k] for r in rs) for k in rs[0]
               if not isinstance(rs[0][k], bool)} for c, rs in rows.items()}
    print(f"\n{args.requests} requests, {args.partitions} partitions, median of "
          f"{args.runs} runs (ratio: per run, then median); worker --batch-size 5000\n")
    print("join ev/s: input records / (worker's first input read -> last label read from "
          "the labeled topic, the final finalization included); steady: / the worker's "
          "busy time (first batch -> last input batch durable)\n")
    print("| broker | guarantee | inputs | code | events | raw aiokafka ev/s (ceiling) | "
          "join ev/s | ratio join / raw | steady ratio | worker CPU s (whole run) | "
          "worker peak RSS MiB (per run) | labeled = oracle (field by field) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (engine, guarantee, inputs, code), m in med.items():
        rs = rows[(engine, guarantee, inputs, code)]
        match = sum(r["oracle_match"] for r in rs)
        rss = " / ".join(f"{r['worker_peak_rss_mib']:.0f}" for r in rs)
        print(f"| {engine} | {guarantee} | {inputs} | {code} | {m['events']:,.0f} | "
              f"{m['raw_eps']:,.0f} | "
              f"{m['join_eps']:,.0f} | {m['ratio']:.3f} | {m['steady_ratio']:.3f} | "
              f"{m['worker_cpu_s']:.1f} | "
              f"{rss} | "
              f"{match}/{len(rs)} runs ({m['oracle_labels']:,.0f} labels) |")
    for (engine, guarantee, inputs, code), rs in rows.items():  # the I/O floor, per run
        if rs and "floor_hop_ratio" in rs[0]:
            for what in ("floor_hop_ratio", "floor_direct_ratio"):
                print(f"\n{engine} {guarantee} {inputs} {code}: {what} (Kafka I/O alone, no "
                      f"join, / raw) per run: {', '.join(f'{r[what]:.3f}' for r in rs)}; "
                      f"median {statistics.median(r[what] for r in rs):.3f}; the worker's "
                      f"steady ratio: {statistics.median(r['steady_ratio'] for r in rs):.3f}")
    for engine, guarantee, inputs, code in configs:  # the hop's cost, side by side per run
        hop, direct = rows.get((engine, guarantee, "hop", code)), rows.get(
            (engine, guarantee, "copartitioned", code))
        if inputs == "hop" and hop and direct:
            cost = [h["join_eps"] / d["join_eps"] for h, d in zip(hop, direct)]
            print(f"\n{engine} {guarantee} {code}: join ev/s with the repartition hop / without, "
                  f"per run: {', '.join(f'{c:.3f}' for c in cost)}; median "
                  f"{statistics.median(cost):.3f}")
    for engine, guarantee, inputs, code in configs:  # current / another checkout, per run
        cur, other = rows.get((engine, guarantee, inputs, "current")), rows.get(
            (engine, guarantee, inputs, code))
        if code != "current" and cur and other:
            for what in ("ratio", "steady_ratio"):
                gain = [c[what] / o[what] for c, o in zip(cur, other)]
                print(f"\n{engine} {guarantee} {inputs}: {what} current / {code}, per run: "
                      f"{', '.join(f'{g:.2f}' for g in gain)}; median "
                      f"{statistics.median(gain):.2f}")
    eos = rows.get(("kafka", "exactly_once", "hop", "current"))
    alo = rows.get(("kafka", "at_least_once", "hop", "current"))
    if eos and alo:
        cost = [e["join_eps"] / a["join_eps"] for e, a in zip(eos, alo)]
        print(f"\nKafka exactly once / at least once, join ev/s per run: "
              f"{', '.join(f'{c:.3f}' for c in cost)}; median {statistics.median(cost):.3f}")
        cpu = [e["worker_cpu_s"] / a["worker_cpu_s"] for e, a in zip(eos, alo)]
        print(f"Kafka exactly once / at least once, worker CPU seconds per run: "
              f"{', '.join(f'{c:.3f}' for c in cpu)}; median {statistics.median(cpu):.3f}")
    print(f"\noracle (tests/oracle.py), same events: {statistics.median(oracle_s):.2f} s "
          "(median)")
    if mem is not None:
        print(f"join memory per 1M pending requests (in-process): {mem:,.0f} MiB")
    if mismatches:
        raise SystemExit(f"{mismatches} run(s) differ from the oracle (see MISMATCH above)")


if __name__ == "__main__":
    main()
