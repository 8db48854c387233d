"""Seeing a running pipeline from the outside, and killing its processes in flight.

Nothing here reaches into the processes under test: they are observed through what
they leave behind - Kafka topics, consumer-group committed offsets, files in the
dataset and the model registry - and through the process table (``/proc``).

A kill is *proven in flight* by freezing the victim first (SIGSTOP, then waiting until
every thread of every process is stopped), reading the evidence while nothing of it
can change, and only then sending SIGKILL. A frozen process writes nothing, so what
is read is exactly the state the kill lands on; if it shows no work in flight, the
victim is let go again (SIGCONT) and the kill is tried later.

- join worker: the consumer group's committed input offsets, and the labeled records
  this incarnation of the worker produced from input at or past those offsets (their
  request, or the feedback that decided them): outputs on the broker for input nobody
  committed, which a restart reads and labels again;
- dataset sink: a commit half done - its intent (``_sink/p<N>.intent.json``) past the
  partition's checkpoint (``_sink/p<N>.json``) and some of its Parquet files already in
  place, visible to readers and not accounted for by the sink's own state;
- jobs runner: its job subprocess alive, for a window the registry has no record of
  (with or without the job's version already saved).

The deadlines of ``wait_until`` only bound a broken run; they are generous (the machine
has 2 cores, shared) and nothing asserts how fast anything is.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError

from streams.kafka.tansu_quirks import fetch_end_offsets
from tests import waiting


# ----------------------------------------------------------------- waiting on conditions

def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.2, alive: Optional[dict] = None) -> Any:
    """``tests.waiting.wait_until`` that also fails at once, naming it, when one of
    ``alive`` ({name: Popen}) exits meanwhile."""
    def check() -> Any:
        for name, proc in (alive or {}).items():
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}) while waiting for {what}")
        return predicate()
    return waiting.wait_until(check, timeout, interval, what)


# ----------------------------------------------------------------- the process table

def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc), [] once it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            pass
    return out


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return []


def group_members(pgid: int) -> list[int]:
    """Every live process of process group ``pgid``."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(name))
    return out


def sink_child(worker_pid: int) -> Optional[int]:
    """The dataset sink: the multiprocessing (spawn) child of a `dlabel worker`."""
    for pid in children(worker_pid):
        if any("spawn_main" in a for a in cmdline(pid)):
            return pid
    return None


def job_children(runner_pid: int) -> list[tuple[int, str]]:
    """``(pid, window)`` of each retraining job subprocess of a `dlabel jobs` runner."""
    out = []
    for pid in children(runner_pid):
        argv = cmdline(pid)
        if "jobs.job" in argv and "--window" in argv:
            out.append((pid, argv[argv.index("--window") + 1]))
    return out


def _all_stopped(pids: Iterable[int]) -> bool:
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue  # gone: nothing to wait for
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if state not in ("T", "t", "Z", "X"):
                return False
    return True


def freeze(pids: list[int], timeout: float = 30) -> None:
    """SIGSTOP each pid and wait until every thread of every one is stopped."""
    _signal_all(pids, signal.SIGSTOP)
    wait_until(lambda: _all_stopped(pids), timeout, f"processes {pids} stopped", interval=0.002)


def thaw(pids: list[int]) -> None:
    _signal_all(pids, signal.SIGCONT)


def sigkill(pids: list[int]) -> None:
    _signal_all(pids, signal.SIGKILL)


def _signal_all(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each pid (one already gone is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def sample_frozen(members: Callable[[], list[int]], probe: Callable[[], Any],
                  go_on: Callable[[], bool], rnd, timeout: float, what: str,
                  max_pause: float = 0.05) -> Any:
    """Freeze ``members()`` at random moments (a pause of up to ``max_pause`` s between
    samples) and call ``probe()`` while they are frozen. Returns the first truthy result
    with the processes *left frozen* (for the caller to kill); thaws them otherwise.
    Gives up (None) once ``go_on()`` is false; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(rnd.uniform(0.0, max_pause))  # the fault's moment: random
        pids = members()
        freeze(pids)
        try:
            result = probe()
        except BaseException:
            thaw(pids)
            raise
        if result:
            return result
        thaw(pids)
        if not go_on():
            return None
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")


# ----------------------------------------------------------------- Kafka, from outside

def _ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    """True end offset per partition (fetch high watermarks: right on Tansu too)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    ends = asyncio.run(fetch_end_offsets(bootstrap, tps))
    return {tp.partition: ends[tp] for tp in tps}


def committed_offsets(bootstrap: str, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets ``{(topic, partition): offset}`` on the broker."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-probe")
    try:
        got = admin.list_group_offsets(group).get(group, {}) or {}
    except CoordinatorNotAvailableError:  # Kafka: no group (or offsets topic) yet
        got = {}
    finally:
        admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in got.items()
            if meta is not None and meta.offset is not None and meta.offset >= 0}


def input_ends(bootstrap: str, topics, partitions: int) -> dict[tuple[str, int], int]:
    """End offsets of the join's two input topics, ``{(topic, partition): end}``."""
    return {(topic, p): end for topic in (topics.requests, topics.feedback)
            for p, end in _ends(bootstrap, topic, partitions).items()}


def join_committed(bootstrap: str, pipeline: str, ends: dict[tuple[str, int], int]) -> bool:
    """Whether the join group (``dlabel-<pipeline>``) committed up to ``ends``."""
    got = committed_offsets(bootstrap, f"dlabel-{pipeline}")
    return all(got.get(tp, 0) >= end for tp, end in ends.items())


def wait_join_caught_up(bootstrap: str, config, what: str, timeout: float = 180,
                        alive: Optional[dict] = None) -> None:
    """Wait until the join group committed every input record produced so far (with the
    repartition hop: forwarded them, then joined what it forwarded)."""
    ends = input_ends(bootstrap, config.topics, config.topics.partitions)
    wait_until(lambda: join_committed(bootstrap, config.pipeline, ends), timeout, what,
               interval=0.5, alive=alive)
    if config.repartitions:
        inputs = config.join_inputs
        ends = input_ends(bootstrap, types.SimpleNamespace(**inputs), config.topics.partitions)
        wait_until(lambda: join_committed(bootstrap, config.pipeline, ends), timeout,
                   what + " (the repartitioned inputs)", interval=0.5, alive=alive)


class BackgroundProducer(threading.Thread):
    """Produces events to a pipeline's input topics in a thread; ``join()`` re-raises."""

    def __init__(self, bootstrap: str, config, events: list) -> None:
        super().__init__(daemon=True)
        self._args = (bootstrap, config, events)
        self.error: Optional[BaseException] = None
        self.start()

    def run(self) -> None:
        from streams.dev.simulate import produce
        try:
            produce(*self._args)
        except BaseException as e:  # noqa: BLE001 - handed to join()
            self.error = e

    def join(self, timeout: Optional[float] = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


class TopicReader:
    """Reads a topic from the beginning, incrementally: each ``read()`` returns the
    records appended since the previous one, up to the topic's end as of the call."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                      enable_auto_commit=False, client_id="test-reader",
                                      max_partition_fetch_bytes=8 << 20)
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.next = {p: 0 for p in range(partitions)}  # next offset to read, per partition
        self.records: list = []                         # everything read so far

    def read(self, timeout: float = 120) -> list:
        ends = _ends(self.bootstrap, self.topic, self.partitions)
        new: list = []
        deadline = time.monotonic() + timeout
        while any(self.next[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: not read to {ends} within {timeout}s "
                                     f"(at {self.next})")
            for tp, recs in self.consumer.poll(timeout_ms=500).items():
                for r in recs:
                    if r.offset >= self.next[tp.partition]:
                        new.append(r)
                        self.next[tp.partition] = r.offset + 1
            for tp in self.tps:  # past transaction markers, which are never delivered
                self.next[tp.partition] = max(self.next[tp.partition], self.consumer.position(tp))
        self.records.extend(new)
        return new

    def close(self) -> None:
        self.consumer.close()


# ----------------------------------------------------------------- the join

@dataclass
class JoinEvidence:
    """What a frozen join worker had done: labeled outputs for input it had not committed.

    An output depends on its request (the example carries the request's features) and,
    for a positive (binary) or any regression label, on the feedback that decided it
    (``label_ts`` is that feedback's time): the worker had read those records when it
    sent the output. An output whose request or deciding feedback sits at or past the
    group's committed offset of its partition was made from uncommitted input: a restart
    reads that input again.
    """
    committed: dict[str, dict[int, int]]   # input topic -> partition -> committed offset
    input_ends: dict[str, dict[int, int]]  # input topic -> partition -> end offset
    outputs_past_commit: list[str]         # request ids, labeled by this incarnation
    labeled_by_incarnation: int
    attempts: int = 0                      # samples taken before this one (bookkeeping)

    def proven(self) -> bool:
        return bool(self.outputs_past_commit)

    def caught_up(self) -> bool:
        return all(self.committed[t].get(p, 0) >= end
                   for t, ends in self.input_ends.items() for p, end in ends.items())

    def summary(self) -> dict:
        return {"committed": self.committed, "input_ends": self.input_ends,
                "outputs_past_commit": len(self.outputs_past_commit),
                "example": self.outputs_past_commit[:3],
                "labeled_by_incarnation": self.labeled_by_incarnation}


class JoinWatch:
    """Follows the join's input topics and the labeled topic to tell, for a frozen join
    worker, which of its outputs the group's committed input offsets do not account for.

    The join's inputs are ``config.join_inputs``: the repartition topics (the hop forwards
    the original bytes, so they read like the inputs), or the inputs themselves when
    they are copartitioned."""

    def __init__(self, bootstrap: str, config, partitions: int, group: str) -> None:
        from tests.oracle import parse_event_time
        self._ts = parse_event_time
        self.bootstrap, self.group, self.partitions = bootstrap, group, partitions
        inputs = config.join_inputs
        self.topics = types.SimpleNamespace(requests=inputs["requests"],
                                            feedback=inputs["feedback"],
                                            labeled=config.topics.labeled)
        topics = self.topics
        # with the hop the join is caught up only once the inputs are forwarded too
        self.hop_inputs = ((config.topics.requests, config.topics.feedback)
                           if config.repartitions else ())
        self.requests = TopicReader(bootstrap, topics.requests, partitions)
        self.feedback = TopicReader(bootstrap, topics.feedback, partitions)
        self.labeled = TopicReader(bootstrap, topics.labeled, partitions)
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-probe")
        self.request_at: dict[str, tuple[int, int]] = {}             # id -> (partition, offset)
        self.feedback_at: dict[tuple[str, int], tuple[int, int]] = {}  # (id, ts) -> first
        self.since: dict[int, int] = {}  # labeled offsets from this incarnation on
        self.samples = 0                 # evidence() calls

    def index_inputs(self) -> None:
        """Read the inputs produced so far (done by ``evidence()`` too)."""
        for r in self.requests.read():
            try:
                rid = json.loads(r.value)["request_id"]
            except Exception:  # malformed on purpose: never labeled
                continue
            if isinstance(rid, str):
                self.request_at.setdefault(rid, (r.partition, r.offset))
        for r in self.feedback.read():
            try:
                f = json.loads(r.value)
                key = (f["request_id"], self._ts(f["ts"]))
            except Exception:
                continue
            self.feedback_at.setdefault(key, (r.partition, r.offset))

    def incarnation_started(self) -> None:
        """Call before starting a worker: its outputs are the labeled records after this."""
        self.labeled.read()
        self.since = dict(self.labeled.next)

    def evidence(self, partitions: Optional[set[int]] = None) -> JoinEvidence:
        """Read while the worker is frozen (or dead): outputs past its committed input.

        ``partitions``: count only outputs of these input partition numbers (a worker's
        share when several run: the join labels on the input's partition number)."""
        self.samples += 1
        self.index_inputs()
        self.labeled.read()
        mine = [r for r in self.labeled.records if r.offset >= self.since.get(r.partition, 0)
                and (partitions is None or r.partition in partitions)]
        got = self.admin.list_group_offsets(self.group).get(self.group, {}) or {}
        t = self.topics
        committed = {topic: {p: 0 for p in range(self.partitions)}
                     for topic in (t.requests, t.feedback, *self.hop_inputs)}
        for tp, meta in got.items():
            if tp.topic in committed and meta is not None and meta.offset is not None:
                committed[tp.topic][tp.partition] = max(0, meta.offset)
        ends = {topic: _ends(self.bootstrap, topic, self.partitions)
                for topic in (t.requests, t.feedback, *self.hop_inputs)}
        past = []
        for r in mine:
            ex = json.loads(r.value)
            rid = ex["request_id"]
            p, off = self.request_at[rid]
            depends = [(t.requests, p, off)]
            fb = self.feedback_at.get((rid, ex["label_ts"]))
            if fb is not None and not (isinstance(ex["label"], int) and ex["label"] == 0):
                depends.append((t.feedback, *fb))
            if any(o >= committed[topic][part] for topic, part, o in depends):
                past.append(rid)
        return JoinEvidence(committed, ends, past, len(mine))

    def close(self) -> None:
        self.requests.close()
        self.feedback.close()
        self.labeled.close()
        self.admin.close()


def kill_join_in_flight(worker, watch: JoinWatch, rnd, busy: Callable[[], bool],
                        timeout: float = 180,
                        before_kill: Callable[[], None] = lambda: None,
                        partitions: Optional[set[int]] = None) -> Optional[JoinEvidence]:
    """SIGKILL a `dlabel worker`'s process group (join and sink) at a random moment its
    join has outputs past its committed input, proven while frozen (see JoinEvidence).

    Samples while ``busy()`` (e.g. input still being produced) or the join has not
    committed all its input; returns None if it caught up without a proven moment.
    ``before_kill`` runs with the group frozen, right before the SIGKILL. ``partitions``:
    the worker's share of the input partition numbers, when several workers run.
    """
    last: dict = {}

    def probe():
        last["ev"] = ev = watch.evidence(partitions)
        return ev if ev.proven() else None

    def go_on() -> bool:
        assert worker.poll() is None, f"the worker exited ({worker.returncode}) on its own"
        return busy() or not last["ev"].caught_up()

    # A batch is in flight for a few tens of ms of the worker's own time (outputs sent,
    # acks, state, commit): sample at most 3 ms of its running time apart. The frozen
    # time in between (reading the evidence) does not count: the worker does nothing.
    ev = sample_frozen(lambda: group_members(worker.pid), probe, go_on, rnd, timeout,
                       "a moment with the join's outputs past its committed input",
                       max_pause=0.003)
    if ev is None:
        return None
    before_kill()
    sigkill(group_members(worker.pid))
    worker.wait(30)
    wait_until(lambda: not group_members(worker.pid), 30, "the worker's group gone", 0.05)
    # read again, the worker dead: its committed offsets did not move, the outputs stay
    after = watch.evidence(partitions)

    def held(e: JoinEvidence) -> dict:
        return {t: {p: o for p, o in parts.items() if partitions is None or p in partitions}
                for t, parts in e.committed.items()}

    assert after.proven() and held(after) == held(ev), (ev.summary(), after.summary())
    ev.attempts = watch.samples
    return ev


# ----------------------------------------------------------------- the dataset sink

def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


# README: an open window's staged file .part-<p>-<first>-<last>.staged
_PART = re.compile(r"^\.part-(\d+)-(\d+)-(\d+)\.staged$")


def sink_commit_in_flight(dataset: Path, partitions: int) -> Optional[dict]:
    """A sink commit caught half done on disk, or None.

    The sink commits offsets ``first..last`` of a labeled partition as: the intent
    ``_sink/p<N>.intent.json``, then one staged file per window named after the range,
    then the checkpoint ``_sink/p<N>.json`` (``next = last + 1``). Half done: an intent
    past the checkpoint *with some of its staged files already in place* - files the
    sink's own state does not account for yet (a restart must redo that very range, or
    the rows are there twice). Hidden temp files are listed too.
    """
    state = dataset / "_sink"
    unfinished = {}
    for p in range(partitions):
        intent = _read_json(state / f"p{p:03d}.intent.json")
        nxt = int((_read_json(state / f"p{p:03d}.json") or {}).get("next", 0))
        if intent is not None and int(intent["first"]) >= nxt:
            unfinished[p] = {"first": int(intent["first"]), "last": int(intent["last"]),
                             "checkpoint_next": nxt, "files_written": []}
    if not unfinished:
        return None
    temps = []
    for d in window_dirs(dataset):
        for name in os.listdir(d):
            if name.startswith(".") and ".tmp-" in name:
                temps.append(f"{d.name}/{name}")
            m = _PART.match(name)
            if m and int(m.group(1)) in unfinished:
                u = unfinished[int(m.group(1))]
                if (int(m.group(2)), int(m.group(3))) == (u["first"], u["last"]):
                    u["files_written"].append(f"{d.name}/{name}")
    if not any(u["files_written"] for u in unfinished.values()):
        return None
    return {"unfinished_commits": unfinished, "temp_files": sorted(temps)}


def checkpoints(dataset: Path, partitions: int) -> dict[int, int]:
    return {p: int((_read_json(dataset / "_sink" / f"p{p:03d}.json") or {}).get("next", 0))
            for p in range(partitions)}


def window_dirs(dataset: Path) -> list[Path]:
    """The window directories of a dataset (none before the sink wrote anything)."""
    if not dataset.is_dir():
        return []
    return sorted(p for p in dataset.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


@dataclass
class DatasetSnapshot:
    """Manifests (bytes) and the windows the sink had not recorded as announced."""
    manifests: dict[str, bytes]
    unannounced: list[str]  # window dirs with a manifest, missing from windows-sent.json


def dataset_snapshot(dataset: Path) -> DatasetSnapshot:
    """Read while the sink is frozen or dead."""
    manifests = {d.name: (d / "_manifest.json").read_bytes() for d in window_dirs(dataset)
                 if (d / "_manifest.json").is_file()}
    sent_path = dataset / "_sink" / "windows-sent.json"
    sent = json.loads(sent_path.read_text()) if sent_path.is_file() else []
    return DatasetSnapshot(manifests, sorted(set(manifests) - set(sent)))


# ----------------------------------------------------------------- bookkeeping of a run

@dataclass
class KillLog:
    """Every SIGKILL of a run with what proves it landed in flight."""
    kills: list[dict] = field(default_factory=list)
    unannounced: Counter = field(default_factory=Counter)  # window dir -> kills that saw it
    manifests: dict[str, bytes] = field(default_factory=dict)

    def add(self, victim: str, evidence: dict) -> None:
        """A kill, with what proved it landed in flight."""
        assert evidence, f"a {victim} kill without evidence of work in flight"
        self.kills.append({"victim": victim, "evidence": evidence})

    def note_dataset(self, snap: DatasetSnapshot) -> None:
        """A sink died with this on disk: remember manifests (never to change) and the
        window whose event it may have sent without recording it (sent again later).

        The sink closes windows one at a time (manifest, event, record) and on start
        sends what a crash left unrecorded before anything else: at most one window can
        have a manifest and no record of its event when it dies."""
        for name, data in snap.manifests.items():
            assert self.manifests.setdefault(name, data) == data, f"{name}: manifest rewritten"
        assert len(snap.unannounced) <= 1, \
            f"windows with a manifest and no record of their event: {snap.unannounced}"
        self.unannounced.update(snap.unannounced)

    def count(self) -> Counter:
        """Kills per victim."""
        return Counter(k["victim"] for k in self.kills)
