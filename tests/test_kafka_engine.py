"""Apache Kafka (KRaft, one node) as a broker: ``KafkaBroker`` and what our clients do with it.

One broker for the module (skipped, saying why, without Java 17+ or, before the jars
are cached, Maven). Besides the lifecycle it checks what Tansu cannot do: explicit topic
configs (compacted), idempotent and transactional producers (read_committed, aborts,
offsets committed in a transaction, fencing of a zombie producer).
The Maven-fetch tests use a fake ``mvn`` and run without Java or network.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import ProducerFenced
from aiokafka.structs import TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

import streams.kafka.kafka_broker as kafka_broker
import streams.kafka.kafka_jars as kafka_jars
from schemas.errors import BrokerError
from streams.kafka.broker import probe
from streams.kafka.kafka_broker import KafkaBroker, cached_libs, java_binary, kafka_libs
from streams.kafka.tansu_quirks import is_tansu
from streams.kafka.topics import ensure_topics, partition_count
from tests.waiting import alive, read_to_end, wait_dead, wait_until

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@pytest.fixture
def kafka(kafka_broker) -> KafkaBroker:
    """The session's Apache Kafka (tests/conftest.py: one per test session)."""
    return kafka_broker


def _name() -> str:
    return "k" + uuid.uuid4().hex[:10]


def _create(bootstrap: str, topic: str, partitions: int = 1, **configs: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=configs)])
        admin.wait_for_topics([topic], timeout_ms=60000)
    finally:
        admin.close()


async def _eventually(check: Callable[[], Awaitable[T]], what: str, timeout: float = 60) -> T:
    """``check()``'s first truthy value, polled; AssertionError after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def _read_all(bootstrap: str, topic: str, partitions: int,
                    isolation: str = "read_committed") -> list[bytes]:
    """Every value of ``topic`` a consumer with ``isolation`` sees, once no transaction on
    it is open (the last stable offset has reached the high watermark): exact contents."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation,
                                 enable_auto_commit=False)
    uncommitted = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await committed.start()
    await uncommitted.start()
    try:
        async def settled() -> dict | None:
            stable = await committed.end_offsets(tps)
            return stable if stable == await uncommitted.end_offsets(tps) else None
        ends = await _eventually(settled, f"the transactions on {topic} to complete")
        committed.assign(tps)
        await committed.seek_to_beginning(*tps)
        values: list[bytes] = []

        async def caught_up() -> bool:
            for records in (await committed.getmany(timeout_ms=200)).values():
                values.extend(r.value for r in records)
            return all([await committed.position(tp) >= ends[tp] for tp in tps])
        await _eventually(caught_up, f"reading {topic} to its end")
        return values
    finally:
        await committed.stop()
        await uncommitted.stop()


# -- lifecycle ------------------------------------------------------------------------

def test_starts_and_answers(kafka: KafkaBroker) -> None:
    assert kafka.pid is not None and alive(kafka.pid)
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    assert kafka.url == f"kafka://127.0.0.1:{kafka.port}"
    assert probe("127.0.0.1", kafka.port)
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    assert cluster["cluster_id"] == kafka.cluster_id
    assert [(b["broker_id"], b["port"]) for b in cluster["brokers"]] == [(1, kafka.port)]
    assert not is_tansu(kafka.bootstrap)  # no Tansu work-arounds against real Kafka
    assert kafka.workdir is not None and (kafka.workdir / "data" / "meta.properties").is_file()


def test_second_start_uses_the_cache_and_stop_cleans_up(kafka: KafkaBroker, monkeypatch) -> None:
    def no_maven(*args, **kwargs):
        raise AssertionError("Maven ran although the jars are cached")
    monkeypatch.setattr(kafka_jars, "_maven_fetch", no_maven)
    libs = kafka_libs(kafka.version)
    assert (libs / f"kafka_2.13-{kafka.version}.jar").is_file()
    b = KafkaBroker()  # a second broker, side by side, from the cache
    assert b.pid is None
    b.start()
    pid, workdir, port = b.pid, b.workdir, b.port
    assert pid is not None and workdir is not None and workdir.is_dir()
    assert port != kafka.port and probe("127.0.0.1", port)
    b.stop()
    assert b.pid is None and b.workdir is None
    wait_dead(pid)
    assert not workdir.exists()  # storage, config and log removed
    assert not probe("127.0.0.1", port, timeout=0.5)
    b.stop()  # idempotent


def test_port_in_use_raises(kafka: KafkaBroker) -> None:
    with pytest.raises(BrokerError, match="already in use"):
        KafkaBroker(port=kafka.port).start()


def test_failed_start_says_why_and_cleans_up(kafka: KafkaBroker) -> None:
    b = KafkaBroker(settings={"num.partitions": "many"})
    with pytest.raises(BrokerError) as err:
        b.start()
    assert "num.partitions" in str(err.value)  # from the log tail
    assert b.pid is None and b.workdir is None


def test_jvm_dies_with_killed_parent_and_its_storage_is_swept(kafka: KafkaBroker,
                                                              tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import time
        from streams.kafka.kafka_broker import KafkaBroker
        b = KafkaBroker().start()
        print(b.pid, b.workdir, flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # its working directory goes there
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid_text, workdir_text = parent.stdout.readline().split()
        child, workdir = int(pid_text), Path(workdir_text)
        assert alive(child) and workdir.parent == tmp_path
        assert kafka_broker.sweep_stale_workdirs(tmp_path, min_age_s=0) == []  # in use
        parent.kill()  # SIGKILL: no atexit, no cleanup in Python
        parent.wait()
        wait_dead(child)  # else: the broker outlived its killed parent
        assert workdir.exists()  # left behind ...
        # ... and removed by a later start's sweep, once the last JVM thread released the
        # lock (a killed JVM's main thread is a zombie before its other threads are gone)
        swept = wait_until(lambda: kafka_broker.sweep_stale_workdirs(tmp_path, min_age_s=0),
                           what="the dead broker's directory to be unlocked")
        assert swept == [workdir] and not workdir.exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_run_foreground_until_sigterm(kafka: KafkaBroker) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom streams.kafka.kafka_broker import run_foreground\n"
                               "sys.exit(run_foreground(port=None, host='127.0.0.1'))"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "ready at kafka://127.0.0.1:" in line, proc.stderr.read() if not line else line
        port = int(line.split("kafka://127.0.0.1:")[1].split(";")[0])
        assert probe("127.0.0.1", port)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not probe("127.0.0.1", port, timeout=0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- without Java or Maven: clear errors; the jar cache is whole or absent ----------------

def _fake_mvn(bin_dir: Path, calls: Path, succeed: bool = True) -> None:
    """An ``mvn`` that writes the jars Maven would (or fails half-way), counting its calls."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "mvn"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        from pathlib import Path
        with open({str(calls)!r}, "a") as f:
            f.write("call\\n")
        args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("-D"))
        out = Path(args["outputDirectory"])
        out.mkdir(parents=True)
        (out / "scala-library-2.13.jar").write_bytes(b"jar")
        if not {succeed!r}:
            print("[ERROR] Could not resolve dependencies (fake)")
            sys.exit(1)
        (out / ("kafka_2.13-" + args["kafka.version"] + ".jar")).write_bytes(b"jar")
    """))
    script.chmod(0o755)


def test_fetch_runs_maven_once_into_a_whole_cache(tmp_path: Path, monkeypatch) -> None:
    calls = tmp_path / "calls"
    _fake_mvn(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DLABEL_KAFKA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / ".kafka-9.9.9.tmp-killed").mkdir(parents=True)  # a killed fetch
    assert cached_libs("9.9.9") is None
    libs = kafka_libs("9.9.9")
    assert libs == tmp_path / "cache" / "kafka-9.9.9" / "libs"
    assert (libs / "kafka_2.13-9.9.9.jar").is_file() and cached_libs("9.9.9") == libs
    assert kafka_libs("9.9.9") == libs  # cache hit
    assert calls.read_text().count("call") == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()
                  if not p.name.endswith(".lock")) == ["kafka-9.9.9"]


def test_failed_fetch_leaves_no_cache(tmp_path: Path, monkeypatch) -> None:
    _fake_mvn(tmp_path / "bin", tmp_path / "calls", succeed=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(BrokerError, match="Maven could not fetch Apache Kafka 9.9.9") as err:
        kafka_libs("9.9.9", root=tmp_path / "cache")
    assert "Could not resolve dependencies (fake)" in str(err.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_without_java_or_maven_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BrokerError, match="apt install openjdk-17-jre-headless maven") as err:
        java_binary()
    assert "dlabel broker" in str(err.value) and "java" in str(err.value)
    with pytest.raises(BrokerError, match="cannot find `mvn`"):
        kafka_libs("9.9.9", root=tmp_path / "cache")


def test_old_java_is_refused(tmp_path: Path, monkeypatch) -> None:
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    with pytest.raises(BrokerError, match="is Java 11.*Java 17 or newer"):
        java_binary()


# -- topics and kafka-python ----------------------------------------------------------

def test_topics_created_with_configs(kafka: KafkaBroker, make_config) -> None:
    cfg = make_config("ctr", broker=kafka.url, partitions=3)
    changelog = f"{cfg.pipeline}.state-changelog"
    ensure_topics(kafka.bootstrap, cfg, compacted=[changelog])
    ensure_topics(kafka.bootstrap, cfg, compacted=[changelog])  # again: checks the policy
    assert partition_count(kafka.bootstrap, cfg.topics.requests) == 3
    assert partition_count(kafka.bootstrap, cfg.topics.windows) == 1
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t)
             for t in (changelog, cfg.topics.closed_time, cfg.topics.labeled)],
            config_filter="all")["topic"]
    finally:
        admin.close()
    for compacted in (changelog, cfg.topics.closed_time):
        assert described[compacted]["cleanup.policy"]["value"] == "compact"
        assert described[compacted]["retention.ms"]["value"] == "-1"
    assert described[cfg.topics.labeled]["cleanup.policy"]["value"] == "delete"
    assert described[cfg.topics.labeled]["retention.ms"]["value"] == str(7 * 24 * 3600 * 1000)


def test_auto_created_topics_get_four_partitions(kafka: KafkaBroker) -> None:
    topic = _name()
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap)
    try:
        assert len(producer.partitions_for(topic)) == 4
    finally:
        producer.close()


def test_round_trip_kafka_python(kafka: KafkaBroker) -> None:
    topic, n = _name(), 1000
    _create(kafka.bootstrap, topic, partitions=4)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", linger_ms=5)
    try:
        for i in range(n):
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i)
        producer.flush()
    finally:
        producer.close()
    records = read_to_end(kafka.bootstrap, topic)
    assert Counter(r.key for r in records) == Counter(b"k%d" % i for i in range(n))
    assert all(r.value == b"v" + r.key[1:] for r in records)
    # and a consumer group commits and reads back its offsets
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=_name(),
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=6000, heartbeat_interval_ms=500)
    try:
        seen: list = []
        wait_until(lambda: seen.extend(r for rs in consumer.poll(500).values() for r in rs)
                   or len(seen) >= n, what="the group to read every record")
        consumer.commit()
        assert sum(consumer.committed(tp) or 0 for tp in consumer.assignment()) == n
    finally:
        consumer.close()


# -- aiokafka -------------------------------------------------------------------------

def test_round_trip_aiokafka_idempotent_and_group(kafka: KafkaBroker) -> None:
    topic, group, n = _name(), _name(), 500

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for i in range(n):
                await producer.send(topic, key=b"k%d" % i, value=b"v%d" % i)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=False,
                                    session_timeout_ms=2000, heartbeat_interval_ms=500)
        await consumer.start()
        try:
            values: list[bytes] = []

            async def all_read() -> bool:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values.extend(r.value for r in records)
                return len(values) >= n
            await _eventually(all_read, "the group to read every record")
            await consumer.commit()
            assert Counter(values) == Counter(b"v%d" % i for i in range(n))
            committed = [await consumer.committed(tp) for tp in consumer.assignment()]
            assert sum(c or 0 for c in committed) == n
        finally:
            await consumer.stop()
    asyncio.run(run())


def test_transactions_commit_visible_abort_invisible(kafka: KafkaBroker) -> None:
    source, out, group = _name(), _name(), _name()
    _create(kafka.bootstrap, source)
    _create(kafka.bootstrap, out, partitions=2)

    async def run() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=_name())
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(out, b"committed-1", partition=0)
                await producer.send(out, b"committed-2", partition=1)
                await producer.send_offsets_to_transaction({TopicPartition(source, 0): 5}, group)
            await producer.begin_transaction()
            await (await producer.send(out, b"aborted", partition=0))  # written, then aborted
            await producer.send_offsets_to_transaction({TopicPartition(source, 0): 9}, group)
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(out, b"committed-3", partition=0)
        finally:
            await producer.stop()
        assert Counter(await _read_all(kafka.bootstrap, out, 2)) == Counter(
            [b"committed-1", b"committed-2", b"committed-3"])
        # the aborted record is in the log: only read_committed hides it
        assert b"aborted" in await _read_all(kafka.bootstrap, out, 2, "read_uncommitted")
        # the offsets of the committed transaction count, those of the aborted one do not
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tp = TopicPartition(source, 0)
            await _eventually(lambda: _equals(consumer.committed(tp), 5),
                              "the transaction's offsets to be committed")
        finally:
            await consumer.stop()
    asyncio.run(run())


async def _equals(value: Awaitable[object], expected: object) -> bool:
    return await value == expected


def test_transactions_fence_a_zombie_producer(kafka: KafkaBroker) -> None:
    out, tid = _name(), _name()
    _create(kafka.bootstrap, out)

    async def run() -> None:
        zombie = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=tid)
        await zombie.start()
        try:
            await zombie.begin_transaction()
            await (await zombie.send(out, b"zombie"))
            successor = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, transactional_id=tid)
            await successor.start()  # same id: bumps the epoch, aborts the zombie's transaction
            try:
                with pytest.raises(ProducerFenced):
                    await zombie.commit_transaction()
                async with successor.transaction():
                    await successor.send(out, b"successor")
            finally:
                await successor.stop()
        finally:
            await zombie.stop()
        assert await _read_all(kafka.bootstrap, out, 1) == [b"successor"]
    asyncio.run(run())
