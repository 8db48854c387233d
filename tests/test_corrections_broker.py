"""Late clicks on a real broker: each one a correction on the labeled topic and in a new
version of its window, nothing dead-lettered that could still be applied.

A running `dlabel worker` (join + dataset sink) labels 200 requests of one hourly
window; events at +3 h on every input partition move the watermark past them, so every
label is final and the window closes (its windows event is awaited). Then clicks arrive
for 40 negatives, inside their label windows by event time (a mobile client that
buffered them), and 20 clicks outside their windows. Each in-window click must come out
as ``label_version`` 2 on the labeled topic and in version 2 of the window; the latest
version of every request, on the topic and in the dataset, equals the oracle given those
clicks as ``late_feedback``; no ``late`` dead letter.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from streams.dev.simulate import SimEvent, produce
from tests.oracle import (assert_examples_match, expected_examples, latest_versions,
                          read_dataset_examples)
from tests.pipeline_runs import (PII_KEY, dead_letters, kill_group, load, start_worker,
                                 write_pipeline)
from tests.waiting import read_to_end, wait_until

pytestmark = pytest.mark.broker
HOUR, MIN = 3_600_000, 60_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % HOUR


def _request(rid: str, ts: int) -> bytes:
    return json.dumps({"request_id": rid, "ts": ts, "prediction": 0.25, "model_version": "v1",
                       "features": {"hour": 10, "category": "shoes", "price": 12.5,
                                    "user_email": f"{rid}@example.com"}}).encode()


def _click(rid: str, ts: int, ftype: str = "click") -> bytes:
    return json.dumps({"request_id": rid, "ts": ts, "type": ftype, "value": None}).encode()


def _events(role: str, values: list[tuple[str, int, bytes]], keyed: bool) -> list[SimEvent]:
    return [SimEvent(role, rid.encode() if keyed else None, v, ts, "request", ts)
            for rid, ts, v in values]


@pytest.mark.timeout(600)
def test_late_clicks_become_corrections_and_a_new_window_version(any_broker, tmp_path,
                                                                  unique_name):
    path = write_pipeline(tmp_path, "ctr", any_broker.url, unique_name, partitions=2,
                          dataset={"flush_interval": "1s"}, correction_window="6h")
    cfg = load(path)
    ts = {f"r{i:03d}": T0 + i * 9_000 for i in range(200)}
    requests = [(rid, t, _request(rid, t)) for rid, t in ts.items()]
    on_time = [(rid, t + 20_000, _click(rid, t + 20_000)) for rid, t in ts.items()
               if int(rid[1:]) % 5 == 0]
    # unkeyed and round-robin: one request and one feedback at +3 h on each partition
    advance = [("requests", f"adv{p}", _request(f"adv{p}", T0 + 3 * HOUR)) for p in range(2)]
    advance += [("feedback", f"adv{p}", _click(f"adv{p}", T0 + 3 * HOUR, "view"))
                for p in range(2)]
    produce(any_broker.bootstrap, cfg, _events("requests", requests, keyed=True)
            + _events("feedback", on_time, keyed=True))
    produce(any_broker.bootstrap, cfg,
            [SimEvent(role, None, v, T0 + 3 * HOUR, "request", 0) for role, _, v in advance])

    worker = start_worker(path, tmp_path / "worker.log")
    try:
        def windows(version: int) -> list[dict]:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            return [e for e in map(json.loads, (r.value for r in read_to_end(
                any_broker.bootstrap, cfg.topics.windows, timeout=120)))
                if e.get("version", 1) == version]

        wait_until(lambda: windows(1), timeout=240, interval=0.5,
                   what="the first window to close")
        late = [(rid, t + 60_000, _click(rid, t + 60_000)) for rid, t in ts.items()
                if int(rid[1:]) % 5 == 1]          # inside the window: corrections
        outside = [(rid, t + 2 * HOUR, _click(rid, t + 2 * HOUR)) for rid, t in ts.items()
                   if int(rid[1:]) % 10 == 2]      # outside it: they change nothing
        produce(any_broker.bootstrap, cfg, _events("feedback", late + outside, keyed=True))
        event = wait_until(lambda: windows(2), timeout=240, interval=0.5,
                           what="version 2 of the window")[0]
    finally:
        kill_group(worker, signal.SIGTERM)

    assert event["window_start"].startswith("2026-") and event["rows"] == 200
    expected = expected_examples(path, [v for _, _, v in requests],
                                 [v for _, _, v in on_time], PII_KEY.encode(),
                                 late_feedback=[v for _, _, v in late + outside])
    expected = {rid: e for rid, e in expected.items() if rid in ts}  # not the +3 h ones
    labeled = [json.loads(r.value) for r in read_to_end(any_broker.bootstrap,
                                                        cfg.topics.labeled, timeout=120)]
    corrections = {e["request_id"] for e in labeled if e["label_version"] == 2}
    assert corrections == {rid for rid, _, _ in late}
    assert_examples_match(expected, latest_versions(labeled))
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
    dead = dead_letters(any_broker.bootstrap, cfg.topics.dead_letter)
    assert not [d for d in dead if d["reason"] == "late"], dead[:3]
    manifest = json.loads(next(Path(cfg.dataset.path).glob("window-*/_manifest.json")).read_text())
    assert manifest["version"] == 2 and manifest["stats"]["corrections"] == 40
    assert manifest["stats"]["join_ratio"] == pytest.approx(80 / 200)
    kept = next(Path(cfg.dataset.path).glob("window-*/_versions/v0001/_manifest.json"))
    assert json.loads(kept.read_text())["stats"]["corrections"] == 0
