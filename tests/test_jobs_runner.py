"""The jobs runner: order, once-only, retries, timeouts, failures; and on the real broker."""
from __future__ import annotations

import json
import sys

import pytest
from kafka import KafkaProducer

from jobs.dataset import window_dirname, window_iso
from jobs.registry import Registry
from jobs.runner import RunSummary, Runner, parse_events, run_until_idle
from streams.dev.synthetic_windows import window_event
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import ensure_topics
from tests.jobs_support import START, H, on_tmp, write_ctr_windows
from tests.waiting import alive, wait_until


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path, retries=2, retry_backoff_ms=100,
                  job_timeout_ms=60_000)


def test_parse_events_dedupes_and_ignores_bad_ones():
    s = RunSummary()
    ev = lambda w, p="ctr": json.dumps({"pipeline": p, "window_start": w, "manifest": "m"}).encode()  # noqa: E731
    got = parse_events([ev("2026-11-18T12:00:00Z"), ev("2026-11-18T11:00:00Z"),
                        ev("2026-11-18T12:00:00Z"), b"{not json",
                        ev("2026-11-18T13:00:00Z", "other"),
                        json.dumps({"pipeline": "ctr"}).encode()], "ctr", s)
    assert sorted(got) == [START, START + H]
    assert (s.events, s.duplicates, s.ignored) == (6, 1, 3)


def _script(tmp_path, body: str):
    """A job_argv that runs ``body`` (python) instead of the real job."""
    path = tmp_path / "fake_job.py"
    path.write_text("import sys, pathlib\n" + body)

    def argv(config_json, window, manifest):
        return [sys.executable, str(path), window]
    return argv


def test_failing_job_is_retried_with_backoff_then_recorded_failed(cfg, tmp_path):
    sleeps: list[float] = []
    runner = Runner(cfg, job_argv=_script(tmp_path, "print('boom'); sys.exit(3)\n"),
                    sleep=sleeps.append)
    s = RunSummary()
    runner.run_windows({START: None, START + H: None}, s)
    assert s.failed == [window_iso(START), window_iso(START + H)] and s.trained == []
    assert sleeps == [0.1, 0.2, 0.1, 0.2]  # doubling backoff, per window
    reg = Registry(cfg.model.path)
    rec = reg.window_record(window_iso(START))
    assert rec["status"] == "failed" and rec["attempts"] == 3 and rec["error"] == "exit status 3"
    for attempt in (1, 2, 3):  # its own log per attempt
        assert "boom" in reg.log_path(window_iso(START), attempt).read_text()
    # a failed window is not retried by the next pass unless asked
    again = RunSummary()
    Runner(cfg, sleep=sleeps.append).run_windows({START: None}, again)
    assert again.skipped == [window_iso(START)]


def test_a_job_that_fails_once_then_succeeds(cfg, tmp_path):
    write_ctr_windows(cfg, 1, rows=300)
    counter = tmp_path / "count"
    config_json = str(tmp_path / "models" / "runner" / "config.json")
    body = (f"p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) if p.exists() else 0\n"
            "p.write_text(str(n + 1))\n"
            "if n == 0: raise RuntimeError('transient')\n"
            "from jobs.job import main\n"
            f"sys.exit(main(['--config-json', {config_json!r},"
            " '--window', sys.argv[1]]))\n")
    s = RunSummary()
    runner = Runner(cfg, job_argv=_script(tmp_path, body), sleep=lambda s: None)
    runner.run_windows({START: None}, s)
    assert s.trained == [window_iso(START)] and counter.read_text() == "2"
    first_log = Registry(cfg.model.path).log_path(window_iso(START), 1).read_text()
    assert "RuntimeError: transient" in first_log


def test_a_job_that_hangs_is_killed_at_the_timeout(make_config, tmp_path):
    """Each attempt is killed at the timeout, and the window is recorded as timed out."""
    cfg = on_tmp(make_config("ctr"), tmp_path, retries=1, retry_backoff_ms=0, job_timeout_ms=2000)
    pids = tmp_path / "pids"

    def hang(config_json, window, manifest):  # a shell that starts at once, then hangs
        return ["/bin/sh", "-c", f'echo $$ >> "{pids}"; exec sleep 60']
    s = RunSummary()
    Runner(cfg, job_argv=hang, sleep=lambda s: None).run_windows({START: None}, s)
    assert s.failed == [window_iso(START)] and s.trained == []
    reg = Registry(cfg.model.path)
    rec = reg.window_record(window_iso(START))
    assert rec["status"] == "failed" and rec["attempts"] == 2
    assert rec["error"] == "timed out after 2s (killed)"
    for attempt in (1, 2):
        assert "[runner] timed out after 2s (killed)" in reg.log_path(window_iso(START),
                                                                      attempt).read_text()
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 2, "one process per attempt"
    assert not [pid for pid in started if alive(pid)], "a timed-out job is still running"


def test_run_forever_hands_retry_failed_to_its_runner(cfg, monkeypatch):
    """``dlabel jobs --retry-failed`` in follow mode: the Runner is told to retry."""
    import jobs.runner

    class Built(Exception):
        pass

    def runner(config, **kwargs):  # stops run_forever before it opens the windows feed
        raise Built(kwargs)
    monkeypatch.setattr(jobs.runner, "Runner", runner)
    for retry_failed in (True, False):
        with pytest.raises(Built) as built:
            jobs.runner.run_forever(cfg, retry_failed=retry_failed)
        assert built.value.args[0]["retry_failed"] is retry_failed


def test_windows_run_in_order_once_each(cfg):
    starts = write_ctr_windows(cfg, 3, rows=300)
    s = RunSummary()
    runner = Runner(cfg, sleep=lambda s: None)
    runner.run_windows({starts[2]: None, starts[0]: None, starts[1]: None}, s)
    assert s.trained == [window_iso(w) for w in starts]
    again = RunSummary()
    runner.run_windows({w: None for w in starts}, again)
    assert again.skipped == s.trained and again.trained == []
    reg = Registry(cfg.model.path)
    assert [reg.lineage(v)["window"] for v in reg.versions()] == s.trained


@pytest.mark.broker
def test_runner_on_the_broker(broker: EmbeddedBroker, make_config, tmp_path):
    """Events out of order and duplicated: each window trained once, in window order."""
    cfg = on_tmp(make_config("ctr", broker=broker.url), tmp_path, retries=0)
    ensure_topics(broker.bootstrap, cfg)
    starts = write_ctr_windows(cfg, 3, rows=300)
    manifests = [f"{cfg.dataset.path}/{window_dirname(w)}/_manifest.json" for w in starts]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                             acks="all")
    order = [1, 0, 1, 2, 0]  # out of order, with duplicates
    for i in order:
        ev = window_event(manifests[i])
        producer.send(cfg.topics.windows, key=ev["window_start"].encode(),
                      value=json.dumps(ev).encode())
    producer.send(cfg.topics.windows, value=b"garbage")
    producer.flush()
    producer.close()
    # the runner reads the topic to the end it had at the start, then until idle_s pass
    # without an event: with idle_s 0, all it waits for is every event already sent
    s = run_until_idle(cfg, idle_s=0)
    assert s.trained == [window_iso(w) for w in starts]
    assert (s.events, s.duplicates, s.ignored, s.failed) == (6, 2, 1, [])
    reg = Registry(cfg.model.path)
    assert [reg.lineage(v)["window"] for v in reg.versions()] == s.trained
    assert reg.log_path(s.trained[0], 1).read_text().count("stored v0001") == 1
    # a replay of the whole topic trains nothing (through the demo's one-call API)
    from jobs.loop import retrain_until_idle
    lines: list[str] = []
    out = retrain_until_idle(cfg, "category", "mens_dress_shoes", idle_s=0, echo=lines.append,
                             report_dir=tmp_path / "report")
    again = out["summary"]
    assert again.trained == [] and again.skipped == s.trained and len(reg.versions()) == 3
    assert [r["window"] for r in out["rows"]] == s.trained and out["report"].is_file()
    assert any("category=mens_dress_shoes roc_auc" in line for line in lines)


@pytest.mark.broker
def test_runner_follows_the_topic(broker: EmbeddedBroker, make_config, tmp_path):
    """``run_forever`` trains windows as their events arrive, until told to stop."""
    import threading
    from jobs.runner import run_forever
    cfg = on_tmp(make_config("ctr", broker=broker.url), tmp_path, retries=0)
    ensure_topics(broker.bootstrap, cfg)
    starts = write_ctr_windows(cfg, 2, rows=300)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False)
    reg = Registry(cfg.model.path)

    def publish(w):
        ev = window_event(f"{cfg.dataset.path}/window-{window_iso(w).replace(':', '-')}"
                          "/_manifest.json")
        producer.send(cfg.topics.windows, value=json.dumps(ev).encode())
        producer.flush()

    def trained(*windows):
        """Wait until exactly ``windows`` have a window record, each "trained"."""
        want = {window_iso(w): "trained" for w in windows}
        return wait_until(lambda: {w: r["status"] for w, r in reg.window_records().items()}
                          == want, timeout=180, interval=0.2, what=f"records {want}")

    stop = threading.Event()
    result = {}
    t = threading.Thread(target=lambda: result.update(
        s=run_forever(cfg, idle_s=0.5, stop=stop.is_set)))
    publish(starts[0])
    t.start()
    try:
        trained(starts[0])
        # a duplicate while following, sent before the next window: the topic has one
        # partition, so once that window is trained the runner has read the duplicate too
        publish(starts[0])
        publish(starts[1])
        trained(starts[0], starts[1])
    finally:
        stop.set()
        t.join(60)
        producer.close()
    assert not t.is_alive(), "run_forever did not stop when told to"
    assert result["s"].trained == [window_iso(w) for w in starts]
    assert result["s"].skipped == [window_iso(starts[0])]
