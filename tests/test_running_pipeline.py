"""A running pipeline (worker + jobs runner, both following their topics): metrics are
scraped from both, and no output anywhere holds a raw PII value or the HMAC key.

Scanned: the labeled topic, every Parquet file (decoded), manifests, sink state, model
files (unzipped skops archives), metrics.json / lineage, job logs, the worker and jobs
runner logs, both metrics pages and the HTML report. The dead-letter topic is not
scanned: by contract it keeps the original bytes of invalid events, PII included, and
must be access-controlled like the input topics.
"""
from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from streams.kafka.broker import free_port
from streams.dev.simulate import generate, produce
from tests.pipeline_runs import PII_KEY, kill_group, load, worker_cmd, worker_env, write_pipeline
from tests.waiting import read_to_end, wait_until

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent
EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@example\.com")


def _start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env=worker_env(), cwd=ROOT, start_new_session=True)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
        return r.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    labels_re = r"\{" + re.escape(want) + r"[^}]*\}" if want else r"(?:\{[^}]*\})?"
    values = [float(m.group("v")) for m in
              re.finditer(r"^" + re.escape(name) + labels_re + r" (?P<v>\S+)$", text, re.M)]
    assert values, f"{name} {labels} not in the metrics page"
    return sum(values)


def _file_texts(root: Path):
    """(path, bytes) of every file under ``root``, Parquet decoded and zips unpacked."""
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".parquet":
            yield path, pq.read_table(path).to_pandas().to_csv().encode()
        elif zipfile.is_zipfile(io.BytesIO(data)):
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                for name in z.namelist():
                    yield path / name, z.read(name)
        elif path.suffix != ".png":
            yield path, data


def test_metrics_scraped_and_no_pii_anywhere(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=2,
                          dataset={"flush_interval": "1s"}, idle_timeout="2s")
    cfg = load(path)
    events = generate(cfg, "ctr", 900, seed=9, rate_per_s=900 / (3 * 3600))  # 3 hourly windows
    raw_emails = set(EMAIL.findall(b"".join(e.value for e in events)))
    assert len(raw_emails) > 50
    produce(broker.bootstrap, cfg, events)

    worker_port, jobs_port = free_port("127.0.0.1"), free_port("127.0.0.1")
    worker = _start(worker_cmd(path, "--metrics-port", str(worker_port)), tmp_path / "worker.log")
    jobs = _start([sys.executable, "-m", "streams.cli", "-v", "jobs", "-c", str(path),
                   "--metrics-port", str(jobs_port)], tmp_path / "jobs.log")
    try:
        # idle inputs let event time move on with the clock (at its pace): the first two
        # windows close and train; the last one waits for label_window of real time
        def logs() -> str:
            return "\n".join(f"--- {name} (tail)\n" + (tmp_path / name).read_text()[-3000:]
                             for name in ("worker.log", "jobs.log"))

        def two_trained() -> bool:
            assert worker.poll() is None and jobs.poll() is None, logs()
            try:
                return _metric(_scrape(jobs_port), "dlabel_jobs_total", outcome="trained") >= 2
            except (AssertionError, OSError):  # not serving yet, or nothing trained yet
                return False
        try:  # (under the 300 s per-test timeout, to fail with the logs)
            wait_until(two_trained, timeout=240, interval=1,
                       what="the jobs runner to train the two closed windows")
        except AssertionError as e:
            if not str(e).startswith("gave up"):
                raise  # a process died: its message has the logs already
            raise AssertionError(f"{e}\n{logs()}") from None
        sink_page = _scrape(worker_port + 1)
        jobs_page = _scrape(jobs_port)
        join_page = _scrape(worker_port)
        # `dlabel status` against the running pipeline
        status = subprocess.run([sys.executable, "-m", "streams.cli", "status", "-c", str(path),
                                 "--json"], env=worker_env(), cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert status.returncode == 0, status.stderr
        st = __import__("json").loads(status.stdout)
        assert {r["topic"] for r in st["lag"]} == {cfg.topics.requests, cfg.topics.feedback,
                                                   cfg.topics.labeled, *cfg.join_inputs.values()}
        assert st["closed_time"]["closed"] is not None and not st["closed_time"]["unreported_inputs"]
        assert st["windows"]["closed"] >= 2 and st["models"]["champion"] is not None
        assert st["models"]["last_job"]["status"] == "trained"
    finally:
        kill_group(worker, signal.SIGTERM)
        kill_group(jobs, signal.SIGTERM)

    from streams.common.storage import LocalStorage
    from streams.dataset.manifest import list_windows
    closed_rows = sum(w["rows"] for w in list_windows(LocalStorage(cfg.dataset.path))
                      if w["status"] == "closed")
    assert closed_rows > 300 and _metric(sink_page, "dlabel_sink_rows_total") >= closed_rows
    assert _metric(sink_page, "dlabel_windows_closed_total") == 2
    assert _metric(sink_page, "dlabel_sink_stalled") == 0
    assert _metric(jobs_page, "dlabel_champion_metric", metric="roc_auc", slice="overall") > 0
    assert _metric(jobs_page, "dlabel_champion_version") >= 1
    assert "dlabel_job_duration_seconds_count" in jobs_page
    assert _metric(join_page, "dlabel_events_in_total") >= len(events) - 50  # all but a few bad
    assert _metric(join_page, "dlabel_labeled_total") >= closed_rows

    report = subprocess.run([sys.executable, "-m", "streams.cli", "report", "-c", str(path)],
                            env=worker_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr

    # no raw PII value and no HMAC key in any output
    key = PII_KEY.encode()
    outputs = [("labeled topic", b"\n".join(r.value for r in read_to_end(
        broker.bootstrap, cfg.topics.labeled)))]
    outputs += [("metrics", (sink_page + jobs_page + join_page).encode())]
    for root in (Path(cfg.dataset.path), Path(cfg.model.path)):
        outputs += [(str(p), data) for p, data in _file_texts(root)]
    outputs += [(str(p), p.read_bytes()) for p in (tmp_path / "worker.log", tmp_path / "jobs.log")]
    assert len(outputs) > 20
    assert any(b".skops" in name.encode() or "model" in name for name, _ in outputs)
    assert any(name.endswith("index.html") for name, _ in outputs)
    for name, data in outputs:
        leaked = set(EMAIL.findall(data)) & raw_emails
        assert not leaked, f"raw PII in {name}: {sorted(leaked)[:3]}"
        assert key not in data, f"the PII key is in {name}"
    # hashed values are there instead (so the scan looked at the right column)
    labeled = outputs[0][1]
    assert re.search(rb'"user_email":"[0-9a-f]{64}"', labeled)
