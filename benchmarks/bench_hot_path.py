r"""The join worker's per-event work in-process, by phase, without Kafka I/O.

    python benchmarks/bench_hot_path.py --requests 100000 --reps 3
    git archive HEAD | tar -x -C /tmp/before   # a checkout to compare with
    python benchmarks/bench_hot_path.py --code /tmp/before --code . --reps 3
    py-spy record -o hot.svg -- python benchmarks/bench_hot_path.py --reps 1

What the worker does with the default repartition hop, batch by batch (``--batch-size``
records, a fair share from each of the 2 x ``--partitions`` input partitions), with the
broker replaced by lists: the hop (``JoinProcessor.forward``, the watermark markers, each
forward appended to an aiokafka record batch as the publisher does), the join over the
forwarded records (``process_forwarded`` per task, then ``tick``), the outputs encoded
into record batches (labeled examples, dead letters), the changed state encoded as
changelog records (``take_dirty`` + ``encode_changes``), and at the end the drain.
The garbage collector is tuned as in the worker (``batch_loop.tune_gc``). Microseconds of
CPU time (``time.process_time``: less sensitive to other processes on a shared machine
than wall time) per input event, per phase, median of ``--reps``; each
``--code`` checkout runs in its own child process, alternating, on the same events.
Timing is not asserted anywhere.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("hop", "join", "outputs", "state", "drain")


def measure(requests: int, partitions: int, batch_size: int, reps: int) -> list[dict]:
    """Run the phases ``reps`` times over the same events with the code on ``sys.path``;
    the CPU seconds of each phase per run, and the events."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    from schemas.pii import PiiHasher
    from schemas.records import DeadLetter, encode_labeled
    from streams.dev.simulate import generate
    from streams.join.batch_commit import encode_changes
    from streams.join.batch_loop import tune_gc
    from streams.join.join_state import LabeledOut
    from streams.join.processor import InputRecord, JoinProcessor
    from tests.pipeline_runs import PII_KEY, load, write_pipeline

    cfg = load(write_pipeline(Path(tempfile.mkdtemp()), "ctr", "kafka://127.0.0.1:1", "hot",
                              partitions=partitions))
    events = generate(cfg, "ctr", requests, seed=1)

    class Batches:
        """Records appended to aiokafka record batches, as ``BatchPublisher.add`` does."""

        def __init__(self) -> None:
            self.open: dict = {}

        def add(self, topic, partition, key, value, headers=None) -> None:
            b = self.open.get((topic, partition))
            if b is None or b.append(0, timestamp=None, key=key, value=value,
                                     headers=headers or []) is None:
                b = self.open[(topic, partition)] = DefaultRecordBatchBuilder(
                    magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                    producer_epoch=-1, base_sequence=-1, batch_size=256 * 1024)
                b.append(0, timestamp=None, key=key, value=value, headers=headers or [])

        def for_task(self, task) -> "Batches":
            return self

    def publish(outs, pub: Batches) -> None:
        for o in outs:
            if type(o) is LabeledOut:
                ex = o.example
                pub.add("labeled", o.partition, ex["request_id"].encode(), encode_labeled(ex))
            elif type(o) is DeadLetter:
                pub.add("dead-letter", 0, None, o.encode())

    inputs: dict = {(role, p): [] for role in ("requests", "feedback")
                    for p in range(partitions)}
    for i, e in enumerate(events):  # keyed ones by their key's hash, unkeyed round-robin
        part = inputs[(e.role, (hash(e.key) if e.key else i) % partitions)]
        part.append(InputRecord(len(part), e.value))
    n = len(events)
    prefix = {"request": "r:", "early": "e:"}
    tune_gc()  # the worker's collector thresholds
    runs = []
    for _ in range(reps):
        gc.collect()
        proc = JoinProcessor(cfg, PiiHasher(PII_KEY.encode()), clock=lambda: 0)
        proc.watermark.assign({(role, (o, t)) for role in ("requests", "feedback")
                               for o in range(partitions) for t in range(partitions)})
        pub, state = Batches(), Batches()
        pos = dict.fromkeys(inputs, 0)
        share = max(1, batch_size // len(inputs))
        spent = dict.fromkeys(PHASES, 0.0)
        while any(pos[k] < len(v) for k, v in inputs.items()):
            t0 = time.process_time()
            logs: dict = {}  # (role, task) -> the repartition partition's new records
            for (role, p), recs in inputs.items():
                chunk = recs[pos[(role, p)]:pos[(role, p)] + share]
                pos[(role, p)] += len(chunk)
                if not chunk:
                    continue
                forwards, dead = proc.forward(role, p, chunk)
                publish(dead, pub)
                for f in forwards + proc.repartitioner.markers(role, p, False):
                    pub.add(role, f.task, f.key, f.value, f.headers)
                    log = logs.setdefault((role, f.task), [])
                    log.append(InputRecord(len(log), f.value, tuple(f.headers)))
            t1 = time.process_time()
            outs = []
            for (role, task), recs in logs.items():
                outs.extend(proc.process_forwarded(role, task, recs))
            outs.extend(proc.tick())
            t2 = time.process_time()
            publish(outs, pub)
            t3 = time.process_time()
            encode_changes(proc.join.take_dirty(), prefix, "changelog", state, False)
            t4 = time.process_time()
            for phase, s in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[phase] += s
        t0 = time.process_time()
        publish(proc.drain(), pub)
        encode_changes(proc.join.take_dirty(), prefix, "changelog", state, False)
        spent["drain"] = time.process_time() - t0
        runs.append({"events": n, **spent, "labeled": proc.join.counts.get("labeled", 0),
                     "dead_letters": dict(sorted(proc.dead_letters.items()))})
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--code", type=Path, action="append", default=[],
                    help="a checkout to measure (repeatable; default: this one); each runs "
                         "in a child process, alternating")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --code: how many times to alternate the checkouts")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # sys.path[0] is the checkout to measure
        print(json.dumps(measure(args.requests, args.partitions, args.batch_size, args.reps)))
        return
    codes = [c.resolve() for c in args.code] or [ROOT]
    results: dict = {str(c): [] for c in codes}
    for _ in range(args.rounds):
        for code in codes:
            out = subprocess.run(
                [sys.executable, "-c", "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
                 "sys.argv = [sys.argv[2]] + sys.argv[3:]; runpy.run_path(sys.argv[0], "
                 "run_name='__main__')", str(code), __file__, "--child", "--requests",
                 str(args.requests), "--partitions", str(args.partitions), "--batch-size",
                 str(args.batch_size), "--reps", str(args.reps)],
                capture_output=True, text=True, check=True, cwd=code)
            results[str(code)].extend(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| code | events | " + " | ".join(f"{p} us/event" for p in PHASES)
          + " | total us/event | labeled |")
    print("|---|---|" + "---|" * (len(PHASES) + 2))
    for code, runs in results.items():
        n = runs[0]["events"]
        med = {p: statistics.median(r[p] for r in runs) / n * 1e6 for p in PHASES}
        print(f"| {code} | {n:,} | " + " | ".join(f"{med[p]:.2f}" for p in PHASES)
              + f" | {sum(med.values()):.2f} | {runs[0]['labeled']:,} |")
    print(f"\nmedian of {len(next(iter(results.values())))} runs each; CPU time "
          "(time.process_time) per input event")
    for code, runs in results.items():  # the same events: the same dead letters by reason
        print(f"dead letters, {code}: {runs[0]['dead_letters']}")


if __name__ == "__main__":
    main()
