"""Crash anywhere, in flight: SIGKILL the join worker, its dataset sink and the jobs runner
while they hold work that is not durable yet, restart each, and check that nothing is
lost or duplicated.

The pipeline runs as deployed: `dlabel worker` (the join, and the dataset sink as its
child process) and `dlabel jobs` (the runner, with one job subprocess per window). The
simulated stream is produced in chunks while the processes die. Every kill is *proven*
to land on work in flight (see ``tests/fault_probes.py``): the victim is frozen, the
evidence is read, then it is killed:

- ``join``: the worker's whole process group (join and sink, as a container runtime
  would) dies while the join has labeled outputs on the broker for requests at or past
  its group's committed input offsets (a batch sent and not committed);
- ``sink``: the sink child alone dies with a commit half done: its intent
  (``_sink/p<N>.intent.json``) past the checkpoint (``_sink/p<N>.json``) and some of
  the range's Parquet files already in place. The worker does not notice a dead sink
  child (see ``test_sink_child_death``), so a supervisor's restart of the worker
  follows (SIGKILL of the rest of its group);
- ``jobs``: the runner's process group (runner and job) dies while its job is in flight,
  alternately ``training`` (the job alive, its window with neither a registry version
  nor a record) and ``stored`` (the job alive, its version saved and the window's record
  not yet written: the restart must finish the records without training again).

After each kill the victim is restarted and its recovery is waited for (conditions,
never a fixed sleep): the join commits past everything produced so far, the sink
finishes the interrupted commit, the killed job's window ends up trained. At the end
(`dlabel worker --drain`, `dlabel jobs --until-idle`):

- the Parquet dataset equals the oracle field for field, each request exactly once;
- the labeled topic, deduplicated by request id, equals the oracle, every repeat an
  identical copy;
- every window is closed, with one manifest listing exactly its data files and rows,
  never rewritten once written;
- windows events, counted (a Counter, never a set): exactly one per window. The README
  allows one repeat: the event is sent at least once, so a sink that dies after sending
  it and before recording it (``_sink/windows-sent.json``) sends it again on restart.
  So a window may have one more event per sink death that found it in that gap - read
  from the disk of the frozen sink, where at most one window may ever be in the gap -
  and every copy must be identical (and match the manifest's rows and positives);
- every window trained exactly once: one ``trained`` record, and one registry version
  per window with enough rows (none for a window under ``jobs.job.MIN_ROWS``).

Runs: ``-m ci`` (the smoke CI runs: ctr and airport, >= 5 proven kills across the three
processes) and ``-m faults`` (the long run: >= 20 proven kills).
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from jobs.job import MIN_ROWS
from jobs.registry import Registry
from streams.dev.simulate import generate
from streams.kafka.topics import ensure_topics
from tests.fault_probes import (BackgroundProducer, JoinWatch, KillLog, checkpoints,
                                dataset_snapshot, freeze, group_members, job_children, thaw,
                                kill_join_in_flight, sample_frozen, sigkill,
                                sink_child, sink_commit_in_flight, wait_join_caught_up,
                                wait_until, window_dirs)
from tests.waiting import alive
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import (PII_KEY, dead_letters, load, run_drain, worker_cmd,
                                 worker_env, write_pipeline)
from tests.waiting import read_to_end

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent
RECOVERY_S = 180  # generous: 2 cores shared with other test runs


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=worker_env(),
                            cwd=ROOT, start_new_session=True)


def _jobs_cmd(path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", "-v", "jobs", "-c", str(path), *args]


def _freeze_when_stored(runner: int, reg: Registry, probe) -> dict | None:
    """Freeze the runner's process group the moment a job's version appears in the
    registry, and ``probe()`` it frozen (left frozen on a hit, for the kill).

    A job is in the ``stored`` stage only between renaming its version into place and
    writing its window's record: one small fsynced file, a few milliseconds, which
    random freezes hit in too few jobs (without a promotion there is no champion write
    in between). So the registry directory is watched in a tight loop instead, without
    freezing, and the whole group is stopped with one ``killpg`` when a version shows up.
    None once the runner has no job left (it finished first)."""
    root = reg.root
    seen = set(os.listdir(root)) if root.is_dir() else set()
    deadline = time.monotonic() + RECOVERY_S
    check_at = 0.0
    while time.monotonic() < deadline:
        names = set(os.listdir(root)) if root.is_dir() else set()
        if any(name.startswith("v") for name in names - seen):
            os.killpg(runner, signal.SIGSTOP)
            members = group_members(runner)
            freeze(members)
            result = probe()
            if result:
                return result
            thaw(members)
            os.killpg(runner, signal.SIGCONT)
        seen = names
        if time.monotonic() >= check_at:
            if not job_children(runner):
                return None
            check_at = time.monotonic() + 0.05
    raise AssertionError(f"not within {RECOVERY_S:g}s: a job in stage stored")


class FaultRun:
    """One pipeline (join worker with its sink child, jobs runner) under fire."""

    def __init__(self, broker, tmp_path: Path, name: str, scenario: str, requests: int,
                 seed: int, chunks: int, partitions: int = 3) -> None:
        self.broker, self.tmp = broker, tmp_path
        self.partitions = partitions
        self.path = write_pipeline(tmp_path, scenario, broker.url, name, partitions=partitions,
                                   dataset={"flush_rows": 200, "flush_interval": "1s"})
        self.cfg = load(self.path)
        self.dataset = Path(self.cfg.dataset.path)
        self.events = generate(self.cfg, scenario, requests, seed=seed,
                               rate_per_s=requests / (chunks * 3600))  # 1 h per chunk
        # consecutive in arrival order: later chunks carry later event times (nothing late)
        size = -(-len(self.events) // chunks)
        self.chunks = [self.events[i:i + size] for i in range(0, len(self.events), size)]
        self.next_chunk = 0
        self.rnd = random.Random(seed)
        self.log = KillLog()
        self.logs = {"worker": tmp_path / "worker.log", "jobs": tmp_path / "jobs.log"}
        # create the topics before anything looks them up (Tansu auto-creates with 4)
        ensure_topics(broker.bootstrap, self.cfg)
        self.watch = JoinWatch(broker.bootstrap, self.cfg, partitions,
                               f"dlabel-{self.cfg.pipeline}")
        self.worker: subprocess.Popen | None = None
        self.jobs: subprocess.Popen | None = None
        self.recovery_s: dict[str, list[float]] = {"join": [], "sink": [], "jobs": []}
        self.attempts: Counter = Counter()

    # ------------------------------------------------------------ processes
    def alive(self) -> dict:
        return {"dlabel worker": self.worker, "dlabel jobs": self.jobs}

    def start_worker(self) -> None:
        self.watch.incarnation_started()
        self.worker = _start(worker_cmd(self.path), self.logs["worker"])
        wait_until(lambda: sink_child(self.worker.pid), RECOVERY_S, "the sink child started",
                   alive={"dlabel worker": self.worker})

    def start_jobs(self) -> None:
        self.jobs = _start(_jobs_cmd(self.path), self.logs["jobs"])

    def start(self) -> None:
        self.produce_next().join()
        self.start_worker()
        self.wait_join_caught_up("the join consumed the first chunk")
        self.start_jobs()

    def wait_join_caught_up(self, what: str) -> None:
        wait_join_caught_up(self.broker.bootstrap, self.cfg, what, RECOVERY_S, self.alive())

    def _kill_worker_group(self) -> None:
        """SIGKILL the worker's whole group, frozen first to note what its sink left on disk."""
        members = group_members(self.worker.pid)
        freeze(members)
        self.log.note_dataset(dataset_snapshot(self.dataset))
        sigkill(members)
        self.worker.wait(30)
        wait_until(lambda: not group_members(self.worker.pid), 30, "the worker group gone")

    # ------------------------------------------------------------ input
    def produce_next(self) -> BackgroundProducer | None:
        """Produce the next chunk in a background thread (None when all are produced)."""
        if self.next_chunk >= len(self.chunks):
            return None
        self.next_chunk += 1
        return BackgroundProducer(self.broker.bootstrap, self.cfg,
                                  self.chunks[self.next_chunk - 1])

    # ------------------------------------------------------------ kills
    def kill_join(self, max_chunks: int = 6) -> None:
        """Produce a chunk; while the join works on it, freeze the worker group at random
        moments and read the evidence; kill the group the first time its outputs run past
        its committed input offsets (else let it go on, and sample again)."""
        for _ in range(max_chunks):
            producer = self.produce_next()
            assert producer is not None, "no input left to keep the join busy"
            samples = self.watch.samples
            ev = kill_join_in_flight(
                self.worker, self.watch, self.rnd, producer.is_alive, RECOVERY_S,
                before_kill=lambda: self.log.note_dataset(dataset_snapshot(self.dataset)))
            self.attempts["join"] += self.watch.samples - samples
            producer.join()
            if ev is None:
                continue  # the chunk was done before a sample caught it: the next one
            t0 = time.monotonic()
            self.log.add("join", ev.summary())
            self.start_worker()
            self.wait_join_caught_up("the restarted join committed all input so far")
            self.recovery_s["join"].append(round(time.monotonic() - t0, 1))
            return
        raise AssertionError(f"no join kill in flight within {max_chunks} chunks "
                             f"({self.attempts['join']} samples)")

    def kill_sink(self, max_chunks: int = 6, window_s: float = 8.0) -> None:
        """Produce a chunk; while the sink writes its labeled records, freeze the sink
        child again and again; kill it when a commit is begun and not finished."""
        for _ in range(max_chunks):
            producer = self.produce_next()
            assert producer is not None, "no input left to make the sink commit"
            pid = sink_child(self.worker.pid)
            assert pid is not None, "the worker has no sink child"
            until = time.monotonic() + window_s

            def probe():
                self.attempts["sink"] += 1
                return sink_commit_in_flight(self.dataset, self.partitions)

            ev = sample_frozen(lambda: [pid], probe, lambda: time.monotonic() < until,
                               self.rnd, RECOVERY_S, "a sink commit in flight", max_pause=0.01)
            if ev is None:
                producer.join()
                continue
            t0 = time.monotonic()
            self.log.note_dataset(dataset_snapshot(self.dataset))
            sigkill([pid])
            wait_until(lambda: pid not in group_members(self.worker.pid), 30,
                       "the sink child gone", interval=0.01)
            self.log.add("sink", ev)
            # the worker goes on without its sink (it does not notice): a supervisor's
            # restart of the worker, the rest of its group killed
            self._kill_worker_group()
            producer.join()
            self.start_worker()
            unfinished = ev["unfinished_commits"]
            wait_until(lambda: all(checkpoints(self.dataset, self.partitions)[p] > u["last"]
                                   for p, u in unfinished.items()),
                       RECOVERY_S, f"the restarted sink finished the commits {unfinished}",
                       interval=0.2, alive=self.alive())
            self.wait_join_caught_up("the restarted join committed all input so far")
            self.recovery_s["sink"].append(round(time.monotonic() - t0, 1))
            return
        raise AssertionError(f"no sink kill mid-commit within {max_chunks} chunks")

    def _feed_until(self, predicate, what: str, settle_s: float = 20.0):
        """Produce chunks one at a time until ``predicate()`` holds (returned); after each
        chunk give the pipeline ``settle_s`` to react before producing the next."""
        while True:
            producer = self.produce_next()
            if producer is None:
                return wait_until(predicate, RECOVERY_S, what, interval=0.01,
                                  alive=self.alive())
            try:
                while producer.is_alive():
                    if value := predicate():
                        return value
                    time.sleep(0.01)
                deadline = time.monotonic() + settle_s
                while time.monotonic() < deadline:
                    for name, proc in self.alive().items():
                        assert proc.poll() is None, f"{name} exited while waiting for {what}"
                    if value := predicate():
                        return value
                    time.sleep(0.01)
            finally:
                producer.join()

    def kill_jobs(self, max_jobs: int = 10) -> None:
        """Kill the runner's group (runner and job) while its job is in flight, in one of two
        stages, alternately: ``training`` (the job alive, its window with neither a version
        nor a record) and ``stored`` (the job alive, its version saved in the registry and
        the window's record not written yet: the restart must finish the records, not
        train again)."""
        stage = ("training", "stored")[self.log.count()["jobs"] % 2]
        reg = Registry(self.cfg.model.path)
        for _ in range(max_jobs):
            runner = self.jobs.pid
            self._feed_until(lambda: job_children(runner), "a retraining job running")

            def probe():
                self.attempts["jobs"] += 1
                for pid, window in job_children(runner):
                    if not alive(pid) or reg.window_record(window) is not None:
                        continue
                    version = reg.version_for_window(window)
                    if (version is None) == (stage == "training"):
                        return {"stage": stage, "job_pid": pid, "window": window,
                                "version_at_kill": version, "record_at_kill": None}
                return None

            if stage == "stored":
                ev = _freeze_when_stored(runner, reg, probe)
            else:
                ev = sample_frozen(lambda: group_members(runner), probe,
                                   lambda: bool(job_children(runner)), self.rnd, RECOVERY_S,
                                   f"a job in stage {stage}", max_pause=0.1)
            if ev is None:
                continue  # that job finished first: try the next one
            t0 = time.monotonic()
            sigkill(group_members(runner))
            self.jobs.wait(30)
            wait_until(lambda: not group_members(runner), 30, "the runner's group gone", 0.05)
            self.log.add("jobs", ev)
            self.start_jobs()
            window = ev["window"]
            wait_until(lambda: (reg.window_record(window) or {}).get("status") == "trained",
                       RECOVERY_S, f"window {window} trained after the runner's restart",
                       interval=0.2, alive=self.alive())
            if stage == "stored":  # the records finished, the window not trained again
                rec = reg.window_record(window)
                assert rec["version"] == ev["version_at_kill"], \
                    f"{window}: trained again as {rec['version']} after the kill (stored " \
                    f"{ev['version_at_kill']} before it)"
            self.recovery_s["jobs"].append(round(time.monotonic() - t0, 1))
            return
        raise AssertionError(f"no jobs kill in stage {stage} within {max_jobs} jobs")

    def kill(self, victim: str) -> None:
        {"join": self.kill_join, "sink": self.kill_sink, "jobs": self.kill_jobs}[victim]()

    # ------------------------------------------------------------ the end
    def finish(self) -> dict:
        """Produce the rest, stop everything (SIGKILL), drain, run the pending jobs, check."""
        while (t := self.produce_next()) is not None:
            t.join()
        if self.worker is not None and self.worker.poll() is None:
            self._kill_worker_group()
        if self.jobs is not None and self.jobs.poll() is None:
            sigkill(group_members(self.jobs.pid))
            self.jobs.wait(30)
        self.watch.close()
        summary = run_drain(self.path, self.tmp / "drain.log", timeout=600)
        done = subprocess.run(_jobs_cmd(self.path, "--until-idle"), env=worker_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return self.check(summary)

    def check(self, summary: dict) -> dict:
        cfg, bootstrap = self.cfg, self.broker.bootstrap
        # nothing was late (chunks follow arrival order), so the oracle holds for everything
        late = [d for d in dead_letters(bootstrap, cfg.topics.dead_letter) if d["reason"] == "late"]
        assert not late, late[:3]
        reqs = [e.value for e in self.events if e.role == "requests"]
        fbs = [e.value for e in self.events if e.role == "feedback"]
        expected = expected_examples(self.path, reqs, fbs, PII_KEY.encode())

        # the dataset: every field, each request exactly once
        rows = read_dataset_examples(self.dataset)
        assert_examples_match(expected, rows)

        # the labeled topic, deduplicated: repeats are identical copies
        copies: dict[str, list[bytes]] = {}
        for rec in read_to_end(bootstrap, cfg.topics.labeled, timeout=180):
            copies.setdefault(json.loads(rec.value)["request_id"], []).append(rec.value)
        differing = [rid for rid, vs in copies.items() if len(set(vs)) > 1]
        assert not differing, f"repeats that differ from the original: {differing[:5]}"
        assert_examples_match(expected, [json.loads(vs[0]) for vs in copies.values()])

        # every window closed, one manifest listing exactly its files and rows, unchanged
        per_window = Counter(r["window_start"] for r in rows)
        windows: dict[str, dict] = {}  # window_start -> manifest
        dir_of: dict[str, str] = {}
        for d in window_dirs(self.dataset):
            names = sorted(n.name for n in d.iterdir() if not n.name.startswith((".", "_")))
            hidden = sorted(n.name for n in d.iterdir() if n.name.startswith("."))
            assert not hidden, f"{d.name}: leftover temp files {hidden}"
            manifest_path = d / "_manifest.json"
            assert manifest_path.is_file(), f"{d.name}: no manifest (window not closed)"
            raw = manifest_path.read_bytes()
            if d.name in self.log.manifests:
                assert raw == self.log.manifests[d.name], f"{d.name}: manifest rewritten"
            m = json.loads(raw)
            assert sorted(f["path"] for f in m["files"]) == names, (d.name, m["files"], names)
            assert m["rows"] == sum(f["rows"] for f in m["files"]) == \
                per_window.get(m["window_start_ms"], 0), (d.name, m["rows"])
            windows[m["window_start"]] = m
            dir_of[m["window_start"]] = d.name
        assert windows and sum(m["rows"] for m in windows.values()) == len(rows)

        # windows events, counted (no set): exactly one per window; a repeat only for a
        # window whose manifest a dying sink had written without recording the event as
        # sent (at most one more per such kill); all copies of a window's event identical
        events = [json.loads(r.value) for r in read_to_end(bootstrap, cfg.topics.windows, timeout=180)]
        counts = Counter(e["window_start"] for e in events)
        assert sorted(counts) == sorted(windows), (sorted(counts), sorted(windows))
        for w, n in counts.items():
            allowed = 1 + self.log.unannounced[dir_of[w]]
            assert n <= allowed, f"{w}: {n} windows events (allowed {allowed})"
            copies_w = {json.dumps(e, sort_keys=True) for e in events if e["window_start"] == w}
            assert len(copies_w) == 1, f"{w}: windows events differ: {copies_w}"
            ev = json.loads(copies_w.pop())
            assert (ev["rows"], ev["positives"]) == (windows[w]["rows"], windows[w]["positives"])
        repeated_events = {w: n for w, n in counts.items() if n > 1}

        # every window trained exactly once
        reg = Registry(cfg.model.path)
        records = reg.window_records()
        assert sorted(records) == sorted(windows), (sorted(records), sorted(windows))
        assert all(r["status"] == "trained" for r in records.values()), records
        trained_by = Counter(reg.lineage(v).get("window") for v in reg.versions())
        want = Counter({w: 1 for w, m in windows.items() if m["rows"] >= MIN_ROWS})
        assert trained_by == want, (trained_by, want)
        for w, rec in records.items():
            if windows[w]["rows"] >= MIN_ROWS:
                assert reg.lineage(rec["version"])["window"] == w, (w, rec)

        return {"kills": dict(self.log.count()), "attempts": dict(self.attempts),
                "events": len(self.events), "rows": len(rows), "windows": len(windows),
                "windows_events": len(events), "repeated_windows_events": repeated_events,
                "labeled_repeats": sum(len(v) - 1 for v in copies.values()),
                "recovery_s": self.recovery_s, "sink": summary["sink"]}


def run_faults(broker, tmp_path: Path, name: str, scenario: str, victims: list[str],
               requests: int, seed: int, chunks: int) -> dict:
    run = FaultRun(broker, tmp_path, name, scenario, requests, seed, chunks)
    try:
        run.start()
        for victim in victims:
            run.kill(victim)
        result = run.finish()
    finally:
        for proc in (run.worker, run.jobs):
            if proc is not None and proc.poll() is None:
                sigkill(group_members(proc.pid))
                proc.wait(30)
    # every kill proven in flight, each with its evidence
    assert run.log.count() == Counter(victims), run.log.kills
    for k in run.log.kills:
        print("kill:", json.dumps(k, default=str))
    return result


@pytest.mark.ci
@pytest.mark.timeout(1200)
def test_smoke_kills_in_flight_ctr(broker, tmp_path, unique_name):
    victims = ["join", "sink", "jobs", "join", "sink", "jobs"]
    result = run_faults(broker, tmp_path, unique_name, "ctr", victims, requests=12000,
                        seed=3, chunks=20)
    print("fault smoke ctr:", json.dumps(result))


@pytest.mark.ci
@pytest.mark.timeout(1200)
def test_smoke_kills_in_flight_airport(broker, tmp_path, unique_name):
    victims = ["sink", "join", "jobs"]
    result = run_faults(broker, tmp_path, unique_name, "airport", victims, requests=7000,
                        seed=4, chunks=14)
    print("fault smoke airport:", json.dumps(result))


@pytest.mark.faults
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("scenario,seed,kills", [("ctr", 8, 16), ("airport", 9, 8)])
def test_random_kills_in_flight(broker, tmp_path, unique_name, scenario, seed, kills):
    rnd = random.Random(seed)
    victims = [("join", "sink", "jobs")[k % 3] for k in range(3)] + \
        [rnd.choice(("join", "sink", "jobs")) for _ in range(kills - 3)]
    result = run_faults(broker, tmp_path, unique_name, scenario, victims,
                        requests=1200 * kills, seed=seed, chunks=3 * kills)
    print(f"fault run {scenario}:", json.dumps(result))
