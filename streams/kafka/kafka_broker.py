"""A single-node Apache Kafka broker (KRaft, combined broker + controller) for tests and demos.

``KafkaBroker`` is the real-Kafka sibling of ``EmbeddedBroker`` (Tansu): same surface
(``start``/``stop``/context manager, ``bootstrap``, ``url``, ``pid``), same promise that
the broker never outlives us (its own process group, an ``atexit`` hook, and on Linux
``PR_SET_PDEATHSIG`` so the kernel kills the JVM when the starting thread dies, which
covers ``kill -9`` of the Python process).

It runs the official jars (``kafka_2.13``, main class ``kafka.Kafka``), fetched once
with Maven from the small pom shipped next to this module (``kafka-broker-pom.xml``)
into ``$DLABEL_KAFKA_CACHE/kafka-<version>/libs`` (default cache root
``~/.cache/dlabel``). The fetch goes to a temporary directory that is renamed into place
when complete, so a killed fetch never leaves a half cache; later starts do not run
Maven. Each start formats fresh storage (``kafka.tools.StorageTool format --standalone``
with a random cluster id) in a temporary directory that ``stop`` removes, together with
the broker's log (WARN and up, through a minimal log4j2 config) unless ``log_path`` says
where to keep it. A directory left by a killed process is removed by a later start.

Needs Java 17+ (``$JAVA_HOME/bin/java`` or ``java`` on PATH) and, for the first start of
a version, Maven (``mvn``). The settings (``TEST_SETTINGS``) suit tests on a small
machine: replication factor 1 everywhere, 4 partitions for auto-created topics, no
initial rebalance delay, session timeouts down to 500 ms, a small heap. Unlike Tansu it
has transactions, idempotent producers, compaction and true ListOffsets.
"""
from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import FrameType, TracebackType
from typing import Callable, Iterator, Mapping, Optional, Sequence

from schemas.errors import BrokerError
from streams.kafka.broker import free_port, probe

__all__ = ["KafkaBroker", "run_foreground", "DEFAULT_KAFKA_VERSION", "MIN_JAVA", "TEST_SETTINGS",
           "JVM_OPTIONS", "SERVER_JVM_OPTIONS", "INSTALL_HINT", "POM", "cache_root", "cached_libs",
           "kafka_libs", "java_binary", "sweep_stale_workdirs"]

#: the Kafka release ``KafkaBroker`` runs unless told otherwise (``version=`` or
#: ``$DLABEL_KAFKA_VERSION``); any 4.x (and 3.9.x) release on Maven Central works the same way
DEFAULT_KAFKA_VERSION = "4.4.0"
#: Kafka 4 brokers need Java 17
MIN_JAVA = 17
#: the Maven project whose runtime dependencies are the broker's classpath
POM = Path(__file__).with_name("kafka-broker-pom.xml")
INSTALL_HINT = ("Java 17+ (java) and Maven (mvn) are needed for --engine kafka; install them, "
                "e.g. `apt install openjdk-17-jre-headless maven`, or use the embedded Tansu "
                "broker (dlabel broker)")

#: broker settings on top of Kafka's defaults: a one-node cluster for tests on a small machine
TEST_SETTINGS: dict[str, str] = {
    "num.partitions": "4",  # like Tansu's auto-create
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

_LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="warn">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="warn"><AppenderRef ref="out"/></Root>
  </Loggers>
</Configuration>
"""
_PR_SET_PDEATHSIG = 1
_LOG_TAIL_BYTES = 4000
_WORKDIR_PREFIX = "dlabel-kafka-"
_OWNER_LOCK = "owner.lock"
_STALE_AFTER_S = 60.0
_FETCH_TIMEOUT_S = 900.0
_LIVE: "weakref.WeakSet[KafkaBroker]" = weakref.WeakSet()
_JAVA_MAJOR: dict[str, int] = {}


# -- prerequisites --------------------------------------------------------------------

def java_binary() -> str:
    """Path of a Java 17+ ``java`` (``$JAVA_HOME/bin/java``, else ``java`` on PATH).

    Raises BrokerError saying what to install when there is none or it is too old.
    """
    home = os.environ.get("JAVA_HOME")
    candidate = os.path.join(home, "bin", "java") if home else ""
    java = candidate if candidate and os.access(candidate, os.X_OK) else shutil.which("java")
    if not java:
        raise BrokerError(f"cannot find `java` on PATH{' or in $JAVA_HOME' if home else ''}. "
                          f"{INSTALL_HINT}")
    major = _JAVA_MAJOR.get(java)
    if major is None:
        major = _JAVA_MAJOR[java] = _java_major(java)
    if major < MIN_JAVA:
        raise BrokerError(f"{java} is Java {major}, but Apache Kafka 4 needs Java {MIN_JAVA} or "
                          f"newer (set $JAVA_HOME or PATH to a newer one). {INSTALL_HINT}")
    return java


def _java_major(java: str) -> int:
    """The major version ``java -version`` reports (8 for ``1.8.0_x``, 17 for ``17.0.15``)."""
    try:
        out = subprocess.run([java, "-version"], stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BrokerError(f"cannot run `{java} -version` ({e}). {INSTALL_HINT}") from None
    text = out.stderr + out.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not m:
        raise BrokerError(f"cannot tell the Java version from `{java} -version`: "
                          f"{text.strip()[:200]!r}. {INSTALL_HINT}")
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def cache_root() -> Path:
    """Where fetched Kafka jars live: ``$DLABEL_KAFKA_CACHE``, else ``~/.cache/dlabel``
    (``$XDG_CACHE_HOME/dlabel`` when that is set). Each version gets ``kafka-<version>/libs``."""
    env = os.environ.get("DLABEL_KAFKA_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "dlabel"


def _libs_complete(libs: Path, version: str) -> bool:
    return (libs / f"kafka_2.13-{version}.jar").is_file()


def cached_libs(version: str = DEFAULT_KAFKA_VERSION,
                root: Optional[Path | str] = None) -> Optional[Path]:
    """The jar directory of ``version`` if it is in the cache, else None (runs nothing)."""
    libs = Path(root or cache_root()) / f"kafka-{version}" / "libs"
    return libs if _libs_complete(libs, version) else None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (waits for another process holding it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def kafka_libs(version: str = DEFAULT_KAFKA_VERSION, root: Optional[Path | str] = None,
               timeout: float = _FETCH_TIMEOUT_S) -> Path:
    """The directory of the broker's jars for ``version``, fetched with Maven on a cache miss.

    Maven copies the runtime dependencies of ``kafka-broker-pom.xml`` into a temporary
    directory under the cache root, which is renamed to ``kafka-<version>`` when Maven
    succeeded: the cache is whole or absent. Concurrent callers wait on a lock file and
    then find the cache filled. Raises BrokerError if Maven is missing or fails.
    """
    root = Path(root or cache_root())
    home = root / f"kafka-{version}"
    libs = home / "libs"
    if _libs_complete(libs, version):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerError(f"cannot find `mvn` on PATH to fetch the Apache Kafka {version} jars "
                          f"(once, into {home}). {INSTALL_HINT}")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BrokerError(f"cannot create the Kafka jar cache {root} ({e}); "
                          "point $DLABEL_KAFKA_CACHE at a writable directory") from None
    with _file_lock(root / f".kafka-{version}.lock"):
        if _libs_complete(libs, version):
            return libs  # another process fetched it while we waited
        for stale in root.glob(f".kafka-{version}.tmp-*"):  # left by a killed fetch
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".kafka-{version}.tmp-", dir=root))
        try:
            _maven_fetch(mvn, version, tmp, timeout)
            if home.exists():  # incomplete (jars deleted by hand): replace it
                shutil.rmtree(home, ignore_errors=True)
            os.rename(tmp, home)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _maven_fetch(mvn: str, version: str, workdir: Path, timeout: float) -> None:
    """Copy the broker's runtime jars into ``workdir/libs`` with Maven."""
    pom = workdir / "pom.xml"
    shutil.copyfile(POM, pom)
    cmd = [mvn, "-q", "-B", "-f", str(pom), f"-Dkafka.version={version}",
           "dependency:copy-dependencies", "-DincludeScope=runtime",
           f"-DoutputDirectory={workdir / 'libs'}"]
    try:
        proc = subprocess.run(cmd, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout,
                              preexec_fn=_child_preexec())
    except subprocess.TimeoutExpired:
        raise BrokerError(f"Maven did not fetch Apache Kafka {version} within {timeout:g}s "
                          "(is Maven Central reachable? check Maven's proxy/mirror settings "
                          "in ~/.m2/settings.xml)") from None
    except OSError as e:
        raise BrokerError(f"cannot run Maven ({mvn}): {e}. {INSTALL_HINT}") from None
    if proc.returncode != 0 or not _libs_complete(workdir / "libs", version):
        tail = proc.stdout.decode("utf-8", "replace")[-_LOG_TAIL_BYTES:]
        raise BrokerError(f"Maven could not fetch Apache Kafka {version} (`{' '.join(cmd)}` "
                          f"exited with code {proc.returncode}; is the version on Maven Central "
                          f"and Maven Central reachable?); output tail:\n{tail}")


# -- child processes ------------------------------------------------------------------

def _child_preexec() -> Optional[Callable[[], None]]:
    """A preexec_fn asking Linux to SIGKILL the child when the forking thread dies.

    PDEATHSIG fires when the *thread* that forked dies, so it is used only from the main
    thread; children started elsewhere rely on ``atexit`` and their process group.
    """
    if not sys.platform.startswith("linux") \
            or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


def _port_taken(host: str, port: int) -> bool:
    """True if binding ``host:port`` fails (someone listens there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _cluster_id() -> str:
    """A random Kafka cluster id (22 characters of URL-safe base64, not starting with '-')."""
    while True:
        cid = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def sweep_stale_workdirs(base: Path | str | None = None,
                         min_age_s: float = _STALE_AFTER_S) -> list[Path]:
    """Remove working directories of brokers whose owner died without ``stop`` (kill -9).

    Looks in ``base`` (default: the temporary directory). A live owner (the Python
    process, or its JVM) holds a ``flock`` on ``owner.lock`` in its directory; a
    directory whose lock can be taken and that did not change for ``min_age_s`` belongs
    to nobody. Returns the directories removed. ``start`` calls this.
    """
    now = time.time()
    removed = []
    for d in Path(base or tempfile.gettempdir()).glob(_WORKDIR_PREFIX + "*"):
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid() \
                    or now - st.st_mtime < min_age_s:
                continue
            fd = os.open(d / _OWNER_LOCK, os.O_RDWR)
        except FileNotFoundError:  # killed between creating the directory and locking it
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # in use
        try:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        finally:
            os.close(fd)
    return removed


# -- the broker -----------------------------------------------------------------------

class KafkaBroker:
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
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 advertised_host: str | None = None, version: str | None = None,
                 log_path: str | None = None, heap: str = "512m",
                 settings: Mapping[str, str] | None = None,
                 jvm_options: Sequence[str] = JVM_OPTIONS,
                 cache_dir: str | Path | None = None) -> None:
        self.host = host
        self._auto_port = port is None
        self.port: int = free_port(host) if port is None else int(port)
        self.controller_port: int | None = None
        self.advertised_host = advertised_host or (
            "localhost" if host in ("0.0.0.0", "::", "") else host)
        self.version = version or os.environ.get("DLABEL_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION
        self.heap = heap
        self.settings = dict(settings or {})
        self.jvm_options = tuple(jvm_options)
        self.cache_dir = cache_dir
        self.cluster_id: str | None = None
        self.workdir: Path | None = None
        self._log_path_arg = log_path
        self.log_path: str | None = log_path
        self.timings: dict[str, float] = {}
        self._owner_fd: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- addresses ------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` as Kafka clients want it."""
        return f"{self.advertised_host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` as the pipeline config wants it."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        """The broker JVM's process id, or None if it is not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the broker JVM is alive."""
        return self.pid is not None

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of the broker log (empty if there is none)."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- configuration --------------------------------------------------------------

    def server_properties(self) -> dict[str, str]:
        """The broker's ``server.properties`` for the current ports and working directory."""
        assert self.workdir is not None and self.controller_port is not None
        controller = f"127.0.0.1:{self.controller_port}"
        host, advertised = (f"[{h}]" if ":" in h else h for h in (self.host, self.advertised_host))
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": controller,
            "listeners": f"PLAINTEXT://{host}:{self.port},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{advertised}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.workdir / "data"),
        }
        props.update(TEST_SETTINGS)
        props.update(self.settings)
        return props

    def _make_workdir(self) -> None:
        """A fresh working directory holding the config, the storage and (by default) the log."""
        self.workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        self._owner_fd = os.open(self.workdir / _OWNER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._owner_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if self._log_path_arg is None:
            self.log_path = str(self.workdir / "kafka.log")
        (self.workdir / "log4j2.xml").write_text(_LOG4J2_XML)
        props = self.server_properties()
        (self.workdir / "server.properties").write_text(
            "".join(f"{k}={v}\n" for k, v in props.items()))

    def _remove_workdir(self) -> None:
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
                             options=("-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"))
        with open(self.log_path, "ab") as log:
            try:
                code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=120, close_fds=True,
                                      preexec_fn=_child_preexec()).returncode
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
                                        preexec_fn=_child_preexec(), close_fds=True,
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
                if _port_taken(self.host, self.port):
                    if self._auto_port and attempt < 2:
                        continue
                    raise BrokerError(
                        f"cannot start Apache Kafka: port {self.port} on {self.host} is already in "
                        "use (another broker running?); stop it or choose another port "
                        "(dlabel broker --engine kafka --port N)")
                self.controller_port = free_port("127.0.0.1")
                while self.controller_port == self.port:
                    self.controller_port = free_port("127.0.0.1")
                try:
                    self._make_workdir()
                    t1 = time.monotonic()
                    self._format(java, libs)
                    t2 = time.monotonic()
                    self._proc = self._spawn(java, libs)
                    _LIVE.add(self)
                    self._wait_ready(timeout)
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

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else (
            "::1" if self.host == "::" else self.host)
        delay = 0.02
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(f"Apache Kafka {self.version} exited with code {code} while "
                                  f"starting on port {self.port}; log tail:\n{self.log_tail()}")
            if probe(probe_host, self.port, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"Apache Kafka {self.version} did not answer on {self.bootstrap} "
                                  f"within {timeout:g}s; log tail:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` s), remove its storage.

        Idempotent.
        """
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)  # its own group: pgid == pid
                except (ProcessLookupError, PermissionError):
                    try:
                        proc.send_signal(sig)
                    except ProcessLookupError:
                        pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is None:
                proc.wait()  # after SIGKILL this returns promptly
        self._remove_workdir()

    def wait(self) -> int:
        """Block until the broker JVM exits; return its exit code."""
        proc = self._proc
        if proc is None:
            return 0
        return proc.wait()

    def __enter__(self) -> "KafkaBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"KafkaBroker(version={self.version!r}, url={self.url!r}, pid={self.pid})"


@atexit.register
def _stop_all() -> None:
    """Stop every Kafka broker this process started (normal interpreter exit)."""
    for broker in list(_LIVE):
        try:
            broker.stop(timeout=5.0)
        except Exception:  # pragma: no cover - best effort at exit
            pass


class _Terminate(Exception):
    """Raised from the SIGTERM handler to leave ``run_foreground``'s wait."""


def run_foreground(port: int | None = None, host: str = "0.0.0.0",
                   advertised_host: str | None = None, version: str | None = None) -> int:
    """Run Apache Kafka until Ctrl-C or SIGTERM (``dlabel broker --engine kafka``).

    ``port=None`` picks a free port. Prints the bootstrap address once the broker is
    ready. Returns 0 after a requested shutdown, 1 if it could not start, and the
    broker's exit code (or 1) if it died.
    """
    broker = KafkaBroker(port=port, host=host, advertised_host=advertised_host, version=version,
                         jvm_options=SERVER_JVM_OPTIONS)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminate()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            if cached_libs(broker.version, broker.cache_dir) is None and shutil.which("mvn"):
                print(f"dlabel broker: fetching the Apache Kafka {broker.version} jars with Maven "
                      f"into {cache_root() / f'kafka-{broker.version}'} (once)",
                      file=sys.stderr, flush=True)
            broker.start()
        except BrokerError as e:
            print(f"dlabel broker: {e}", file=sys.stderr)
            return 1
        print(f"dlabel broker: Apache Kafka {broker.version} (KRaft, single node) ready at "
              f"{broker.url}; bootstrap servers {broker.bootstrap} (listening on "
              f"{host}:{broker.port}, storage in {broker.workdir}, removed on stop); "
              "Ctrl-C to stop", flush=True)
        code = broker.wait()
        print(f"dlabel broker: Apache Kafka exited with code {code}; log tail:\n"
              f"{broker.log_tail()}", file=sys.stderr)
        return code or 1
    except (KeyboardInterrupt, _Terminate):
        print("dlabel broker: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
