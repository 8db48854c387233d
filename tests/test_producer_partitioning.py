"""Inputs partitioned as real producers partition them, through the repartition hop.

DESIGN.md ("Inputs as real producers write them"): librdkafka (confluent-kafka) hashes
keys with crc32 by default, Java clients and aiokafka with murmur2, and an unkeyed
record lands on any partition; labels must equal the oracle whatever the producers do,
with any number of join workers.

- ``test_foreign_partitioners_two_workers_rebalance``: requests keyed by request id from
  confluent-kafka with its default partitioner (crc32) to a 3-partition topic, feedback
  without a key from aiokafka to a 5-partition topic, the join's tasks 4. Two workers,
  a third joins mid-stream and leaves (SIGTERM), then a drain finalizes. The labeled
  topic and the Parquet dataset equal the oracle; the only orphan feedback is the
  simulator's deliberate orphans.
- ``test_copartitioned_misrouted_never_silent``: ``inputs: {copartitioned: true}`` is a
  promise the same producers break; every record on a partition other than its request
  id's murmur2 partition is dead-lettered ``misrouted`` (naming where it is), nothing
  misrouted is labeled, and the labels are exactly the oracle's over the records that
  were routed right.

Where each record landed is taken from the producers' delivery reports, not assumed.
"""
from __future__ import annotations

import asyncio
import signal
import zlib
from collections import Counter
from pathlib import Path

import pytest
import yaml

from streams.dev.simulate import SimEvent, generate
from streams.kafka.topics import INPUT_TOPIC_CONFIGS, ensure_topics
from tests.fault_probes import committed_offsets, wait_until
from tests.oracle import (InvalidEvent, assert_examples_match, expected_examples,
                          parse_config, parse_feedback, parse_request, read_dataset_examples)
from tests.pipeline_runs import (PII_KEY, assignments, dead_letters, kill_group, labeled_records, load,
                                 run_drain, start_worker, write_pipeline)
from tests.waiting import end_offsets

pytestmark = pytest.mark.broker


# ------------------------------------------------------------------ producing

class Placed:
    """One produced event and where the broker put it."""
    __slots__ = ("event", "partition", "offset")

    def __init__(self, event: SimEvent, partition: int, offset: int) -> None:
        self.event, self.partition, self.offset = event, partition, offset


def produce_requests_librdkafka(bootstrap: str, topic: str, events: list[SimEvent]
                                ) -> list[Placed]:
    """Requests keyed by request id through confluent-kafka with librdkafka's default
    partitioner (``consistent_random``: crc32 of the key); in order, flushed."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                         "enable.idempotence": False})  # NO partitioner setting
    placed: list = [None] * len(events)
    errors: list = []

    def report(i: int):
        def on_delivery(err, msg) -> None:
            if err is not None:
                errors.append(err)
            else:
                placed[i] = Placed(events[i], msg.partition(), msg.offset())
        return on_delivery

    for i, ev in enumerate(events):
        while True:
            try:
                producer.produce(topic, value=ev.value, key=ev.key,
                                 timestamp=ev.arrival_ms or ev.ts, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(120)
    assert left == 0 and not errors, f"confluent-kafka: {left} undelivered, errors {errors[:3]}"
    assert all(p is not None for p in placed)
    return placed


def produce_feedback_unkeyed(bootstrap: str, topic: str, events: list[SimEvent]
                             ) -> list[Placed]:
    """Feedback through aiokafka without a key: each record lands on any partition."""
    from aiokafka import AIOKafkaProducer

    async def run() -> list[Placed]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                    enable_idempotence=False, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value=ev.value,
                                           timestamp_ms=ev.arrival_ms or ev.ts)
                       for ev in events]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        return [Placed(ev, m.partition, m.offset) for ev, m in zip(events, metas)]
    return asyncio.run(run())


def produce_foreign(bootstrap: str, cfg, events: list[SimEvent]) -> list[Placed]:
    """Requests as a librdkafka model server, feedback as an unkeyed aiokafka shipper."""
    reqs = [e for e in events if e.role == "requests"]
    fbs = [e for e in events if e.role == "feedback"]
    return (produce_requests_librdkafka(bootstrap, cfg.topics.requests, reqs)
            + produce_feedback_unkeyed(bootstrap, cfg.topics.feedback, fbs))


def create_input_topics(bootstrap: str, counts: dict[str, int]) -> None:
    """Create the raw input topics with their own partition counts (as their owners
    would), before the pipeline's ``ensure_topics``."""
    from kafka.admin import KafkaAdminClient, NewTopic
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-setup")
    try:
        admin.create_topics([NewTopic(name, num_partitions=n, replication_factor=1,
                                      topic_configs=dict(INPUT_TOPIC_CONFIGS))
                             for name, n in counts.items()])
        admin.wait_for_topics(list(counts), timeout_ms=60_000)
    finally:
        admin.close()


def murmur2_partition(key: bytes, partitions: int) -> int:
    """The Java clients' default partition (aiokafka's implementation, not dlabel's)."""
    from aiokafka.partitioner import murmur2
    return (murmur2(key) & 0x7FFFFFFF) % partitions


# ------------------------------------------------------------------ observing


def last_assignment(log: Path) -> set[str]:
    got = assignments(log)
    return got[-1] if got else set()


def diagnosis(logs: dict[str, Path]) -> str:
    """What each worker's log says about its assignments and errors (for a failure)."""
    out = []
    for name, log in logs.items():
        if not log.exists():
            continue
        seen = assignments(log)
        last = sorted(seen[-1]) if seen else None
        out.append(f"{name}: {len(seen)} assignment(s) read, the last {last}")
        notes = [line[:300] for line in log.read_text(errors="replace").splitlines()
                 if " ERROR " in line or "Terminating cancelled task" in line]
        out.extend(f"  {line}" for line in notes[:8])
    return "\n".join(out)


def watched(logs: dict[str, Path], wait, *args, **kwargs):
    """``wait(*args, **kwargs)``; on a failure, with what the workers' logs say."""
    try:
        return wait(*args, **kwargs)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{diagnosis(logs)}") from None


def caught_up(bootstrap: str, group: str, ends: dict[tuple[str, int], int]) -> bool:
    got = committed_offsets(bootstrap, group)
    return all(got.get(tp, 0) >= end for tp, end in ends.items())


def topic_ends(bootstrap: str, topics) -> dict[tuple[str, int], int]:
    return {(t, p): end for t in topics for p, end in end_offsets(bootstrap, t).items()}


def wait_group_caught_up(bootstrap: str, cfg, what: str, alive: dict,
                         timeout: float = 420) -> None:
    """The join group committed every raw input record produced so far, and then every
    record the repartition hop had forwarded by then (the hop keeps sending watermark
    markers, so its topics' ends are taken once the raw inputs are committed)."""
    group = f"dlabel-{cfg.pipeline}"
    raw = topic_ends(bootstrap, (cfg.topics.requests, cfg.topics.feedback))
    wait_until(lambda: caught_up(bootstrap, group, raw), timeout,
               f"{what}: raw inputs committed", interval=0.5, alive=alive)
    hop = topic_ends(bootstrap, cfg.join_inputs.values())
    wait_until(lambda: caught_up(bootstrap, group, hop), timeout,
               f"{what}: repartition topics committed", interval=0.5, alive=alive)


def split(events: list[SimEvent]) -> tuple[list[bytes], list[bytes]]:
    return ([e.value for e in events if e.role == "requests"],
            [e.value for e in events if e.role == "feedback"])


def request_id(ocfg, role: str, value: bytes):
    """The request id the oracle reads from a valid event, None for an invalid one."""
    try:
        if role == "requests":
            return parse_request(value, ocfg, PII_KEY.encode()).request_id
        return parse_feedback(value, ocfg).request_id
    except InvalidEvent:
        return None


def check_positions(dls: list[dict], placed: list[Placed], cfg) -> None:
    """Each dead letter names the raw input record it holds: topic, partition, offset."""
    at = {(cfg.topics.requests if p.event.role == "requests" else cfg.topics.feedback,
           p.partition, p.offset): p.event.value for p in placed}
    wrong = [d for d in dls if at.get((d["topic"], d["partition"], d["offset"])) != d["original"]]
    named = [(d["reason"], d["topic"], d["partition"], d["offset"]) for d in wrong[:5]]
    assert not wrong, f"{len(wrong)} dead letter(s) do not name their input record, e.g. {named}"


# ------------------------------------------------------------------ the tests

@pytest.mark.ci  # the issue-12 scenario, on both brokers, in CI (about 1.5 min)
@pytest.mark.timeout(900)
def test_foreign_partitioners_two_workers_rebalance(any_broker, tmp_path, unique_name):
    broker = any_broker
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4)
    cfg = load(path)
    assert not cfg.inputs.copartitioned  # the default: the worker repartitions
    # the producers' topics, with their own partition counts (the join has 4 tasks)
    counts = {cfg.topics.requests: 3, cfg.topics.feedback: 5}
    create_input_topics(broker.bootstrap, counts)
    ensure_topics(broker.bootstrap, cfg)
    everything = ({f"{t}:{p}" for t, n in counts.items() for p in range(n)}
                  | {f"{t}:{p}" for t in cfg.join_inputs.values()
                     for p in range(cfg.topics.partitions)})

    events = generate(cfg, "ctr", 6000, seed=11, rate_per_s=0.5)
    t = len(events) // 3
    thirds = [events[:t], events[t:2 * t], events[2 * t:]]
    placed = produce_foreign(broker.bootstrap, cfg, thirds[0])

    logs = {name: tmp_path / f"{name}.log" for name in "ABC"}
    procs: dict = {}
    try:
        # two workers split every partition: the raw inputs (the hop) and the join's tasks
        procs["A"] = start_worker(path, logs["A"])
        procs["B"] = start_worker(path, logs["B"])
        alive = dict(procs)

        def two_split() -> bool:
            a, b = last_assignment(logs["A"]), last_assignment(logs["B"])
            return bool(a and b and not a & b and a | b == everything)
        watched(logs, wait_until, two_split, 300, "A and B share every partition",
                alive=alive)
        watched(logs, wait_group_caught_up, broker.bootstrap, cfg,
                "A and B consumed the first third", alive)

        # a third worker joins: the group splits the partitions three ways
        procs["C"] = start_worker(path, logs["C"])
        alive = dict(procs)

        def three_split() -> bool:
            shares = [last_assignment(logs[n]) for n in "ABC"]
            return (all(shares) and sum(map(len, shares)) == len(everything)
                    and set().union(*shares) == everything)
        watched(logs, wait_until, three_split, 300, "A, B and C share every partition",
                alive=alive)
        c_share = last_assignment(logs["C"])
        placed += produce_foreign(broker.bootstrap, cfg, thirds[1])
        watched(logs, wait_group_caught_up, broker.bootstrap, cfg,
                "A, B and C consumed the second third", alive)

        # C leaves gracefully; A and B take its partitions back
        kill_group(procs["C"], signal.SIGTERM, timeout=120)
        c_rc = procs.pop("C").returncode
        assert c_rc == 0, f"C exited {c_rc} on SIGTERM:\n{diagnosis({'C': logs['C']})}"
        alive = dict(procs)
        watched(logs, wait_until, two_split, 300, "A and B share every partition again",
                alive=alive)
        placed += produce_foreign(broker.bootstrap, cfg, thirds[2])
        watched(logs, wait_group_caught_up, broker.bootstrap, cfg,
                "A and B consumed the rest", alive)
        live, live_copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill_group(proc, signal.SIGTERM, timeout=120)
    # negatives of the last label window wait for the watermark: a drain finalizes them
    summary = run_drain(path, tmp_path / "drain.log", timeout=600)

    # the producers did what the issue says: requests by crc32 of the key over 3
    # partitions (not murmur2), feedback spread over the 5 without a key
    keyed = [p for p in placed if p.event.role == "requests" and p.event.key is not None]
    assert all(p.partition == zlib.crc32(p.event.key) % 3 for p in keyed)
    assert sum(p.partition != murmur2_partition(p.event.key, 3) for p in keyed) > len(keyed) / 2
    assert set(Counter(p.partition for p in placed if p.event.role == "feedback")) == set(range(5))

    reqs, fbs = split(events)
    expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
    assert len(expected) > 5000

    # what the live workers (2, then 3, then 2) labeled was already right
    assert set(live) <= set(expected), sorted(set(live) - set(expected))[:10]
    assert_examples_match({rid: expected[rid] for rid in live}, live)
    assert len(live) > len(expected) // 2, (len(live), len(expected))

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    assert_examples_match(expected, labeled)
    assert all(len(set(v)) == 1 for v in copies.values()), "a repeat differs from the original"
    assert all(copies[rid][:len(v)] == v for rid, v in live_copies.items())
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))

    dls = dead_letters(broker.bootstrap, cfg.topics.dead_letter)
    reasons = Counter(d["reason"] for d in dls)
    assert not reasons["late"] and not reasons["misrouted"], reasons
    # orphan feedback: exactly the simulator's deliberate orphans (valid feedback for an
    # id no valid request has), each named by its raw input record
    ocfg = parse_config(path)
    known = {None, *expected}
    orphans = {e.value for e in events if e.role == "feedback"
               and request_id(ocfg, "feedback", e.value) not in known}
    assert orphans and orphans == {e.value for e in events if e.kind == "orphan"}
    got_orphans = [d for d in dls if d["reason"] == "orphan_feedback"]
    assert {d["original"] for d in got_orphans} == orphans
    check_positions(dls, placed, cfg)
    print(f"C: {sorted(c_share)} exited {c_rc}; labeled={len(labeled)} live={len(live)} "
          f"repeated={sum(len(v) > 1 for v in copies.values())} dead={dict(reasons)} "
          f"drain: {summary}")


def test_copartitioned_misrouted_never_silent(any_broker, tmp_path, unique_name):
    broker = any_broker
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=4)
    data = yaml.safe_load(path.read_text())
    data["inputs"] = {"copartitioned": True}  # a promise these producers break
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    cfg = load(path)
    assert cfg.inputs.copartitioned
    n = cfg.topics.partitions
    ensure_topics(broker.bootstrap, cfg)

    events = generate(cfg, "ctr", 1500, seed=23, rate_per_s=0.5)
    placed = produce_foreign(broker.bootstrap, cfg, events)
    summary = run_drain(path, tmp_path / "drain.log", timeout=300)

    # which valid records sit on their request id's murmur2 partition (the promise)
    ocfg = parse_config(path)
    routed: list[Placed] = []
    misrouted: list[Placed] = []
    for p in placed:
        rid = request_id(ocfg, p.event.role, p.event.value)
        if rid is None:
            continue  # invalid: dead-lettered for what is wrong with it
        (routed if p.partition == murmur2_partition(rid.encode(), n) else misrouted).append(p)
    wrong_reqs = {request_id(ocfg, "requests", p.event.value) for p in misrouted
                  if p.event.role == "requests"}
    assert len(wrong_reqs) > 500  # crc32 is not murmur2: most requests are misrouted

    dls = dead_letters(broker.bootstrap, cfg.topics.dead_letter)
    check_positions(dls, placed, cfg)
    got = [d for d in dls if d["reason"] == "misrouted"]
    assert got, Counter(d["reason"] for d in dls)
    # never silent: every misrouted record, and nothing else, is dead-lettered misrouted
    want = {(p.event.role, p.partition, p.offset) for p in misrouted}
    role_of = {cfg.topics.requests: "requests", cfg.topics.feedback: "feedback"}
    have = {(role_of[d["topic"]], d["partition"], d["offset"]) for d in got}
    assert have == want, (f"{len(want - have)} misrouted record(s) not dead-lettered, e.g. "
                          f"{sorted(want - have)[:5]}; {len(have - want)} routed record(s) "
                          f"dead-lettered misrouted, e.g. {sorted(have - want)[:5]}")

    labeled, copies = labeled_records(broker.bootstrap, cfg.topics.labeled)
    assert all(len(set(v)) == 1 for v in copies.values()), "a repeat differs from the original"
    # nothing dead-lettered as misrouted is labeled
    assert not set(labeled) & wrong_reqs, sorted(set(labeled) & wrong_reqs)[:10]
    # every request the oracle labels is labeled or dead-lettered misrouted
    reqs, fbs = split(events)
    expected = expected_examples(path, reqs, fbs, PII_KEY.encode())
    lost = set(expected) - set(labeled) - wrong_reqs
    assert not lost, f"{len(lost)} request(s) neither labeled nor misrouted: {sorted(lost)[:10]}"
    # a label that differs from the oracle is explained by its misrouted positive feedback
    wrong_pos = {request_id(ocfg, "feedback", p.event.value) for p in misrouted
                 if p.event.role == "feedback" and b'"click"' in p.event.value}
    differs = {rid for rid, ex in labeled.items() if rid in expected
               and ex["label"] != expected[rid]["label"]}
    assert differs <= wrong_pos, sorted(differs - wrong_pos)[:10]
    # exactly: the labels are the oracle's over the records that were routed right
    r_reqs = [p.event.value for p in routed if p.event.role == "requests"]
    r_fbs = [p.event.value for p in routed if p.event.role == "feedback"]
    assert_examples_match(expected_examples(path, r_reqs, r_fbs, PII_KEY.encode()), labeled)
    print(f"misrouted={len(got)} (requests {len(wrong_reqs)}) labeled={len(labeled)} "
          f"differ from the full oracle={len(differs)} drain: {summary}")
