"""`dlabel status` against a pipeline that ran on the real embedded broker."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from schemas.records import DeadLetter
from streams.dataset.sink import sink_group
from streams.dev.simulate import generate, produce
from streams.kafka.topics import ensure_topics
from streams.status import (collect_status, consumer_lag, dead_letters, format_dead_letters,
                            format_status, join_group)
from tests.pipeline_runs import load, run_drain, worker_env, write_pipeline

pytestmark = pytest.mark.broker
ROOT = Path(__file__).resolve().parent.parent


def status(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", "status", "-c", str(path), *args],
                          capture_output=True, text=True, env=worker_env(), cwd=ROOT, timeout=120)


def test_status_shows_lag_watermark_windows_and_models(broker, tmp_path, unique_name):
    path = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=2,
                          dataset={"window": "1m"})
    cfg = load(path)
    produce(broker.bootstrap, cfg, generate(cfg, "ctr", 400, seed=5))

    before = json.loads(status(path, "--json").stdout)
    join_lag = [r for r in before["lag"] if r["topic"] == cfg.topics.requests]
    assert join_lag and all(r["committed"] is None and r["lag"] > 0 for r in join_lag)
    assert before["closed_time"]["closed"] is None and before["windows"]["closed"] == 0

    run_drain(path, tmp_path / "worker.log")

    after = json.loads(status(path, "--json").stdout)
    lag = {(r["group"], r["topic"], r["partition"]): r["lag"] for r in after["lag"]}
    # join: requests, feedback and their repartition topics; sink: labeled
    assert len(lag) == 2 * 5 and all(v == 0 for v in lag.values()), lag
    assert after["closed_time"]["closed"] == "drained" and not after["closed_time"]["unreported_inputs"]
    assert after["windows"]["closed"] >= 1 and after["windows"]["open"] == 0
    assert after["windows"]["rows_closed"] == 400
    assert after["models"]["champion"] is None and after["models"]["last_job"] is None
    # the worker repartitions: nothing can be misrouted, and nothing says so
    dead = after["dead_letters"]
    assert "misrouted" not in dead["reasons"] and dead["hint"] is None

    text = status(path)
    assert text.returncode == 0, text.stderr
    assert "join closed time: drained" in text.stdout and "dead letters: " in text.stdout
    assert "misrouted" not in text.stdout
    assert f"{cfg.topics.labeled}" in text.stdout and "champion: -" in text.stdout


def _config_with_topics(make_config, broker, **kw):
    cfg = make_config("ctr", broker=broker.url, **kw)
    ensure_topics(broker.bootstrap, cfg)
    return cfg


def test_status_counts_dead_letters_by_reason_and_flags_misrouted(broker, make_config):
    cfg = _config_with_topics(make_config, broker, partitions=2)
    reasons = ["late"] * 3 + ["misrouted"] * 4 + ["malformed_json"]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all",
                             enable_idempotence=False)
    try:
        for i, reason in enumerate(reasons):
            dl = DeadLetter(reason, f"detail {i}", cfg.topics.requests, i % 2, i, b'{"x":1}')
            producer.send(cfg.topics.dead_letter, dl.encode(), partition=i % 2)
        producer.send(cfg.topics.dead_letter, b"not an envelope", partition=0)
        producer.flush()
    finally:
        producer.close()

    d = dead_letters(cfg)
    assert d["reasons"] == {"misrouted": 4, "late": 3, "malformed_json": 1}
    assert d["undecodable"] == 1 and d["counted"] == d["total"] == 9
    assert not d["capped"] and d["complete"]
    assert d["hint"].startswith("4 records were on the wrong partition for "
                                "inputs.copartitioned: true")

    s = collect_status(cfg)
    assert json.loads(json.dumps(s, default=str))["dead_letters"]["reasons"]["misrouted"] == 4
    text = format_status(s)
    assert "dead letters: 9 (misrouted 4, late 3, malformed_json 1, undecodable 1)" in text
    assert "!! misrouted: 4 records were on the wrong partition" in text

    capped = dead_letters(cfg, scan=4)  # 2 per partition, the newest
    assert capped["capped"] and capped["counted"] == 4 and capped["total"] == 9
    assert "  (the newest 4 of 9 in " in "\n".join(format_dead_letters(capped))


def test_status_without_dead_letters_has_no_hint(broker, make_config):
    cfg = _config_with_topics(make_config, broker, partitions=2)
    d = dead_letters(cfg)
    assert d["reasons"] == {} and d["total"] == 0 and d["hint"] is None
    assert format_dead_letters(d) == ["dead letters: 0"]


def test_lag_covers_inputs_with_their_own_partition_counts_and_repartition_topics(
        broker, make_config):
    cfg = make_config("ctr", broker=broker.url, partitions=2)
    assert cfg.repartitions
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:  # the model server's topic, as its owner made it: 3 partitions, not 2
        admin.create_topics([NewTopic(cfg.topics.requests, 3, 1,
                                      topic_configs={"cleanup.policy": "delete"})])
    finally:
        admin.close()
    ensure_topics(broker.bootstrap, cfg)
    produce(broker.bootstrap, cfg, generate(cfg, "ctr", 60, seed=3), ensure=False)

    rows = consumer_lag(cfg)
    parts: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        parts.setdefault((r["group"], r["topic"]), []).append(r["partition"])
    join = join_group(cfg)
    t = cfg.topics
    assert parts == {(join, t.requests): [0, 1, 2], (join, t.feedback): [0, 1],
                     (join, cfg.join_inputs["requests"]): [0, 1],
                     (join, cfg.join_inputs["feedback"]): [0, 1],
                     (sink_group(cfg), t.labeled): [0, 1]}
    requests = [r for r in rows if r["topic"] == t.requests]
    assert sum(r["end"] for r in requests) > 0
    assert all(r["committed"] is None and r["lag"] == r["end"] for r in requests)


def test_lag_copartitioned_reads_only_the_inputs(broker, make_config):
    cfg = make_config("ctr", broker=broker.url, partitions=2)
    cfg = dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, copartitioned=True))
    ensure_topics(broker.bootstrap, cfg)
    topics = {r["topic"] for r in consumer_lag(cfg)}
    assert topics == {cfg.topics.requests, cfg.topics.feedback, cfg.topics.labeled}
