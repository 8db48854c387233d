"""The repartition hop without a broker: routing, dead letters, watermark markers, and
labels through the hop equal to the oracle whatever partitioned the inputs."""
from __future__ import annotations

import json
import random
import zlib

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from schemas.config import config_from_dict
from schemas.errors import EventError
from schemas.events import EventParser
from schemas.records import DeadLetter
from streams.join.processor import InputRecord, JoinProcessor
from streams.join.repartition import (SOURCE_HEADER, WATERMARK_HEADER, decode_source,
                                      decode_watermark, hop_task)
from streams.kafka.partitioner import murmur2, partition_for, partitions_for
from tests.join_cases import MIN, Run, config_dict, fb, req
from tests.test_fuzz import VALID, bad_event
from tests.oracle import assert_examples_match, expected_examples

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
JAVA_MURMUR2 = {b"21": -973932308, b"foobar": -790332482,
                b"a-little-bit-long-string": -985981536,
                b"a-little-bit-longer-string": -1486304829,
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
                b"abc": 479470107}


def test_murmur2_is_the_java_clients():
    for data, want in JAVA_MURMUR2.items():
        assert murmur2(data) == want
    rnd = random.Random(7)
    aiokafka = DefaultPartitioner()
    for _ in range(2000):
        key = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 48)))
        assert murmur2(key) & 0xFFFFFFFF == kafka_python_murmur2(key) & 0xFFFFFFFF
        n = rnd.randint(1, 12)
        assert partition_for(key, n) == aiokafka(key, list(range(n)), list(range(n)))


def test_partitions_for_a_batch_is_the_java_clients():
    """The vectorised batch hash: every length class (0-3 trailing bytes, no whole word,
    many words), batches of one length and of mixed lengths, small and large batches,
    keys whose hash has the top bit set: each as the Java clients partition it."""
    aiokafka = DefaultPartitioner()
    rnd = random.Random(11)
    java = list(JAVA_MURMUR2)
    for n in (1, 2, 3, 4, 5, 7, 12):
        batch = java * 5  # above the per-key cut-off, mixed lengths
        assert partitions_for(batch, n) == [(v & 0x7FFFFFFF) % n for v in
                                             (JAVA_MURMUR2[k] for k in batch)]
    for _ in range(300):
        n = rnd.randint(1, 12)
        if rnd.random() < 0.5:  # one length: the single-group path
            length = rnd.randint(0, 40)
            keys = [bytes(rnd.getrandbits(8) for _ in range(length))
                    for _ in range(rnd.randint(0, 80))]
        else:
            keys = [bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
                    for _ in range(rnd.randint(0, 80))]
        want = [aiokafka(k, list(range(n)), list(range(n))) for k in keys]
        assert partitions_for(keys, n) == want
        assert [partition_for(k, n) for k in keys] == want
    uuids = [b"%032x" % rnd.getrandbits(128) for _ in range(5000)]
    assert partitions_for(uuids, 4) == [partition_for(k, 4) for k in uuids]


def _config(partitions: int = 2, **inputs) -> dict:
    d = config_dict(partitions=partitions)
    if inputs:
        d["inputs"] = inputs
    return d


def test_forward_routes_by_key_and_dead_letters_at_the_hop():
    cfg = config_from_dict(_config(partitions=3))
    proc = JoinProcessor(cfg, None, clock=lambda: 0)
    records = [InputRecord(10, fb("a", 1000)), InputRecord(11, b"{not json"),
               InputRecord(12, fb("b", 2000)), InputRecord(13, None)]
    forwards, dead = proc.forward("feedback", 4, records)
    assert [(f.key, f.value) for f in forwards] == [(b"a", records[0].value),
                                                    (b"b", records[2].value)]
    for f in forwards:
        assert f.task == partition_for(f.key, 3)
        (name, header), = f.headers
        assert name == SOURCE_HEADER
    assert [decode_source(f.headers[0][1]) for f in forwards] == [(4, 10), (4, 12)]
    assert [(d.reason, d.topic, d.partition, d.offset, d.task) for d in dead] == [
        ("malformed_json", "t.feedback", 4, 11, hop_task("feedback", 4)),
        ("malformed_json", "t.feedback", 4, 13, hop_task("feedback", 4))]
    assert proc.dead_letters == {"malformed_json": 2} and proc.records_in["feedback"] == 4
    markers = proc.repartitioner.markers("feedback", 4, at_end=True)
    assert sorted(m.task for m in markers) == [0, 1, 2]
    assert {decode_watermark(m.headers[0][1]) for m in markers} == {(4, 2000, True)}
    assert all(m.headers[0][0] == WATERMARK_HEADER for m in markers)
    assert decode_watermark(proc.repartitioner.markers("requests", 0, False)[0].headers[0][1]) \
        == (0, None, False)


class Hop:
    """Drives production's hop and join tasks by hand: input partitions -> forwards ->
    per-task repartition logs -> one JoinProcessor per task (as separate workers)."""

    def __init__(self, config: dict, inputs: int) -> None:
        self.config = config_from_dict(config)
        self.tasks = self.config.topics.partitions
        self.inputs = inputs
        self.hop = JoinProcessor(self.config, None, clock=lambda: 0)
        self.join = [JoinProcessor(self.config, None, clock=lambda: 0)
                     for _ in range(self.tasks)]
        for task, proc in enumerate(self.join):
            proc.watermark.assign({(role, (origin, task)) for role in ("requests", "feedback")
                                   for origin in range(inputs)})
        self.offsets: dict[tuple[str, int], int] = {}
        self.log: dict[tuple[str, int], list] = {}   # (role, task) -> undelivered records
        self.run = Run()
        self.positions: list[tuple[str, int, int]] = []

    def produce(self, role: str, partition: int, raw: bytes) -> None:
        """One input record through the hop (a batch of one), then its markers."""
        off = self.offsets.get((role, partition), 0)
        self.offsets[(role, partition)] = off + 1
        self.positions.append((role, partition, off))
        forwards, dead = self.hop.forward(role, partition, [InputRecord(off, raw)])
        self.run.take(dead)
        for f in forwards + self.hop.repartitioner.markers(role, partition, at_end=False):
            self.log.setdefault((role, f.task), []).append(
                InputRecord(len(self.log.get((role, f.task), [])), f.value, tuple(f.headers)))

    def deliver(self, role: str, task: int) -> None:
        """The task's worker reads what its repartition partition holds so far."""
        records = self.log.pop((role, task), [])
        if records:
            self.run.take(self.join[task].process_forwarded(role, task, records))
        self.run.take(self.join[task].tick())

    def deliver_all(self) -> None:
        for role in ("requests", "feedback"):
            for task in range(self.tasks):
                self.deliver(role, task)

    def drain(self) -> Run:
        self.deliver_all()
        for proc in self.join:
            self.run.take(proc.drain())
        return self.run


def _arrivals(seed: int, n: int = 120) -> list[tuple[str, bytes]]:
    rnd = random.Random(seed)
    out = []
    t = 0
    for i in range(n):
        t += rnd.randint(0, 40_000)
        rid = f"r{i}"
        out.append((t + rnd.randint(0, 30_000), "requests", req(rid, t, price=1.0)))
        for _ in range(rnd.choice((0, 0, 1, 2))):
            ft = t + rnd.randint(-60_000, 40 * MIN)
            out.append((ft + rnd.randint(0, 20_000), "feedback",
                        fb(rid, ft, rnd.choice(("click", "view")))))
    out.sort(key=lambda a: a[0])
    return [(role, raw) for _, role, raw in out]


@pytest.mark.parametrize("partitioner", ["crc32", "unkeyed", "murmur2"])
@pytest.mark.parametrize("seed", range(6))
def test_labels_through_the_hop_equal_the_oracle(partitioner, seed):
    """Inputs partitioned by crc32, round-robin or murmur2 over 3 input partitions, the
    hop into 2 tasks delivered at random moments: labels equal the oracle's, and no
    event is late that the allowed lateness covers."""
    config = _config(partitions=2)
    hop = Hop(config, inputs=3)
    rnd = random.Random(seed)
    arrivals = _arrivals(seed)
    rr = 0
    for role, raw in arrivals:
        rid = json.loads(raw)["request_id"].encode()
        if partitioner == "crc32":
            p = zlib.crc32(rid) % 3
        elif partitioner == "murmur2":
            p = partition_for(rid, 3)
        else:
            p, rr = rr % 3, rr + 1
        hop.produce(role, p, raw)
        if rnd.random() < 0.3:  # a task's worker reads its repartition partition now
            hop.deliver(rnd.choice(("requests", "feedback")), rnd.randrange(2))
    run = hop.drain()
    assert "late" not in run.reasons() and "orphan_feedback" not in run.reasons()
    expected = expected_examples(config, [r for role, r in arrivals if role == "requests"],
                                 [r for role, r in arrivals if role == "feedback"], None)
    assert_examples_match(expected, run.emitted)


def test_a_slow_input_partition_holds_the_watermark_back():
    """Input partition 1 lags far behind partition 0 (a backlog the hop reads later): its
    events are not late, as without the hop, because each task tracks event time per
    input partition from the hop's markers."""
    config = _config(partitions=2)
    hop = Hop(config, inputs=2)
    for i in range(40):  # partition 0 runs 10 hours ahead
        hop.produce("requests", 0, req(f"a{i}", i * 15 * MIN))
        hop.produce("feedback", 0, fb(f"a{i}", i * 15 * MIN + 1000))
    hop.deliver_all()
    assert all(p.join.closed_time is None for p in hop.join)  # partition 1 unheard of
    hop.produce("requests", 1, req("old", 5 * MIN))
    hop.produce("feedback", 1, fb("old", 6 * MIN))
    run = hop.drain()
    assert "late" not in run.reasons()
    assert run.labeled["old"]["label"] == 1
    # without per-input-partition event time, partition 0 would have closed past it:
    # the markers carry each input partition's own event time
    assert min(p.watermark.max_ts("requests", (1, t)) or 0 for t, p in enumerate(hop.join)
               if p.watermark.max_ts("requests", (1, t)) is not None) == 5 * MIN


def test_copartitioned_inputs_dead_letter_a_misrouted_event():
    config = config_from_dict(_config(partitions=4, copartitioned=True))
    proc = JoinProcessor(config, None, clock=lambda: 0)
    good = next(f"r{i}" for i in range(100) if partition_for(f"r{i}".encode(), 4) == 2)
    bad = next(f"r{i}" for i in range(100) if partition_for(f"r{i}".encode(), 4) != 2)
    out = proc.process("requests", 2, [InputRecord(0, req(good, 0)), InputRecord(1, req(bad, 0)),
                                      InputRecord(2, fb(bad, 10))])
    dead = [o for o in out if isinstance(o, DeadLetter)]
    assert [(d.reason, d.partition, d.offset) for d in dead] == [("misrouted", 2, 1),
                                                                 ("misrouted", 2, 2)]
    assert "murmur2" in dead[0].detail and "inputs.copartitioned" in dead[0].detail
    assert good in proc.join.pending and bad not in proc.join.pending
    assert proc.dead_letters == {"misrouted": 2}


def test_events_are_known_by_input_partition_and_offset():
    """Two feedback events at the same offset of different input partitions are two
    events (an identity of offset alone would take the second for a replay of the
    first), and a dead letter names the input record, not the task."""
    config = _config(partitions=1)
    hop = Hop(config, inputs=2)
    hop.produce("feedback", 0, fb("r", 2 * MIN, "view"))   # offset 0 of partition 0
    hop.produce("feedback", 1, fb("r", 3 * MIN, "click"))  # offset 0 of partition 1
    hop.produce("requests", 1, req("r", MIN))              # the request comes after both
    hop.produce("requests", 0, req("r", MIN))              # a duplicate, read elsewhere
    run = hop.drain()
    assert run.labeled["r"]["label"] == 1
    dup, = [d for d in run.dead if d["reason"] == "duplicate_request"]
    assert (dup["topic"], dup["partition"], dup["offset"]) == ("t.requests", 0, 0)
    assert "partition 1 offset 0" in dup["detail"]


def test_an_at_least_once_hop_replay_is_skipped_not_late():
    """A hop that crashed before committing its input offsets forwards those records
    again, after the markers it had sent: the join skips them by their input offsets
    (they were joined already) instead of calling them late."""
    config = _config(partitions=1)
    hop = Hop(config, inputs=1)
    hop.produce("requests", 0, req("a", MIN))
    hop.produce("feedback", 0, fb("a", 2 * MIN))
    for i in range(10):  # event time moves on by hours
        hop.produce("requests", 0, req(f"b{i}", (60 + 30 * i) * MIN))
    hop.deliver_all()
    replay = Hop(config, inputs=1)  # the restarted hop, from the committed offset 0
    replay.log, replay.join, replay.run = hop.log, hop.join, hop.run
    replay.produce("feedback", 0, fb("a", 2 * MIN))
    replay.produce("requests", 0, req("a", MIN))
    run = replay.drain()
    assert "late" not in run.reasons() and "duplicate_request" not in run.reasons()
    assert run.labeled["a"]["label"] == 1
    assert sum(p.reforwarded for p in hop.join) == 2


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(bad=st.lists(bad_event(), min_size=1, max_size=20), unit=st.sampled_from(["ms", "s"]))
def test_the_hop_reads_key_and_time_exactly_as_the_parser(bad, unit):
    """The hop reads only the key and the event time: an event it cannot route gets the
    reason and detail the full parse gives it, and one it routes has the key and time
    the full parse finds (or is invalid in another field: the join's to find)."""
    data = _config(partitions=2)
    data["inputs"] = {"requests": {"ts_unit": unit}, "feedback": {"ts_unit": unit}}
    parser = EventParser(config_from_dict(data), None)
    events = bad + [(e.role, e.value, None) for e in VALID[:40]] + [
        ("requests", b'{"request_id": "a", "ts": 1.5e21}', None),
        ("requests", b'{"request_id": 123456789012345678901234, "ts": 0}', None),
        ("feedback", b'{"request_id": "b", "ts": 1795000000.1234567891}', None),
        ("feedback", b'{"request_id": "\\ud800", "ts": 0}', None)]
    for role, raw, _ in events:
        route = parser.route_request if role == "requests" else parser.route_feedback
        parse = parser.parse_request if role == "requests" else parser.parse_feedback
        try:
            full = parse(raw)
        except EventError as exc:
            full = exc
        try:
            rid, ts = route(raw)
        except EventError as exc:
            assert isinstance(full, EventError), (raw[:80], exc.reason)
            assert (exc.reason, exc.detail) == (full.reason, full.detail), raw[:80]
            continue
        if not isinstance(full, EventError):
            assert (rid, ts) == (full.request_id, full.ts), raw[:80]


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(bad=st.lists(bad_event(), min_size=30, max_size=30),
       slots=st.lists(st.integers(0, len(VALID)), min_size=30, max_size=30))
def test_dead_letters_through_the_hop_are_those_without_it(bad, slots):
    """Bad events among valid ones, through the hop (the hop dead-letters those without a
    usable key or time, the join the rest, from the source header) and without it: the
    same dead letters (reason, detail, input topic, partition, offset, original bytes)
    and labels equal to the oracle's. (A large allowed lateness: through the hop an
    invalid event with a valid time counts for event time, see ``Repartitioner``.)"""
    data = config_dict("binary", lateness="3650d", partitions=2)
    arrivals = [(e.role, e.value) for e in VALID]
    for i in sorted(range(len(bad)), key=lambda i: slots[i], reverse=True):
        arrivals.insert(slots[i], bad[i][:2])
    hop = Hop(data, inputs=3)
    for i, (role, raw) in enumerate(arrivals):
        hop.produce(role, _input_partition(raw, 3), raw)
        if i % 13 == 0:
            hop.deliver_all()
    through = hop.drain()
    direct, proc, offsets = Run(), JoinProcessor(config_from_dict(data), None, lambda: 0), {}
    for role, raw in arrivals:  # the same input partitions and offsets, no hop
        part = _input_partition(raw, 3)
        offsets[(role, part)] = off = offsets.get((role, part), -1) + 1
        direct.take(proc.process(role, part, [InputRecord(off, raw)]))
        direct.take(proc.tick())
    direct.take(proc.drain())

    def letters(run):
        return sorted((d["reason"], d["detail"], d["topic"], d["partition"], d["offset"],
                       d["original"]) for d in run.dead)
    assert letters(through) == letters(direct)
    reqs = [v for r, v in arrivals if r == "requests"]
    fbs = [v for r, v in arrivals if r == "feedback"]
    assert_examples_match(expected_examples(data, reqs, fbs), through.emitted)


def _input_partition(raw: bytes, partitions: int) -> int:
    """An arrival's input partition: crc32 of its id, as a librdkafka producer would."""
    try:
        rid = json.loads(raw).get("request_id")
    except Exception:
        return 0
    return zlib.crc32(str(rid).encode("utf-8", "surrogatepass")) % partitions
