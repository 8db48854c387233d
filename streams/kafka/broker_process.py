"""A Kafka broker running as our child process: what ``EmbeddedBroker`` (Tansu) and
``KafkaBroker`` (Apache Kafka) share.

``BrokerProcess`` holds the common surface (``bootstrap``, ``url``, ``pid``,
``running``, ``log_tail``, ``stop``, ``wait``, context manager) and the wait until the
new broker answers (``probe``: ApiVersions, then Metadata, over raw Kafka protocol).
``serve_in_foreground`` runs one until Ctrl-C or SIGTERM (``dlabel broker``).
"""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Callable, Optional, TypeVar

from schemas.errors import BrokerError
from streams.kafka.child_process import LOG_TAIL_BYTES, StopAtExit, free_port, stop_process_group

__all__ = ["BrokerProcess", "probe", "serve_in_foreground"]

_B = TypeVar("_B", bound="BrokerProcess")


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


class BrokerProcess:
    """A broker child process in its own process group (base class of both brokers).

    ``port=None`` picks a free port. ``advertised_host`` is what clients are told to
    connect to (default: ``host``, or ``localhost`` for a wildcard address). A subclass
    sets ``_at_exit`` (its ``StopAtExit``), implements ``start`` (adding itself to
    ``_at_exit`` once the process runs) and ``name``, and may extend ``_clean_up``.
    """

    #: ``stop``'s default seconds between SIGTERM and SIGKILL
    stop_timeout_s = 10.0
    #: the first pause between readiness probes (it doubles up to 0.2 s)
    first_poll_s = 0.02
    _at_exit: StopAtExit

    def __init__(self, port: int | None, host: str, advertised_host: str | None,
                 log_path: str | None) -> None:
        self.host = host
        self._auto_port = port is None
        self.port: int = free_port(host) if port is None else int(port)
        self.advertised_host = advertised_host or (
            "localhost" if host in ("0.0.0.0", "::", "") else host)
        self._log_path_arg = log_path
        self.log_path: str | None = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """What messages call this broker (e.g. ``the embedded broker``)."""
        raise NotImplementedError

    def start(self: _B, timeout: float = 60.0) -> _B:
        """Start the broker and wait until it answers (each broker's own)."""
        raise NotImplementedError

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
        """True while the broker process is alive."""
        return self.pid is not None

    def log_tail(self, max_bytes: int = LOG_TAIL_BYTES) -> str:
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

    def _wait_ready(self, timeout: float) -> None:
        """Return once the broker answers ``probe``; BrokerError (with the log tail) if it
        exits first or does not answer within ``timeout`` s."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else (
            "::1" if self.host == "::" else self.host)
        delay = self.first_poll_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise BrokerError(f"{self.name} exited with code {code} while "
                                  f"starting on port {self.port}; log tail:\n{self.log_tail()}")
            if probe(probe_host, self.port, timeout=1.0):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(f"{self.name} did not answer on {self.bootstrap} "
                                  f"within {timeout:g}s; log tail:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout`` s, default
        ``stop_timeout_s``) and remove what it leaves behind. Idempotent."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float | None = None) -> None:
        proc, self._proc = self._proc, None
        self._at_exit.discard(self)
        if proc is not None:
            stop_process_group(proc, self.stop_timeout_s if timeout is None else timeout)
        self._clean_up()

    def _clean_up(self) -> None:
        """Remove what the stopped broker left (its log, its storage); nothing here."""

    def wait(self) -> int:
        """Block until the broker process exits; return its exit code."""
        proc = self._proc
        if proc is None:
            return 0
        return proc.wait()

    def __enter__(self: _B) -> _B:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _Terminate(Exception):
    """Raised from the SIGTERM handler to leave ``serve_in_foreground``'s wait."""


def serve_in_foreground(broker: BrokerProcess, ready: Callable[[], str], exited_name: str,
                        prepare: Optional[Callable[[], None]] = None) -> int:
    """Start ``broker`` and run it until Ctrl-C or SIGTERM (the ``dlabel broker`` command).

    ``prepare`` runs first (e.g. to say that a download follows); ``ready()`` is printed
    once the broker answers. Returns 0 after a requested shutdown, 1 if the broker could
    not start, and its exit code (or 1) if it died (reported as ``exited_name`` exited).
    """
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise _Terminate()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            if prepare is not None:
                prepare()
            broker.start()
        except BrokerError as e:
            print(f"dlabel broker: {e}", file=sys.stderr)
            return 1
        print(ready(), flush=True)
        code = broker.wait()
        print(f"dlabel broker: {exited_name} exited with code {code}; log tail:\n"
              f"{broker.log_tail()}", file=sys.stderr)
        return code or 1
    except (KeyboardInterrupt, _Terminate):
        print("dlabel broker: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
