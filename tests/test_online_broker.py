"""In-window updates on the broker: ``dlabel jobs`` (run_forever) reads the labeled topic
between window jobs and publishes the serving model; a restart resumes where the open
windows' rows begin; ``dlabel models serving`` shows it."""
from __future__ import annotations

import json
import threading

import pytest
from click.testing import CliRunner
from kafka import KafkaProducer

from jobs.cli import models
from jobs.dataset import window_dirname
from jobs.online_feed import UpdaterLoop
from jobs.registry import Registry
from jobs.runner import run_forever
from jobs.serving import ServingStore
from streams.dev.synthetic_windows import window_event
from streams.kafka.broker import EmbeddedBroker
from streams.kafka.topics import ensure_topics
from tests.jobs_support import write_yaml
from tests.online_support import close_window, ctr_rows, topic_rows, with_updates
from tests.waiting import wait_until


@pytest.mark.broker
def test_jobs_runner_publishes_in_window_updates_and_resumes(broker: EmbeddedBroker,
                                                             make_config, tmp_path):
    cfg = with_updates(make_config("ctr", broker=broker.url), tmp_path, every_rows=100,
                       retries=0)
    ensure_topics(broker.bootstrap, cfg)
    start, df = ctr_rows(0, rows=400)
    close_window(cfg, start, df)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                             acks="all")
    manifest = f"{cfg.dataset.path}/{window_dirname(start)}/_manifest.json"
    producer.send(cfg.topics.windows, value=json.dumps(window_event(manifest)).encode())
    open_rows = topic_rows(ctr_rows(1, rows=400)[1])
    for row in topic_rows(df) + open_rows:  # the labeled topic: window 0's rows, then 1's
        producer.send(cfg.topics.labeled, key=row["request_id"].encode(),
                      value=json.dumps(row).encode())
    producer.flush()
    store = ServingStore(cfg.model.path)

    def serving_line_rows():
        ptr = store.pointer() or {}
        if not (ptr.get("dir") and ptr["champion"] == "v0001"):
            return None
        return store.update_record(ptr["version"])["line_rows"]

    stop = threading.Event()
    t = threading.Thread(target=lambda: run_forever(cfg, idle_s=0.5, stop=stop.is_set))
    t.start()
    try:
        wait_until(lambda: serving_line_rows() == 400, timeout=180, interval=0.2,
                   what="a sub-version of v0001 that learned window 1's 400 rows")
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    assert Registry(cfg.model.path).champion() == "v0001"
    name, model = store.load()
    assert name.startswith("v0001.u") and model.rows_seen == 400 + 400
    # a restart reads from the first row of the open window 1 on each partition: its
    # 400 rows again, none of window 0's (closed: in the champion)
    loop = UpdaterLoop(cfg)
    try:
        assert len(loop.updater.pending) == 400
        assert {r["window_start"] for r in loop.updater.pending} == {ctr_rows(1)[0]}
        assert loop.tick(0.2).startswith("v0001.u")
        assert store.update_record(store.pointer()["version"])["line_rows"] == 400
    finally:
        loop.close()
    out = CliRunner().invoke(models, ["-c", str(write_yaml(cfg, "ctr", tmp_path / "p.yaml",
                                                           update_every="100 rows")),
                                      "serving"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["serving"] == store.pointer()["version"] and shown["champion"] == "v0001"
    assert shown["update"]["line_rows"] == 400


@pytest.mark.broker
def test_the_updater_waits_for_a_labeled_topic_created_after_it(broker: EmbeddedBroker,
                                                                make_config, tmp_path):
    cfg = with_updates(make_config("ctr", broker=broker.url, suffix="late"), tmp_path,
                       every_rows=50)
    loop = UpdaterLoop(cfg)  # the topic does not exist yet: nothing to read, no error
    try:
        assert loop.tick(0.2) is None and loop.feed.tps == []
        ensure_topics(broker.bootstrap, cfg)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                                 acks="all")
        for row in topic_rows(ctr_rows(0, rows=60)[1]):
            producer.send(cfg.topics.labeled, key=row["request_id"].encode(),
                          value=json.dumps(row).encode())
        producer.flush()
        producer.close()
        published = []
        wait_until(lambda: published.append(loop.tick(0.3)) or "v0000.u0001" in published,
                   timeout=120, interval=0.1, what="the first update once the topic exists")
    finally:
        loop.close()
    store = ServingStore(cfg.model.path)
    assert 50 <= store.load()[1].rows_seen == store.update_record("v0000.u0001")["line_rows"]
