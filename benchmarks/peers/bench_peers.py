r"""dlabel's join worker side by side with its peers, on the same broker and the same data.

    python benchmarks/peers/bench_peers.py --engine kafka --requests 100000 --runs 3
    python benchmarks/peers/bench_peers.py --engine tansu --requests 100000 --runs 3
    (add --inputs copartitioned --inputs hop to measure dlabel both ways)

Per run, the simulated ctr events (seed = run + 1, as in bench_join.py) are produced
once to fresh requests and feedback topics, followed by one end-of-input marker per
partition (``{"__end_of_benchmark__": <ms>}``: invalid for dlabel and the oracle, a
dead letter; the Kafka Streams peer's stream time passes the last label windows on it,
since Kafka Streams closes a window only when stream time moves). Then, in an order
rotated from run to run, each system reads those same topics once:

- raw: aiokafka ``getmany`` + ``json.loads`` of both topics (bench_join's ceiling);
- dlabel: ``dlabel -v worker --only join --drain`` (``--inputs copartitioned`` by
  default, as the peers rely on the producers' keys too; ``--inputs hop`` repeatable);
- kafka-streams: ``peers/kafka-streams`` (KStream-KStream left join, JoinWindows of the
  same label window and grace as dlabel's config, RocksDB stores, one stream thread),
  built here with Maven;
- quix: ``peers/quix_label_join.py`` (Quix Streams' ``join_interval``, how="left"), from
  its own venv (``peers/.venv-quix``, made from requirements.txt if missing).

Every system writes its labels to its own topic, which this script reads while it runs
(read_committed). Rate: input records / (the system's first input record -> the arrival
of its last output record), the same for all: dlabel's first read is its "reading inputs
from" log line, a peer's the first call of its deserializer. A peer never exits by
itself: it is stopped once its output has been quiet for ``--quiet`` seconds (not
counted). "from start" divides by the time from the process's spawn instead (JVM, group
join and all). The ratio to raw is per run, then the median.

Work done is checked, so that a peer that drops work is not counted as fast: dlabel's
labels are compared with the oracle field by field; for every system, the final label of
a request is the largest of its outputs, and the positives must be the oracle's
positives (ids), the labeled ids the oracle's ids; the peers' final examples are compared
with the oracle too (reported, the differences named).

Also per system: CPU seconds of its process (whole life, so the JVM's JIT and start-up
too) and events per CPU-second, peak RSS per run, the 1-minute load at its start.
``KS_JAVA_OPTS`` adds JVM options to the Kafka Streams peer (e.g. a JFR recording);
``--table-from LOG`` prints the table again from an earlier run's output.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent
ROOT = PEERS.parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(PEERS.parent))

import yaml  # noqa: E402

import bench_join as bj  # noqa: E402
from streams.dev.simulate import generate, produce  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402
from streams.kafka.kafka_jars import java_binary  # noqa: E402
from tests.oracle import assert_examples_match, expected_examples, parse_duration_ms  # noqa: E402
from tests.pipeline_runs import PII_KEY, load, write_pipeline  # noqa: E402

KS_DIR = PEERS / "kafka-streams"
KS_MAIN = "dlabel.peers.StreamsLabelJoin"
QUIX_VENV = PEERS / ".venv-quix"
END_MARKER = "__end_of_benchmark__"
#: the labeled example's columns the peers write (ctr: its four features, e-mail hashed)
PEER_COLUMNS = frozenset(("request_id", "request_ts", "window_start", "label", "label_ts",
                          "prediction", "model_version", "hour", "category", "price",
                          "user_email"))


# ------------------------------------------------------------------ building the peers

def build_kafka_streams() -> str:
    """Compile the Kafka Streams peer with Maven (once, or when its sources changed);
    its classpath."""
    classes = KS_DIR / "target" / "classes"
    stamp = classes / "dlabel" / "peers" / "StreamsLabelJoin.class"
    sources = [KS_DIR / "pom.xml", *KS_DIR.glob("src/**/*.java")]
    if not stamp.exists() or any(s.stat().st_mtime > stamp.stat().st_mtime for s in sources):
        print("# building the Kafka Streams peer with Maven", flush=True)
        subprocess.run(["mvn", "-q", "-B", "package", "dependency:copy-dependencies",
                        "-DskipTests"], cwd=KS_DIR, check=True)
    return f"{classes}{os.pathsep}{KS_DIR / 'target' / 'lib' / '*'}"


def quix_python() -> str:
    """The Quix Streams venv's python (made from requirements.txt if missing: quixstreams
    pins older confluent-kafka and pydantic-settings than dlabel's venv has)."""
    py = QUIX_VENV / "bin" / "python"
    if not py.exists():
        print("# making the Quix Streams venv", flush=True)
        base = getattr(sys, "_base_executable", None) or shutil.which("python3")
        subprocess.run([base, "-m", "venv", str(QUIX_VENV)], check=True)
        subprocess.run([str(QUIX_VENV / "bin" / "pip"), "install", "-q", "-r",
                        str(PEERS / "requirements.txt")], check=True)
    return str(py)


# ------------------------------------------------------------------ data

def produce_end_markers(bootstrap: str, topics: list[str], partitions: int, ts: int,
                        stamp: int) -> None:
    """One end-of-input marker per partition of ``topics``, event time ``ts``."""
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    enable_idempotence=False)
        await producer.start()
        try:
            value = json.dumps({END_MARKER: ts}).encode()
            for topic in topics:
                for p in range(partitions):
                    await producer.send_and_wait(topic, value, key=b"__end__", partition=p,
                                                 timestamp_ms=stamp)
        finally:
            await producer.stop()
    asyncio.run(send())


def create_input_topics(bootstrap: str, cfg) -> None:
    """The input topics, with retention.ms stated: Tansu describes a topic with the
    configs it was created with only, and Quix Streams derives its changelog topics'
    config from the inputs' retention.ms (KeyError without it). dlabel creates inputs
    with cleanup.policy alone (their retention is the operator's). -1 (forever), as
    KafkaBroker's log.retention.ms: the simulated events are days old, and a 7-day
    retention would have Apache Kafka delete them under the benchmark."""
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(t, cfg.topics.partitions, 1, topic_configs={
            "cleanup.policy": "delete", "retention.ms": "-1",
            "retention.bytes": "-1"}) for t in (cfg.topics.requests, cfg.topics.feedback)])
    finally:
        admin.close()


def final_labels(values: list[bytes]) -> dict[str, dict]:
    """request_id -> its final example: the first output with the largest label (a
    peer may emit a provisional negative, then a positive; or one positive per click)."""
    out: dict[str, dict] = {}
    for v in values:
        ex = json.loads(v)
        rid = ex.get("request_id")
        old = out.get(rid)
        if old is None or ex.get("label", 0) > old.get("label", 0):
            out[rid] = ex
    return out


def check_work(expected: dict[str, dict], values: list[bytes]) -> dict:
    """Outputs, labeled ids and positives against the oracle's; the final examples
    compared with the oracle field by field."""
    final = final_labels(values)
    pos = {rid for rid, ex in final.items() if ex.get("label") == 1}
    want_pos = {rid for rid, ex in expected.items() if ex["label"] == 1}
    fields_ok, why = True, ""
    try:  # the columns the peers write (dlabel's labeled topic may carry more)
        assert_examples_match({rid: {c: v for c, v in ex.items() if c in PEER_COLUMNS}
                               for rid, ex in expected.items()},
                              [{c: v for c, v in ex.items() if c in PEER_COLUMNS}
                               for ex in final.values()])
    except AssertionError as e:
        fields_ok, why = False, "\n".join(str(e).splitlines()[:8])
    return {"outputs": len(values), "labeled_ids": len(final),
            "missing_ids": len(set(expected) - set(final)),
            "extra_ids": len(set(final) - set(expected)),
            "positives": len(pos), "oracle_positives": len(want_pos),
            "positives_missing": len(want_pos - pos), "positives_extra": len(pos - want_pos),
            "work_ok": set(final) == set(expected) and pos == want_pos,
            "fields_ok": fields_ok, "fields_diff": why}


def first_record_ms(log: Path) -> float | None:
    """A peer's ``FIRST_RECORD_MS <ms>`` line, as seconds."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("FIRST_RECORD_MS "):
            return int(line.split()[1]) / 1000
    return None


# ------------------------------------------------------------------ the systems

def dlabel_config(base: Path, work: Path, name: str, inputs: str) -> Path:
    """A pipeline config of its own (group, labeled topic) that reads ``base``'s inputs."""
    data = yaml.safe_load(base.read_text())
    path = write_pipeline(work, "ctr", data["broker"], name,
                          partitions=data["topics"]["partitions"])
    mine = yaml.safe_load(path.read_text())
    mine["topics"]["requests"] = data["topics"]["requests"]
    mine["topics"]["feedback"] = data["topics"]["feedback"]
    if inputs == "copartitioned":  # the simulator keys by request id, murmur2
        mine["inputs"] = {"copartitioned": True}
    path.write_text(yaml.safe_dump(mine, sort_keys=False))
    return path


def run_peer(cmd: list[str], log: Path, tail: bj.OutputTail, quiet: float,
             timeout: float) -> dict:
    """A peer in a child until its output has been quiet ``quiet`` s after it began."""
    def done(proc) -> bool:
        return tail.first_at is not None and tail.at_end and tail.quiet_for() >= quiet
    child = bj.run_child(cmd, log, until=done, timeout=timeout)
    if child["stopped"] != "until":  # it exited (an error), or it never went quiet
        text = log.read_text(errors="replace").splitlines()
        why = "timed out" if child["stopped"] else f"exited {child['rc']}"
        raise SystemExit(f"{cmd[0]} {why} before its output was complete:\n"
                         + "\n".join(text[-30:]))
    child["first_read_at"] = first_record_ms(log)
    return child


def measure(system: str, ctx: dict, work: Path) -> dict:
    """Run ``system`` once over the run's topics; its row."""
    broker, cfg, args = ctx["broker"], ctx["cfg"], ctx["args"]
    load1 = os.getloadavg()[0]
    topics = [cfg.topics.requests, cfg.topics.feedback]
    parts = cfg.topics.partitions
    if system == "raw":
        cpu0 = time.process_time()
        n, s = asyncio.run(bj.raw_consume(broker.bootstrap, topics, parts))
        cpu = time.process_time() - cpu0
        return {"system": "raw", "events": n, "eps": n / s, "seconds": s, "cpu_s": cpu,
                "ev_per_cpu_s": n / cpu, "load1": load1}
    guarantee = ctx["guarantee"]
    if system.startswith("dlabel"):
        inputs = system.split("-", 1)[1]
        path = dlabel_config(ctx["path"], work, f"{ctx['name']}-{inputs[:3]}", inputs)
        mine = load(path)
        ensure_topics(broker.bootstrap, mine)
        with bj.OutputTail(broker.bootstrap, mine.topics.labeled, parts) as tail:
            summary, rss = bj.run_worker(path, work / f"{system}.log", guarantee,
                                         only="join", tail=tail)
        child = {"spawned_at": summary["spawned_at"], "first_read_at": summary["first_read_at"],
                 "cpu_s": summary["cpu_s"], "peak_rss_mib": rss}
        ok, why, repeats = bj.compare_with_oracle(ctx["expected"], tail.values)
        extra = {"oracle_fields_equal": ok, "repeats": repeats, "diff": why,
                 "steady_eps": ctx["n_in"] / summary["busy_seconds"]}
    else:
        out_topic = f"{ctx['name']}.{system}-labeled"
        ensure_topics(broker.bootstrap, cfg, extra=[out_topic])
        common = ["--bootstrap", broker.bootstrap, "--requests", cfg.topics.requests,
                  "--feedback", cfg.topics.feedback, "--output", out_topic,
                  "--window-ms", str(cfg.join.label_window_ms),
                  "--grace-ms", str(cfg.join.allowed_lateness_ms),
                  "--dataset-window-ms", str(ctx["dataset_window_ms"]),
                  "--positive", ",".join(cfg.label.positive), "--guarantee", guarantee,
                  "--pii-key", PII_KEY]
        if system == "kafka-streams":
            java = java_binary()
            cmd = [java, *os.environ.get("KS_JAVA_OPTS", "").split(),
                   "-Dorg.slf4j.simpleLogger.defaultLogLevel=error", "-cp",
                   ctx["ks_classpath"], KS_MAIN, *common,
                   "--app-id", f"{ctx['name']}-ks", "--state-dir", str(work / "ks-state"),
                   "--store", args.ks_store,
                   "--emit-interval-ms", str(args.ks_emit_interval_ms)]
        else:
            cmd = [ctx["quix_python"], str(PEERS / "quix_label_join.py"), *common,
                   "--group", f"{ctx['name']}-quix", "--state-dir", str(work / "quix-state")]
            if args.quix_grace_ms is not None:
                cmd += ["--store-grace-ms", str(args.quix_grace_ms)]
        with bj.OutputTail(broker.bootstrap, out_topic, parts) as tail:
            child = run_peer(cmd, work / f"{system}.log", tail, args.quiet, args.timeout)
        extra = {}
    first = child["first_read_at"] or child["spawned_at"]
    last = tail.last_at or first
    work_check = check_work(ctx["expected"], tail.values)
    return {"system": system, "events": ctx["n_in"], "eps": ctx["n_in"] / (last - first),
            "eps_from_start": ctx["n_in"] / (last - child["spawned_at"]),
            "first_to_last_s": last - first, "start_to_first_s": first - child["spawned_at"],
            "cpu_s": child["cpu_s"], "ev_per_cpu_s": ctx["n_in"] / max(child["cpu_s"], 0.01),
            "peak_rss_mib": child["peak_rss_mib"], "load1": load1,
            **work_check, **extra}


# ------------------------------------------------------------------ main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["tansu", "kafka"], default="tansu")
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--guarantee", choices=["auto", "at_least_once", "exactly_once"],
                    default="auto", help="for every system (auto: exactly once on Kafka, "
                    "at least once on Tansu, which has no transactions)")
    ap.add_argument("--inputs", choices=["copartitioned", "hop"], action="append",
                    help="dlabel's inputs mode (repeatable; default copartitioned)")
    ap.add_argument("--peer", choices=["kafka-streams", "quix"], action="append",
                    help="peers to run (repeatable; default: both on kafka, quix on tansu)")
    ap.add_argument("--ks-store", choices=["memory", "rocksdb"], default="rocksdb",
                    help="Kafka Streams' join stores (default rocksdb, Kafka Streams' own "
                         "default; memory: its in-memory stores copy their keys on every "
                         "iterator, and the left join scans its outer store on every record)")
    ap.add_argument("--ks-emit-interval-ms", type=int, default=0,
                    help="Kafka Streams' (internal) interval between emissions of a left "
                         "join's unmatched records (its default 1000 ms of wall time; then "
                         "the last windows may never be emitted, see the README notes)")
    ap.add_argument("--quix-grace-ms", type=int, default=None,
                    help="Quix's join_interval grace_ms (default: label window + "
                         "allowed_lateness, as dlabel's)")
    ap.add_argument("--quiet", type=float, default=8.0,
                    help="a peer is stopped once its output has been quiet this long")
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--table-from", type=Path, metavar="LOG",
                    help="print the table again from the JSON lines of an earlier run's "
                         "output (with that run's --engine, --requests, --guarantee)")
    args = ap.parse_args()
    if args.table_from:
        return table_from_log(args)
    guarantee = bj.AUTO[args.engine] if args.guarantee == "auto" else args.guarantee
    if args.engine == "tansu" and guarantee == "exactly_once":
        raise SystemExit("Tansu has no transactions: --guarantee at_least_once or auto")
    peers = args.peer or (["kafka-streams", "quix"] if args.engine == "kafka" else ["quix"])
    systems = ["raw", *(f"dlabel-{i}" for i in (args.inputs or ["copartitioned"])), *peers]
    ctx: dict = {"args": args, "guarantee": guarantee}
    if "kafka-streams" in peers:
        ctx["ks_classpath"] = build_kafka_streams()
    if "quix" in peers:
        ctx["quix_python"] = quix_python()
    print(f"# uptime at start: {os.getloadavg()}", flush=True)
    rows: dict[str, list[dict]] = {s: [] for s in systems}
    failed = 0
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        broker = bj.start_brokers(stack, [args.engine])[args.engine]
        ctx["broker"] = broker
        for run in range(args.runs):
            work = Path(tmp) / f"run{run}"
            work.mkdir()
            name = f"peers{run}-{os.getpid()}"
            path = write_pipeline(work, "ctr", broker.url, name, partitions=args.partitions)
            cfg = load(path)
            events = generate(cfg, "ctr", args.requests, seed=run + 1)
            expected = expected_examples(path, [e.value for e in events if e.role == "requests"],
                                         [e.value for e in events if e.role == "feedback"],
                                         PII_KEY.encode())
            create_input_topics(broker.bootstrap, cfg)
            produce(broker.bootstrap, cfg, events)
            end_ts = max(e.ts for e in events) + cfg.join.label_window_ms \
                + cfg.join.allowed_lateness_ms + 3_600_000
            produce_end_markers(broker.bootstrap, [cfg.topics.requests, cfg.topics.feedback],
                                cfg.topics.partitions, end_ts,
                                max(e.arrival_ms or e.ts for e in events))
            del events
            ctx.update(path=path, cfg=cfg, name=name, expected=expected,
                       dataset_window_ms=parse_duration_ms(
                           yaml.safe_load(path.read_text())["dataset"]["window"]),
                       n_in=bj.input_count(broker.bootstrap,
                                           [cfg.topics.requests, cfg.topics.feedback],
                                           cfg.topics.partitions))
            order = systems[run % len(systems):] + systems[:run % len(systems)]
            raw_eps = None
            results = {}
            for system in order:
                sw = work / system
                sw.mkdir()
                results[system] = row = measure(system, ctx, sw)
                print(json.dumps({"run": run, **{k: (round(v, 3) if isinstance(v, float) else v)
                                                 for k, v in row.items()}}), flush=True)
            raw_eps = results["raw"]["eps"]
            for system, row in results.items():
                row["ratio"] = row["eps"] / raw_eps
                if system != "raw":
                    row["ratio_from_start"] = row["eps_from_start"] / raw_eps
                    if not row["work_ok"]:
                        failed += 1
                        print(f"# {system}, run {run}: its labels are not the oracle's "
                              f"(ids or positives): {json.dumps(row)}", flush=True)
                rows[system].append(row)
    print(f"# uptime at the end: {os.getloadavg()}", flush=True)
    print_table(args, guarantee, rows)
    if failed:
        print(f"\n# {failed} system run(s) did not label as the oracle does: see above")


def table_from_log(args) -> None:
    """The table of an earlier run, from its JSON lines (ratios per run recomputed)."""
    runs: dict[int, dict[str, dict]] = {}
    for line in args.table_from.read_text().splitlines():
        if line.startswith("{") and '"system"' in line:
            row = json.loads(line)
            runs.setdefault(row["run"], {})[row["system"]] = row
    rows: dict[str, list[dict]] = {}
    for results in runs.values():
        if "raw" not in results:
            continue
        for system, row in results.items():
            row["ratio"] = row["eps"] / results["raw"]["eps"]
            if system != "raw":
                row["ratio_from_start"] = row["eps_from_start"] / results["raw"]["eps"]
                row.setdefault("ev_per_cpu_s", row["events"] / max(row["cpu_s"], 0.01))
            rows.setdefault(system, []).append(row)
    args.runs = len(runs)
    guarantee = bj.AUTO[args.engine] if args.guarantee == "auto" else args.guarantee
    print_table(args, guarantee, {"raw": rows.pop("raw"), **rows})


def print_table(args, guarantee: str, rows: dict[str, list[dict]]) -> None:
    def med(system: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[system])
    print(f"\n{args.engine}, {guarantee}, {args.requests:,} requests "
          f"({statistics.median(r['events'] for r in rows['raw']):,.0f} input records), "
          f"{args.partitions} partitions, median of {args.runs} runs (ratios per run, then "
          f"the median); load average (1 min) at each start: "
          f"{min(r['load1'] for rs in rows.values() for r in rs):.1f}-"
          f"{max(r['load1'] for rs in rows.values() for r in rs):.1f}\n")
    print("| system | ev/s (first record -> last output) | ratio to raw | ev/s from process "
          "start | ratio from start | CPU s (process, whole life) | events per CPU-s | "
          "peak RSS MiB (per run) | outputs | labeled ids | positives (oracle) | same ids "
          "and positives as the oracle | fields = oracle |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    r = rows["raw"]
    raw_cpu = (f"{med('raw', 'cpu_s'):.1f} | {med('raw', 'ev_per_cpu_s'):,.0f}"
               if all("cpu_s" in x for x in r) else " | ")
    print(f"| raw aiokafka getmany + json.loads | {med('raw', 'eps'):,.0f} | 1.0 | | | "
          f"{raw_cpu} | | | | | | |")
    for system, rs in rows.items():
        if system == "raw":
            continue
        print(f"| {system} | {med(system, 'eps'):,.0f} | {med(system, 'ratio'):.3f} | "
              f"{med(system, 'eps_from_start'):,.0f} | {med(system, 'ratio_from_start'):.3f} | "
              f"{med(system, 'cpu_s'):.1f} | {med(system, 'ev_per_cpu_s'):,.0f} | "
              f"{' / '.join(format(x['peak_rss_mib'], '.0f') for x in rs)} | "
              f"{med(system, 'outputs'):,.0f} | {med(system, 'labeled_ids'):,.0f} | "
              f"{med(system, 'positives'):,.0f} ({med(system, 'oracle_positives'):,.0f}) | "
              f"{sum(x['work_ok'] for x in rs)}/{len(rs)} runs | "
              f"{sum(x['fields_ok'] for x in rs)}/{len(rs)} runs |")
    del r


if __name__ == "__main__":
    main()
