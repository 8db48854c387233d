"""Crash recovery time of `dlabel worker`: SIGKILL -> first new committed label.

    python benchmarks/bench_recovery.py --engine both --kills 5

Per engine (Apache Kafka from the cached jars, and/or the embedded Tansu broker) and
per kill (``--kills`` independent trials, so every kill meets the same state): a
backlog of simulated CTR requests and their feedback is produced to fresh topics;
`dlabel worker` (join and dataset sink, not --drain, default guarantee: exactly once
on Kafka, at least once on Tansu) starts in its own session; once labels flow and it
has run ``--run-s`` more seconds its whole process group is SIGKILLed and it is
restarted at once. Recovery time = from the SIGKILL to the first label that becomes
visible on the labeled topic after the kill, read by a ``read_committed``
kafka-python consumer (on Kafka: committed by the restarted worker's transactions;
records of the transaction the kill left open are aborted and never seen; on Tansu,
which has no transactions: the first label written after the restart, possibly a
repeat). The median over the kills is the figure.

The restarted worker's log (``-v``, INFO) splits each recovery into phases, all
measured from the kill: the process is up (first log line: imports done), the
consumer group is joined (the join's group synced), Faust has replayed the table's
changelog ("Recovery complete"; with ``--store rocksdb`` only what the local database
does not hold yet), the batch loop has loaded the join from the table ("join state
loaded") and reads its inputs, the first new label is committed. Each kill's row also
gives the size of the join table's changelog at the kill (what a restart with the
memory store replays).

Each trial also times the first worker's start on the backlog: from starting
`dlabel worker` to the first label on the labeled topic (``start_s``), with the same
phases from its log (``start_*``; "first labels handed to the producer" is logged by
the batch loop).

Nothing is asserted; results go to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka.structs import TopicPartition as AioTopicPartition  # noqa: E402
from kafka import KafkaConsumer, TopicPartition  # noqa: E402

from streams.dev.simulate import generate, produce  # noqa: E402
from streams.join.faust_adapter import changelog_topic  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.kafka.kafka_broker import SERVER_JVM_OPTIONS, KafkaBroker  # noqa: E402
from streams.kafka.tansu_quirks import fetch_end_offsets  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402
from tests.pipeline_runs import PII_KEY, load, write_pipeline  # noqa: E402

#: wait this long after a kill before taking the labeled topic's end as the baseline:
#: a transaction whose commit the dead worker had already sent still completes then
SETTLE_S = 0.5

#: log line -> phase (the first line matching, after the restart). The text format is
#: ``%(asctime)s %(levelname)s %(name)s: %(message)s``.
PHASES = (
    ("join_sent", re.compile(r"aiokafka\.consumer\.group_coordinator: \(Re-\)joining group")),
    ("join_answered", re.compile(r"aiokafka\.consumer\.group_coordinator: Joined group")),
    ("group_joined", re.compile(r"aiokafka\.consumer\.group_coordinator: Successfully synced")),
    ("faust_recovery_started", re.compile(r"Recovery\]: Restoring state from changelog")),
    ("faust_recovery_done", re.compile(r"Recovery\]: Recovery complete")),
    ("table_recovered", re.compile(r"dlabel\.worker: join state loaded")),
    ("reading_inputs", re.compile(r"dlabel\.worker: reading inputs from")),
    ("first_label_sent", re.compile(r"dlabel\.worker: first labels handed")),
)
#: the time at the start of a log line (after any terminal codes a progress bar left)
LOG_TIME = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def start_worker(config_path: Path, log_path: Path) -> subprocess.Popen:
    """`dlabel -v worker` (join + sink) in its own session, output to ``log_path``."""
    env = {**os.environ, "DLABEL_PII_KEY": PII_KEY, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "streams.cli", "-v", "worker", "-c",
                                 str(config_path)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=ROOT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the worker's process group (join worker and dataset sink)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


class LabelWatch:
    """A read_committed reader of the labeled topic that reports the first new label."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, tansu: bool) -> None:
        self.bootstrap, self.tansu = bootstrap, tansu
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False,
                                      isolation_level="read_committed",
                                      fetch_max_wait_ms=50, max_poll_records=100_000)
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.seen = 0

    def ends(self) -> dict:
        """The last stable offsets (on Tansu, which has no transactions and answers
        ListOffsets short of the end: the fetch high watermarks)."""
        if self.tansu:
            ends = asyncio.run(fetch_end_offsets(
                self.bootstrap, [AioTopicPartition(tp.topic, tp.partition) for tp in self.tps]))
            return {TopicPartition(tp.topic, tp.partition): off for tp, off in ends.items()}
        return self.consumer.end_offsets(self.tps)

    def catch_up(self) -> dict:
        """Read up to the current end; return it (the baseline)."""
        ends = self.ends()
        while any(self.consumer.position(tp) < ends[tp] for tp in self.tps):
            self.poll(200)
        return ends

    def poll(self, timeout_ms: int) -> int:
        n = sum(len(v) for v in self.consumer.poll(timeout_ms=timeout_ms).values())
        self.seen += n
        return n

    def wait_new(self, timeout_s: float, alive) -> float:
        """Wall time of the first label read from now on; raise after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.poll(50):
                return time.time()
            alive()
        raise SystemExit(f"no new label within {timeout_s:.0f} s")

    def close(self) -> None:
        self.consumer.close()


def changelog_size(bootstrap: str, topic: str, partitions: int) -> int:
    """Records in the join table's changelog (high watermarks: what a restart reads)."""
    tps = [AioTopicPartition(topic, p) for p in range(partitions)]
    return sum(asyncio.run(fetch_end_offsets(bootstrap, tps)).values())


def phases(log_path: Path, from_byte: int, t_kill: float) -> dict:
    """Seconds from the kill to each phase, from the restarted worker's log."""
    with open(log_path, "rb") as f:
        f.seek(from_byte)
        lines = f.read().decode("utf-8", "replace").splitlines()
    out: dict[str, float] = {"joins": 0}
    for line in lines:
        if PHASES[0][1].search(line):  # JoinGroups sent: more than one = a second rebalance
            out["joins"] += 1
        m = LOG_TIME.search(line, 0, 40)
        if not m:
            continue
        at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - t_kill
        out.setdefault("process_up", at)
        for name, pattern in PHASES:
            if name not in out and pattern.search(line):
                out[name] = at
    return out


def trial(engine: str, broker, args, tmp: Path, kill: int) -> dict:
    """One kill on fresh topics holding the same backlog; the kill's row."""
    work = tmp / f"{engine}-{kill}"
    work.mkdir()
    name = f"rec{engine[0]}{os.getpid()}k{kill}"
    path = write_pipeline(work, "ctr", broker.url, name, partitions=args.partitions,
                          store=args.store)
    cfg = load(path)
    ensure_topics(broker.bootstrap, cfg, compacted=[changelog_topic(cfg)])
    events = generate(cfg, "ctr", args.requests, seed=1)
    produce(broker.bootstrap, cfg, events, ensure=False)
    del events
    watch = LabelWatch(broker.bootstrap, cfg.topics.labeled, args.partitions,
                       tansu=engine == "tansu")
    log_path = work / "worker.log"
    load_start = os.getloadavg()[0]
    t_start = time.time()
    proc = start_worker(path, log_path)

    def alive() -> None:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited {proc.returncode}; see {log_path}")

    try:
        t_first = watch.wait_new(args.timeout_s, alive)  # labels flow
        start = {"start_s": round(t_first - t_start, 3), "load1_start": load_start}
        start.update({f"start_{k}": round(v, 3)
                      for k, v in phases(log_path, 0, t_start).items()})
        t_end = time.monotonic() + args.run_s
        while time.monotonic() < t_end:
            watch.poll(100)
            alive()
        load1 = os.getloadavg()[0]
        t_kill = time.time()
        kill_group(proc)
        log_from = log_path.stat().st_size
        proc = start_worker(path, log_path)  # at once
        time.sleep(max(0.0, t_kill + SETTLE_S - time.time()))
        before = watch.seen
        watch.catch_up()  # labels committed before the kill
        state = changelog_size(broker.bootstrap, changelog_topic(cfg), args.partitions)
        t_label = watch.wait_new(args.timeout_s, alive)
        row = {"engine": engine, "store": args.store, "kill": kill,
               "recovery_s": round(t_label - t_kill, 3),
               "labels_before": before, "changelog_records": state, "load1": load1, **start}
        time.sleep(1.0)  # the log lines of the first batch are written
        row.update({k: round(v, 3) for k, v in phases(log_path, log_from, t_kill).items()})
        if (args.store == "memory" and "faust_recovery_done" in row
                and "faust_recovery_started" in row):  # the whole changelog was replayed
            replay = row["faust_recovery_done"] - row["faust_recovery_started"]
            row["replay_records_per_s"] = round(state / max(replay, 1e-3))
        return row
    finally:
        kill_group(proc)
        watch.close()
        if args.keep_logs:
            dest = Path(args.keep_logs) / f"{engine}-{kill}-worker.log"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(log_path.read_bytes())


def measure(engine: str, broker, args, tmp: Path) -> list[dict]:
    rows = []
    for kill in range(args.kills):
        try:
            row = trial(engine, broker, args, tmp, kill)
        except SystemExit as e:  # one failed kill does not lose the others
            row = {"engine": engine, "kill": kill, "error": str(e)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return [r for r in rows if "recovery_s" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["kafka", "tansu", "both"], default="both")
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100_000,
                    help="backlog per kill (the worker is killed while catching up)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--store", choices=["memory", "rocksdb"], default="memory",
                    help="the join table's store (rocksdb keeps its state on local disk "
                         "across the restart)")
    ap.add_argument("--run-s", type=float, default=3.0,
                    help="seconds the worker runs after labels flow before each kill")
    ap.add_argument("--timeout-s", type=float, default=180.0)
    ap.add_argument("--keep-logs", help="copy the worker logs to this directory")
    args = ap.parse_args()
    engines = ["kafka", "tansu"] if args.engine == "both" else [args.engine]
    print(f"# load average at start: {os.getloadavg()}", flush=True)
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in engines:
            broker = (KafkaBroker(heap="1g", jvm_options=SERVER_JVM_OPTIONS)
                      if engine == "kafka" else EmbeddedBroker())
            with broker:
                results[engine] = measure(engine, broker, args, Path(tmp))
    print(f"# load average at the end: {os.getloadavg()}", flush=True)
    cols = ("process_up", "join_sent", "group_joined", "faust_recovery_done", "table_recovered")
    print(f"\nstore: {args.store}, {args.requests:,} requests backlog, {args.partitions} "
          f"partitions, {args.kills} SIGKILLs each, median (min-max), seconds from the "
          "kill\n")
    print("| broker | first new label (recovery) | process up | JoinGroup sent | group joined | "
          "changelog replayed (Faust) | join state loaded | changelog records at kill | "
          "replay records/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for engine, rows in results.items():
        def cell(key: str, fmt: str = "{:.1f}") -> str:
            vals = [r[key] for r in rows if key in r]
            if not vals:
                return "-"
            return (f"{fmt.format(statistics.median(vals))} "
                    f"({fmt.format(min(vals))}-{fmt.format(max(vals))})")
        print(f"| {engine} | **{cell('recovery_s')}** | "
              + " | ".join(cell(c) for c in cols)
              + f" | {cell('changelog_records', '{:,.0f}')} "
              f"| {cell('replay_records_per_s', '{:,.0f}')} |")
    print("\nStart on the existing backlog (the first worker of each trial), seconds from "
          "the worker's start to the first label on the labeled topic, median (min-max)\n")
    print("| broker | first label (start) | process up | JoinGroup sent | group joined | "
          "join state loaded | reading inputs | first label handed to the producer |")
    print("|---|---|---|---|---|---|---|---|")
    for engine, rows in results.items():
        def cell2(key: str) -> str:
            vals = [r[key] for r in rows if key in r]
            return (f"{statistics.median(vals):.1f} ({min(vals):.1f}-{max(vals):.1f})"
                    if vals else "-")
        print(f"| {engine} | **{cell2('start_s')}** | " + " | ".join(
            cell2(f"start_{c}") for c in ("process_up", "join_sent", "group_joined",
                                          "table_recovered", "reading_inputs",
                                          "first_label_sent")) + " |")


if __name__ == "__main__":
    main()
