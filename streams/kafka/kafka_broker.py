"""A single-node Apache Kafka broker (KRaft, combined broker + controller) for tests and demos.

``KafkaBroker`` is the real-Kafka sibling of ``EmbeddedBroker`` (Tansu): same surface
(``start``/``stop``/context manager, ``bootstrap``, ``url``, ``pid``, from
``BrokerProcess``), same promise that the broker never outlives us (its own process
group, an ``atexit`` hook, and on Linux ``PR_SET_PDEATHSIG`` so the kernel kills the JVM
when the starting thread dies, which covers ``kill -9`` of the Python process).

It runs the official jars, fetched once with Maven into a cache (``kafka_jars``). Each
start formats fresh storage (``kafka.tools.StorageTool format --standalone`` with a
random cluster id) in a temporary directory that ``stop`` removes, together with the
broker's log (WARN and up, through a minimal log4j2 config) unless ``log_path`` says
where to keep it. A directory left by a killed process is removed by a later start
(``kafka_workdir``).

Needs Java 17+ and, for the first start of a version, Maven (``mvn``). The settings
(``TEST_SETTINGS``) suit tests on a small machine: replication factor 1 everywhere, 4
partitions for auto-created topics, no initial rebalance delay, session timeouts down to
500 ms, a small heap. Unlike Tansu it has transactions, idempotent producers, compaction
and true ListOffsets.

``security=BrokerSecurity(...)`` (``kafka_security``) adds secured listeners besides the
PLAINTEXT one: SASL_SSL / SASL_PLAINTEXT with SCRAM users created at format time, SSL
requiring client certificates; ``listener_bootstrap("SASL_SSL")`` is their address.
"""
from __future__ import annotations

import base64
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

from schemas.errors import BrokerError
from streams.kafka.broker_process import BrokerProcess, serve_in_foreground
from streams.kafka.child_process import StopAtExit, die_with_parent_preexec, free_port, port_taken
from streams.kafka.kafka_jars import (DEFAULT_KAFKA_VERSION, INSTALL_HINT, cache_root, cached_libs,
                                      java_binary, kafka_libs)
from streams.kafka.kafka_security import (BrokerSecurity, escape_property,
                                          listener_properties, scram_format_args)
from streams.kafka.kafka_workdir import (LOG4J2_XML, OWNER_LOCK, WORKDIR_PREFIX,
                                         sweep_stale_workdirs)

__all__ = ["KafkaBroker", "run_foreground", "TEST_SETTINGS", "JVM_OPTIONS", "SERVER_JVM_OPTIONS"]

#: broker settings on top of Kafka's defaults: a one-node cluster for tests on a small machine
TEST_SETTINGS: dict[str, str] = {
    "num.partitions": "4",  # like Tansu's auto-create
    # keep every record, like Tansu: simulated and replayed events carry event-time
    # timestamps days old, which the default 7-day retention would delete at once
    "log.retention.ms": "-1",
    "auto.create.topics.enable": "true",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "10",  # default 50: the first group waits for 50 logs
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # fast consumer groups: no wait for more members, short sessions allowed (Faust: 2 s)
    "group.initial.rebalance.delay.ms": "0",
    "group.min.session.timeout.ms": "500",
    # a 2-core machine: fewer threads, a 16 MB compaction buffer (default 128 MB of heap)
    "num.network.threads": "2",
    "num.io.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "background.threads": "4",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
}
#: JVM options of a long-running broker besides the maximum heap (Kafka's scripts use G1;
#: the serial collector needs fewer threads and less memory on a small machine, and a
#: small initial heap keeps the idle broker at ~170 MB instead of ~200 MB)
SERVER_JVM_OPTIONS: tuple[str, ...] = ("-Xms64m", "-XX:+UseSerialGC",
                                       "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true")
#: ``KafkaBroker``'s default: the client compiler only (C1) halves the start on 2 cores
#: (~3 s instead of ~6 s to answer); aiokafka's produce/consume rates against it were
#: within the run-to-run noise of C2's
JVM_OPTIONS: tuple[str, ...] = SERVER_JVM_OPTIONS + ("-XX:TieredStopAtLevel=1",)


def _cluster_id() -> str:
    """A random Kafka cluster id (22 characters of URL-safe base64, not starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class KafkaBroker(BrokerProcess):
    """A single-node Apache Kafka (KRaft, broker + controller in one JVM) as a child process.

    ``port=None`` picks a free port for the client listener (the controller listener
    always gets a free port on 127.0.0.1). ``advertised_host`` is what clients are told
    to connect to (default: ``host``, or ``localhost`` for a wildcard address).
    ``version`` defaults to ``$DLABEL_KAFKA_VERSION`` or ``DEFAULT_KAFKA_VERSION``.
    ``settings`` override ``TEST_SETTINGS`` / Kafka's defaults (``server.properties``
    keys); ``heap`` is the JVM's ``-Xmx`` and ``jvm_options`` its other options (default
    ``JVM_OPTIONS``, quick to start; ``SERVER_JVM_OPTIONS`` for a long run). The broker
    log goes to ``log_path`` (default: ``kafka.log`` in the working directory, removed on
    ``stop``); ``log_tail()`` returns its end. ``timings`` holds the seconds the last
    ``start`` spent fetching jars, formatting storage and waiting for the broker to answer.

    ``security`` (default: none) adds secured listeners (``BrokerSecurity``: SASL_SSL,
    SASL_PLAINTEXT with SCRAM users made at format time, SSL with client certificates
    required), each on a free port of ``host``; ``listener_bootstrap(protocol)`` gives
    its address. The PLAINTEXT listener (``bootstrap``), the controller and inter-broker
    traffic stay unsecured.
    """

    stop_timeout_s = 10.0
    first_poll_s = 0.02
    _at_exit = StopAtExit(timeout=5.0)

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 advertised_host: str | None = None, version: str | None = None,
                 log_path: str | None = None, heap: str = "512m",
                 settings: Mapping[str, str] | None = None,
                 jvm_options: Sequence[str] = JVM_OPTIONS,
                 cache_dir: str | Path | None = None,
                 security: BrokerSecurity | None = None) -> None:
        super().__init__(port, host, advertised_host, log_path)
        self.security = security or BrokerSecurity()
        #: the port of each secured listener, by protocol (new free ports on every start)
        self.listener_ports: dict[str, int] = {}
        self.controller_port: int | None = None
        self.version = version or os.environ.get("DLABEL_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION
        self.heap = heap
        self.settings = dict(settings or {})
        self.jvm_options = tuple(jvm_options)
        self.cache_dir = cache_dir
        self.cluster_id: str | None = None
        self.workdir: Path | None = None
        self.timings: dict[str, float] = {}
        self._owner_fd: int | None = None

    @property
    def name(self) -> str:
        return f"Apache Kafka {self.version}"

    def listener_bootstrap(self, protocol: str = "PLAINTEXT") -> str:
        """``host:port`` of the listener for ``protocol`` (``PLAINTEXT``: ``bootstrap``;
        otherwise one of ``security.listeners``, whose port is known once ``start`` ran)."""
        if protocol == "PLAINTEXT":
            return self.bootstrap
        if protocol not in self.security.listeners:
            raise KeyError(f"this broker has no {protocol} listener (its listeners: PLAINTEXT"
                           f"{''.join(', ' + p for p in self.security.listeners)})")
        if protocol not in self.listener_ports:
            raise KeyError(f"the {protocol} listener has no port before start()")
        return f"{self.advertised_host}:{self.listener_ports[protocol]}"

    def listener_url(self, protocol: str = "PLAINTEXT") -> str:
        """``kafka://host:port`` of the listener for ``protocol`` (see ``listener_bootstrap``)."""
        return f"kafka://{self.listener_bootstrap(protocol)}"

    def _pick_listener_ports(self) -> None:
        """Free ports of ``host`` for the secured listeners, distinct from the others."""
        taken = {self.port, self.controller_port}
        self.listener_ports = {}
        for protocol in self.security.listeners:
            port = free_port(self.host)
            while port in taken:
                port = free_port(self.host)
            taken.add(port)
            self.listener_ports[protocol] = port

    # -- configuration --------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """The broker's ``server.properties`` for the current ports and working directory."""
        assert self.workdir is not None and self.controller_port is not None
        controller = f"127.0.0.1:{self.controller_port}"
        host, advertised = (f"[{h}]" if ":" in h else h for h in (self.host, self.advertised_host))
        secured = [(p, self.listener_ports[p]) for p in self.security.listeners]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": ",".join([f"PLAINTEXT://{host}:{self.port}",
                                   *(f"{p}://{host}:{port}" for p, port in secured),
                                   f"CONTROLLER://{controller}"]),
            "advertised.listeners": ",".join([f"PLAINTEXT://{advertised}:{self.port}",
                                              *(f"{p}://{advertised}:{port}"
                                                for p, port in secured)]),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT", *(f"{p}:{p}" for p, _ in secured)]),
            "log.dirs": str(self.workdir / "data"),
        }
        props.update(listener_properties(self.security))
        props.update(TEST_SETTINGS)
        props.update(self.settings)
        return props

    def _make_workdir(self) -> None:
        """A fresh working directory holding the config, the storage and (by default) the log."""
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self._owner_fd = os.open(self.workdir / OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if self._log_path_arg is None:
            self.log_path = str(self.workdir / "kafka.log")
        (self.workdir / "log4j2.xml").write_text(LOG4J2_XML)
        props = self.server_properties()
        (self.workdir / "server.properties").write_text(
            "".join(f"{k}={escape_property(v)}\n" for k, v in props.items()))

    def _clean_up(self) -> None:
        """Remove the working directory (config, storage, log) after a stop."""
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._owner_fd is not None:
            os.close(self._owner_fd)
        self.workdir, self._owner_fd = None, None
        if self._log_path_arg is None:
            self.log_path = None

    def _java_cmd(self, java: str, libs: Path, *args: str,
                  options: Sequence[str] = ()) -> list[str]:
        assert self.workdir is not None
        # java.io.tmpdir: native compression libraries unpack there; the sweep removes it
        return [java, *options, f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.xml'}",
                f"-Djava.io.tmpdir={self.workdir}", "-cp", str(libs / "*"), *args]

    def _format(self, java: str, libs: Path) -> None:
        """Format the storage (one node, standalone controller quorum, a random cluster id)."""
        assert self.workdir is not None and self.log_path is not None
        self.cluster_id = _cluster_id()
        # a short-lived JVM: the client compiler alone starts faster
        cmd = self._java_cmd(java, libs, "kafka.tools.StorageTool", "format",
                             "--cluster-id", self.cluster_id,
                             "--config", str(self.workdir / "server.properties"), "--standalone",
                             *scram_format_args(self.security),
                             options=("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"))
        with open(self.log_path, "ab") as log:
            try:
                code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=120, close_fds=True,
                                      preexec_fn=die_with_parent_preexec()).returncode
            except subprocess.TimeoutExpired:
                code = None
            except OSError as e:
                raise BrokerError(f"cannot run {java}: {e}. {INSTALL_HINT}") from None
        if code != 0:
            raise BrokerError(f"formatting the Kafka storage in {self.workdir} failed "
                              f"({'timed out' if code is None else f'exit code {code}'}); "
                              f"log tail:\n{self.log_tail()}")

    def _spawn(self, java: str, libs: Path) -> subprocess.Popen[bytes]:
        assert self.workdir is not None and self.log_path is not None
        cmd = self._java_cmd(java, libs, "kafka.Kafka", str(self.workdir / "server.properties"),
                             options=(f"-Xmx{self.heap}", *self.jvm_options))
        with open(self.log_path, "ab") as log:
            try:
                # the JVM inherits the owner lock: the directory stays "in use" while it lives
                inherit = () if self._owner_fd is None else (self._owner_fd,)
                return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent_preexec(), close_fds=True,
                                        pass_fds=inherit, cwd=self.workdir)
            except OSError as e:
                raise BrokerError(f"cannot run {java}: {e}. {INSTALL_HINT}") from None

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "KafkaBroker":
        """Fetch the jars if needed, format fresh storage, start the JVM, wait until it answers.

        ``timeout`` bounds the wait for the broker to answer ApiVersions and a Metadata
        request that lists it (not the one-time Maven fetch). Raises BrokerError (with
        the log tail) if Java or Maven is missing, the port is taken, the JVM dies or
        does not answer in time. Starting a running broker is a no-op.
        """
        with self._lock:
            if self.running:
                return self
            java = java_binary()
            t0 = time.monotonic()
            libs = kafka_libs(self.version, self.cache_dir)
            self.timings = {"fetch": time.monotonic() - t0}
            sweep_stale_workdirs()
            for attempt in range(3):
                if self._auto_port and attempt:
                    self.port = free_port(self.host)
                if port_taken(self.host, self.port):
                    if self._auto_port and attempt < 2:
                        continue
                    raise BrokerError(
                        f"cannot start Apache Kafka: port {self.port} on {self.host} is already in "
                        "use (another broker running?); stop it or choose another port "
                        "(dlabel broker --engine kafka --port N)")
                self.controller_port = free_port("127.0.0.1")
                while self.controller_port == self.port:
                    self.controller_port = free_port("127.0.0.1")
                self._pick_listener_ports()
                try:
                    self._make_workdir()
                    t1 = time.monotonic()
                    self._format(java, libs)
                    t2 = time.monotonic()
                    self._proc = self._spawn(java, libs)
                    self._at_exit.add(self)
                    self._wait_ready(timeout)
                    self._wait_listeners(timeout)
                    self.timings.update(format=t2 - t1, ready=time.monotonic() - t2)
                    return self
                except BaseException as e:
                    tail = self.log_tail()
                    self._stop_locked()
                    raced = "Address already in use" in tail
                    if isinstance(e, BrokerError) and raced and attempt < 2:
                        continue  # lost a race for a port (a taken fixed port is refused above)
                    raise
            raise BrokerError("cannot start Apache Kafka: no free port found")

    def _wait_listeners(self, timeout: float) -> None:
        """Return once every secured listener accepts TCP connections (Kafka opens them
        with the PLAINTEXT one, which already answers); BrokerError otherwise."""
        deadline = time.monotonic() + timeout
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else (
            "::1" if self.host == "::" else self.host)
        for protocol, port in self.listener_ports.items():
            while True:
                try:
                    socket.create_connection((connect_host, port), timeout=1.0).close()
                    break
                except OSError:
                    pass
                if self._proc is None or self._proc.poll() is not None \
                        or time.monotonic() >= deadline:
                    raise BrokerError(f"{self.name}: its {protocol} listener on port {port} "
                                      f"does not accept connections; log tail:\n{self.log_tail()}")
                time.sleep(0.05)

    def __repr__(self) -> str:
        return f"KafkaBroker(version={self.version!r}, url={self.url!r}, pid={self.pid})"


def run_foreground(port: int | None = None, host: str = "0.0.0.0",
                   advertised_host: str | None = None, version: str | None = None) -> int:
    """Run Apache Kafka until Ctrl-C or SIGTERM (``dlabel broker --engine kafka``).

    ``port=None`` picks a free port. Prints the bootstrap address once the broker is
    ready. Returns 0 after a requested shutdown, 1 if it could not start, and the
    broker's exit code (or 1) if it died.
    """
    broker = KafkaBroker(port=port, host=host, advertised_host=advertised_host, version=version,
                         jvm_options=SERVER_JVM_OPTIONS)
    return serve_in_foreground(
        broker, exited_name="Apache Kafka", prepare=lambda: _say_if_fetching(broker),
        ready=lambda: (f"dlabel broker: Apache Kafka {broker.version} (KRaft, single node) ready "
                       f"at {broker.url}; bootstrap servers {broker.bootstrap} (listening on "
                       f"{host}:{broker.port}, storage in {broker.workdir}, removed on stop); "
                       "Ctrl-C to stop"))


def _say_if_fetching(broker: KafkaBroker) -> None:
    """Tell the operator why the first start of a version takes a while."""
    if cached_libs(broker.version, broker.cache_dir) is None and shutil.which("mvn"):
        print(f"dlabel broker: fetching the Apache Kafka {broker.version} jars with Maven "
              f"into {cache_root() / f'kafka-{broker.version}'} (once)",
              file=sys.stderr, flush=True)
