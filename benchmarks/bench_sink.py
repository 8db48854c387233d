"""Dataset sink throughput vs the raw consume rate and a plain Parquet write, on the embedded broker.

    python benchmarks/bench_sink.py --rows 200000 --runs 3

Per run, on one freshly produced labeled topic (4 partitions, examples spread over
hourly windows, plus the join's "drained" watermark reports):
  1. raw: kafka-python (the sink's client) reads every record + json.loads (the ceiling);
  2. sink: ``DatasetSink`` in drain mode, from the first record to the last window's
     event: rows/s into committed Parquet, with manifests and windows events;
  3. write_table: the same rows, already in memory, through ``pyarrow.parquet.write_table``
     (one file per window): the cost of Parquet itself.
Plus the sink's window-close latency (trusted watermark past a window's close -> its
windows event sent). Medians over runs, as a Markdown table. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from schemas.config import load_config  # noqa: E402
from schemas.dataset_schema import arrow_schema, examples_to_table  # noqa: E402
from streams.kafka.broker import EmbeddedBroker  # noqa: E402
from streams.pipeline import prepare  # noqa: E402
from streams.dataset.sink import DatasetSink, SinkOptions  # noqa: E402
from schemas.closed_time_report import DRAINED, encode_report, input_names  # noqa: E402

HOUR = 3_600_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR


def make_examples(n: int) -> list[dict]:
    """``n`` labeled CTR examples over 24 hourly windows."""
    out = []
    step = 24 * HOUR // n
    for i in range(n):
        ts = T0 + i * step
        out.append({"request_id": f"r{i:09d}", "request_ts": ts, "window_start": ts - ts % HOUR,
                    "label": int(i % 15 == 0), "label_ts": ts + 1_800_000, "prediction": 0.07,
                    "model_version": "m1", "hour": (ts // HOUR) % 24,
                    "category": ("shoes", "bags", "hats", "mens_dress_shoes")[i % 4],
                    "price": 10.0 + i % 90, "user_email": f"{i:064x}"})
    return out


def produce_topic(bootstrap: str, cfg, examples: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
                             linger_ms=20, batch_size=512 << 10)
    ends: dict[int, int] = {}
    futures = []
    for ex in examples:
        p = hash(ex["request_id"]) % cfg.topics.partitions
        futures.append(producer.send(cfg.topics.labeled, key=ex["request_id"].encode(),
                                     value=json.dumps(ex).encode(), partition=p))
    for f in futures:
        meta = f.get(timeout=60)
        ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
    for name in input_names(cfg):
        producer.send(cfg.topics.closed_time, key=name.encode(),
                      value=encode_report(name, DRAINED, ends), partition=0).get(timeout=30)
    producer.close()


def raw_consume(bootstrap: str, topic: str, total: int) -> float:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                             max_poll_records=5000)
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    n, t0 = 0, time.perf_counter()
    while n < total:
        for records in consumer.poll(timeout_ms=1000, max_records=5000).values():
            for r in records:
                json.loads(r.value)
                n += 1
    elapsed = time.perf_counter() - t0
    consumer.close()
    return elapsed


def plain_write(cfg, examples: list[dict], out: Path) -> float:
    schema = arrow_schema(cfg)
    by_window: dict[int, list[dict]] = {}
    for ex in examples:
        by_window.setdefault(ex["window_start"], []).append(ex)
    t0 = time.perf_counter()
    for w, rows in by_window.items():
        pq.write_table(examples_to_table(rows, schema), out / f"{w}.parquet", compression="zstd")
    return time.perf_counter() - t0


def one_run(broker, rows: int, run: int, work: Path) -> dict:
    base = load_config(ROOT / "examples" / "ctr.yaml", broker=broker.url,
                       environ={"DLABEL_PII_KEY": "bench"})
    name = f"benchsink{run}{int(time.time())}"
    topics = dataclasses.replace(base.topics, requests=f"{name}.requests",
                                 feedback=f"{name}.feedback", labeled=f"{name}.labeled",
                                 dead_letter=f"{name}.dead-letter", windows=f"{name}.windows",
                                 closed_time=f"{name}.closed-time", partitions=4)
    cfg = dataclasses.replace(base, pipeline=name, topics=topics, dataset=dataclasses.replace(
        base.dataset, path=str(work / name / "data")))
    prepare(cfg, broker.bootstrap)
    examples = make_examples(rows)
    produce_topic(broker.bootstrap, cfg, examples)
    raw_s = raw_consume(broker.bootstrap, cfg.topics.labeled, rows)
    sink = DatasetSink(cfg, SinkOptions(bootstrap=broker.bootstrap, drain=True))
    t0 = time.perf_counter()
    summary = sink.run()
    sink_s = time.perf_counter() - t0
    plain_dir = work / name / "plain"
    plain_dir.mkdir(parents=True)
    write_s = plain_write(cfg, examples, plain_dir)
    assert summary["rows"] == rows, summary
    return {"raw_rows_s": rows / raw_s, "sink_rows_s": rows / sink_s,
            "write_table_rows_s": rows / write_s, "ratio": raw_s / sink_s,
            "close_latency_ms_max": summary["close_latency_ms_max"],
            "windows": summary["windows_closed"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="dlabel-bench-sink-") as tmp, \
            EmbeddedBroker(log_path=str(Path(tmp) / "broker.log")) as broker:
        broker.start()
        for run in range(args.runs):
            r = one_run(broker, args.rows, run, Path(tmp))
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}),
                  flush=True)
            results.append(r)
    print(f"\n{args.rows} labeled rows, 24 hourly windows, 4 partitions; medians of {args.runs} runs\n")
    print("| measure | median |\n|---|---|")
    for key in ("raw_rows_s", "sink_rows_s", "write_table_rows_s", "ratio",
                "close_latency_ms_max", "windows"):
        med = statistics.median(r[key] for r in results)
        print(f"| {key} | {med:,.3f} |" if isinstance(med, float) else f"| {key} | {med:,} |")


if __name__ == "__main__":
    main()
