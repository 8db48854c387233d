"""Kafka TLS and SASL end to end, on Apache Kafka: the real `dlabel` processes through a
SASL_SSL listener (SCRAM-SHA-512) and through an SSL listener that requires client
certificates (mutual TLS), then the failure cases (a wrong password, an untrusted CA).

One secured broker for the module (``KafkaBroker`` with ``BrokerSecurity``: a SCRAM
user created at format time, a test CA and broker certificate from ``tls_material``);
its PLAINTEXT listener stays open, and the test reads the topics through it to check
what the secured processes did. Skipped, saying why, only without Java 17+ (or, before
the jars are cached, Maven).

Each pipeline run: ``dlabel simulate``, ``dlabel worker --drain`` (join + sink: the
labeled topic and the Parquet dataset hold exactly the oracle's examples), ``dlabel jobs
--until-idle`` (trains the closed window), ``dlabel status --json``, ``dlabel tail -n 5``.
The failure cases run ``dlabel worker --drain`` against input that is there, and check
that it stops with an error naming the problem and processes nothing.
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from schemas.config import load_config
from schemas.errors import BrokerError
from streams.dev.simulate import generate
from streams.kafka.kafka_broker import KafkaBroker
from streams.kafka.kafka_jars import DEFAULT_KAFKA_VERSION, java_binary, kafka_libs
from streams.kafka.kafka_security import (BrokerSecurity, ServerTls, escape_property,
                                          listener_properties, scram_format_args)
from tests.oracle import assert_examples_match, expected_examples, read_dataset_examples
from tests.pipeline_runs import PII_KEY, write_pipeline
from tests.tls_material import TlsMaterial, make_tls_material
from tests.waiting import read_to_end

ROOT = Path(__file__).resolve().parent.parent
USER = "dlabel-e2e"
PASSWORD = "s3cret-" + uuid.uuid4().hex[:12]
#: the config names this variable (not the default DLABEL_KAFKA_PASSWORD): the
#: password must come from the one the config says
PASSWORD_ENV = "DLABEL_E2E_KAFKA_PASSWORD"
N_REQUESTS, SEED = 1200, 7
#: generous bounds for a shared 2-core machine; a healthy run takes a fraction
RUN_S = 600

kafka = pytest.mark.kafka


@dataclass
class SecuredKafka:
    broker: KafkaBroker
    tls: TlsMaterial


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredKafka]:
    """Apache Kafka with PLAINTEXT, SASL_SSL (SCRAM-SHA-512 user) and SSL (client
    certificates required) listeners, for this module."""
    try:  # skipped only when Kafka cannot run here at all; any other failure fails
        java_binary()
        kafka_libs(os.environ.get("DLABEL_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION)
    except BrokerError as e:
        pytest.skip(f"Apache Kafka cannot run here: {e}")
    tls = make_tls_material(tmp_path_factory.mktemp("tls"))
    security = BrokerSecurity(listeners=("SASL_SSL", "SSL"),
                              tls=ServerTls(str(tls.server_cert), str(tls.server_key), str(tls.ca)),
                              scram_users={USER: PASSWORD}, scram_mechanism="SCRAM-SHA-512",
                              ssl_client_auth="required")
    log = tmp_path_factory.mktemp("secured-kafka") / "kafka.log"
    broker = KafkaBroker(security=security, log_path=str(log)).start(timeout=240)
    try:
        yield SecuredKafka(broker, tls)
    finally:
        broker.stop()


# ------------------------------------------------------------------ pipeline helpers

def _kafka_section(protocol: str, tls: TlsMaterial, cafile: Path | None = None) -> dict:
    """The pipeline's ``kafka:`` section for a listener (``cafile``: trust another CA)."""
    ca = str(cafile or tls.ca)
    if protocol == "SASL_SSL":
        return {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_username": USER, "sasl_password_env": PASSWORD_ENV, "ssl_cafile": ca}
    return {"security_protocol": "SSL", "ssl_cafile": ca,
            "ssl_certfile": str(tls.client_cert), "ssl_keyfile": str(tls.client_key)}


def _pipeline(tmp_path: Path, sk: SecuredKafka, protocol: str, name: str,
              cafile: Path | None = None, file_suffix: str = "") -> Path:
    """A ctr pipeline YAML pointing at ``protocol``'s listener, with its ``kafka:`` section."""
    path = write_pipeline(tmp_path, "ctr", sk.broker.listener_url(protocol), name, partitions=2)
    data = yaml.safe_load(path.read_text())
    data["kafka"] = _kafka_section(protocol, sk.tls, cafile)
    out = path.with_name(f"{name}{file_suffix}.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _env(password: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DLABEL_BROKER", "DLABEL_KAFKA_PASSWORD", PASSWORD_ENV)}
    env.update(DLABEL_PII_KEY=PII_KEY, PYTHONUNBUFFERED="1")
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def _dlabel(env: dict, *args: str, timeout: float = RUN_S) -> subprocess.CompletedProcess:
    """Run ``dlabel ARGS`` to completion (stdout and stderr captured apart)."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _ok(res: subprocess.CompletedProcess, what: str) -> str:
    assert res.returncode == 0, f"{what} exited {res.returncode}:\n{res.stdout[-3000:]}\n" \
                                f"{res.stderr[-5000:]}"
    return res.stdout


def _config(path: Path, password: str | None):
    environ = {"DLABEL_PII_KEY": PII_KEY}
    if password is not None:
        environ[PASSWORD_ENV] = password
    return load_config(path, environ=environ)


def _dataset_files(cfg) -> list[Path]:
    root = Path(cfg.dataset.path)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# ------------------------------------------------------------------ through each listener

@kafka
@pytest.mark.timeout(3 * RUN_S)
@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"], ids=["sasl_ssl-scram", "ssl-mtls"])
def test_pipeline_end_to_end_through_a_secured_listener(secured: SecuredKafka, tmp_path: Path,
                                                        protocol: str) -> None:
    name = f"sec{protocol.lower().replace('_', '')}{uuid.uuid4().hex[:6]}"
    path = _pipeline(tmp_path, secured, protocol, name)
    password = PASSWORD if protocol == "SASL_SSL" else None
    env = _env(password)
    cfg = _config(path, password)
    assert cfg.kafka.security_protocol == protocol
    assert cfg.bootstrap_servers == secured.broker.listener_bootstrap(protocol)
    runs: list[subprocess.CompletedProcess] = []

    def dlabel(what: str, *args: str) -> str:
        """Run `dlabel ARGS` through the secured listener; its stdout (exit code 0)."""
        runs.append(_dlabel(env, *args))
        return _ok(runs[-1], what)

    sim = dlabel("dlabel simulate", "simulate", "-c", str(path), "--requests", str(N_REQUESTS),
                 "--seed", str(SEED))
    assert f"({N_REQUESTS} requests) to {cfg.bootstrap_servers}" in sim

    out = dlabel("dlabel worker --drain", "-v", "worker", "-c", str(path), "--drain")
    last = out.strip().splitlines()[-1]
    summary = json.loads(last[last.index("{"):])  # Faust may prefix a terminal escape

    # what the oracle expects from the events `dlabel simulate` produced
    events = generate(cfg, "ctr", N_REQUESTS, SEED)
    expected = expected_examples(path, [e.value for e in events if e.role == "requests"],
                                 [e.value for e in events if e.role == "feedback"],
                                 PII_KEY.encode())
    assert len(expected) == N_REQUESTS  # each simulated request is valid and labeled once
    # the labeled topic (read through the PLAINTEXT listener) and the Parquet dataset
    labeled_records = read_to_end(secured.broker.bootstrap, cfg.topics.labeled, timeout=180)
    labeled = [json.loads(r.value) for r in labeled_records]
    assert_examples_match(expected, labeled)  # exactly once: no repeats either
    assert_examples_match(expected, read_dataset_examples(cfg.dataset.path))
    assert summary["labeled_sent"] == len(expected)
    assert summary["sink"]["rows"] == len(expected) and summary["sink"]["windows_closed"] >= 1

    jobs = dlabel("dlabel jobs --until-idle", "jobs", "-c", str(path), "--until-idle")
    trained = json.loads(jobs.strip().splitlines()[-1])
    from streams.common.storage import LocalStorage
    from streams.dataset.manifest import list_windows
    closed = [w["window_start"] for w in list_windows(LocalStorage(cfg.dataset.path))
              if w["status"] == "closed"]
    assert closed and sorted(trained["trained"]) == sorted(closed) and not trained["failed"]

    status = json.loads(dlabel("dlabel status", "status", "-c", str(path), "--json"))
    lag = status["lag"]
    assert {r["topic"] for r in lag} == {cfg.topics.requests, cfg.topics.feedback,
                                         cfg.topics.labeled, *cfg.join_inputs.values()}
    inputs = [r for r in lag if r["topic"] != cfg.topics.labeled]
    assert inputs and all(r["lag"] == 0 for r in inputs), inputs
    # the sink consumed every labeled record: its committed offset is past the last one
    # (the end offset may be one more: the last transaction's commit marker)
    after_last = {}
    for r in labeled_records:
        after_last[r.partition] = max(after_last.get(r.partition, 0), r.offset + 1)
    sink_rows = {r["partition"]: r["committed"] for r in lag if r["topic"] == cfg.topics.labeled}
    assert sink_rows == after_last, (sink_rows, after_last)
    assert status["windows"]["closed"] == len(closed)
    assert status["windows"]["rows_closed"] == len(expected)
    assert status["models"]["champion"] is not None
    assert status["models"]["last_job"]["status"] == "trained"

    tail = dlabel("dlabel tail", "tail", "-c", str(path), "-n", "5", "--timeout", "120")
    lines = tail.splitlines()
    assert len(lines) == 5, tail
    tailed = [json.loads(line) for line in lines]
    assert all(t["request_id"] in expected for t in tailed)

    # the password never shows, in any output (the worker logs at INFO)
    assert len(runs) == 5 and not any(PASSWORD in r.stdout + r.stderr for r in runs)


# ------------------------------------------------------------------ failure cases

@dataclass
class FailedStart:
    run: subprocess.CompletedProcess
    cfg: object
    plaintext: str

    @property
    def output(self) -> str:
        return self.run.stdout + self.run.stderr

    @property
    def error_line(self) -> str:
        """The message the command ends with (`Error: ...`), or ''."""
        lines = [line for line in self.run.stderr.splitlines() if line.startswith("Error:")]
        return lines[-1] if lines else ""


def _failed_start(tmp_path: Path, sk: SecuredKafka, protocol: str, *, password: str | None,
                  bad_password: str | None = None, bad_ca: Path | None = None) -> FailedStart:
    """Simulate input with good settings, then run `dlabel worker --drain` with bad ones."""
    name = f"bad{protocol.lower().replace('_', '')}{uuid.uuid4().hex[:6]}"
    good = _pipeline(tmp_path, sk, protocol, name)
    _ok(_dlabel(_env(password), "simulate", "-c", str(good), "--requests", "200",
                "--seed", str(SEED)), "dlabel simulate (good settings)")
    bad = _pipeline(tmp_path, sk, protocol, name, cafile=bad_ca, file_suffix="-bad")
    run = _dlabel(_env(bad_password if bad_password is not None else password),
                  "worker", "-c", str(bad), "--drain")
    return FailedStart(run, _config(good, password), sk.broker.bootstrap)


@pytest.fixture(scope="module")
def wrong_password(secured: SecuredKafka, tmp_path_factory) -> FailedStart:
    """`dlabel worker --drain` through SASL_SSL with a wrong password (run once)."""
    return _failed_start(tmp_path_factory.mktemp("wrong-password"), secured, "SASL_SSL",
                         password=PASSWORD, bad_password="not-" + PASSWORD)


@pytest.fixture(scope="module")
def untrusted_ca(secured: SecuredKafka, tmp_path_factory) -> FailedStart:
    """`dlabel worker --drain` through the mTLS listener trusting another CA (run once)."""
    return _failed_start(tmp_path_factory.mktemp("untrusted-ca"), secured, "SSL",
                         password=None, bad_ca=secured.tls.other_ca)


def _assert_processed_nothing(failed: FailedStart) -> None:
    cfg = failed.cfg
    assert failed.run.returncode != 0, failed.output[-3000:]
    assert "Traceback" not in failed.output, failed.output[-3000:]
    # the input is there, and nothing came of it
    assert read_to_end(failed.plaintext, cfg.topics.requests, timeout=180)
    assert read_to_end(failed.plaintext, cfg.topics.labeled, timeout=180) == []
    assert _dataset_files(cfg) == []


@kafka
@pytest.mark.timeout(2 * RUN_S)
def test_wrong_password_fails_at_start_and_processes_nothing(wrong_password: FailedStart) -> None:
    _assert_processed_nothing(wrong_password)
    assert PASSWORD not in wrong_password.output
    assert wrong_password.error_line, wrong_password.run.stderr[-3000:]
    # Not asserted: that kafka-python's retry log names the refused login. It does only
    # sometimes: when the broker's SaslAuthenticate error response and its closing of
    # the connection arrive in one read, kafka-python 3.0.12 drops the response and
    # logs "socket disconnected" (kafka/net/transport.py, _read_from_sock).


@kafka
@pytest.mark.timeout(2 * RUN_S)
def test_untrusted_ca_fails_at_start_and_processes_nothing(untrusted_ca: FailedStart) -> None:
    _assert_processed_nothing(untrusted_ca)
    # the reason is in the output (logged by the Kafka client while it retried)
    assert "certificate verify failed" in untrusted_ca.output, untrusted_ca.output[-3000:]
    assert untrusted_ca.error_line, untrusted_ca.run.stderr[-3000:]


@kafka
@pytest.mark.timeout(2 * RUN_S)
def test_wrong_password_final_error_names_authentication(wrong_password: FailedStart) -> None:
    line = wrong_password.error_line.lower()
    assert "authentication failed" in line and "start one with" not in line, line


@kafka
@pytest.mark.timeout(2 * RUN_S)
def test_untrusted_ca_final_error_names_certificate(untrusted_ca: FailedStart) -> None:
    line = untrusted_ca.error_line.lower()
    assert "certificate verify failed" in line and "start one with" not in line, line


# ------------------------------------------------------------------ the broker's listeners

def _api_versions(sock: socket.socket) -> bytes:
    body = struct.pack(">hhih", 18, 0, 1, 5) + b"probe"
    sock.sendall(struct.pack(">i", len(body)) + body)
    return sock.recv(8)


@kafka
def test_mtls_listener_requires_a_client_certificate(secured: SecuredKafka) -> None:
    """The SSL listener answers a client with a certificate from the CA, and ends the
    TLS session of one without (so the mTLS runs above did authenticate with theirs)."""
    host, port = secured.broker.listener_bootstrap("SSL").rsplit(":", 1)

    def ask(ctx: ssl.SSLContext) -> bytes:
        with socket.create_connection((host, int(port)), timeout=60) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls_sock:
                tls_sock.settimeout(60)
                return _api_versions(tls_sock)

    ctx = ssl.create_default_context(cafile=str(secured.tls.ca))
    ctx.load_cert_chain(str(secured.tls.client_cert), str(secured.tls.client_key))
    assert len(ask(ctx)) == 8
    # without: the broker's alert ends the handshake (TLS 1.2) or, in TLS 1.3, the
    # session right after it (the client's handshake is over before the broker checks)
    try:
        answer = ask(ssl.create_default_context(cafile=str(secured.tls.ca)))
    except (ssl.SSLError, ConnectionError) as e:
        assert isinstance(e, ConnectionError) or "certificate" in str(e), e
    else:
        assert answer == b"", f"answered a client without a certificate: {answer!r}"


@kafka
def test_listener_addresses(secured: SecuredKafka) -> None:
    b = secured.broker
    ports = {b.port, *b.listener_ports.values()}
    assert len(ports) == 3 and set(b.listener_ports) == {"SASL_SSL", "SSL"}
    assert b.listener_bootstrap() == b.bootstrap
    assert b.listener_url("SSL") == f"kafka://{b.advertised_host}:{b.listener_ports['SSL']}"
    with pytest.raises(KeyError, match="no SASL_PLAINTEXT listener"):
        b.listener_bootstrap("SASL_PLAINTEXT")


# ------------------------------------------------------------------ no broker needed

def test_broker_security_is_checked_and_hides_passwords(tmp_path: Path) -> None:
    tls = make_tls_material(tmp_path)
    server = ServerTls(str(tls.server_cert), str(tls.server_key), str(tls.ca))
    sec = BrokerSecurity(listeners=("SASL_SSL", "SSL"), tls=server, scram_users={"alice": "pw-1"})
    assert "pw-1" not in repr(sec) and sec.scram_user_names == ["alice"]
    assert scram_format_args(sec) == ["--add-scram", "SCRAM-SHA-512=[name=alice,password=pw-1]"]
    props = listener_properties(sec)
    assert props["listener.name.ssl.ssl.client.auth"] == "required"
    assert props["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert props["ssl.keystore.key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert escape_property("a\\b\nc") == "a\\\\b\\nc"
    for bad, match in [(dict(listeners=("SSL",)), "needs tls"),
                       (dict(listeners=("SASL_SSL",), tls=server), "needs scram_users"),
                       (dict(listeners=("TLS",)), "distinct protocols"),
                       (dict(listeners=("SASL_PLAINTEXT",), scram_users={"a": "x,y"}), "password"),
                       (dict(scram_mechanism="PLAIN"), "scram_mechanism")]:
        with pytest.raises(ValueError, match=match):
            BrokerSecurity(**bad)
    assert KafkaBroker().security.listeners == ()  # by default: PLAINTEXT only
