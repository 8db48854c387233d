"""Child processes that never outlive us: what both embedded brokers (Tansu, Apache Kafka) share.

A broker runs in its own process group (so Ctrl-C in a terminal reaches only us and we
stop it in order), ``StopAtExit`` stops it on a normal interpreter exit, and on Linux
``die_with_parent_preexec`` has the kernel kill it when the starting thread dies, which
covers ``kill -9`` of the Python process. Also the ports it listens on and the tail of
its log.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from typing import Callable, Optional, Protocol

__all__ = ["free_port", "port_taken", "die_with_parent_preexec", "stop_process_group",
           "read_tail", "StopAtExit", "LOG_TAIL_BYTES"]

#: how much of a log's end error messages quote
LOG_TAIL_BYTES = 4000
_PR_SET_PDEATHSIG = 1


def free_port(host: str) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """True if binding ``host:port`` fails (someone listens there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def die_with_parent_preexec() -> Optional[Callable[[], None]]:
    """A preexec_fn asking Linux to SIGKILL the child when the forking thread dies.

    PDEATHSIG fires when the *thread* that forked dies, so it is used only from the main
    thread; children started elsewhere rely on ``atexit`` and their process group.
    None where it does not apply (not Linux, not the main thread, no ``prctl``).
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


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """End a child started with ``start_new_session``: SIGTERM to its group, then SIGKILL
    after ``timeout`` s; returns once it has exited (reaped)."""
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


def read_tail(path: str | None, max_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last ``max_bytes`` of the file at ``path`` (empty if there is none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class _Stoppable(Protocol):
    def stop(self, timeout: float) -> None: ...


class StopAtExit:
    """The running brokers of one kind, stopped (``stop(timeout)``) at a normal interpreter
    exit. Registers its ``atexit`` hook when created; holds the brokers weakly."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._live: "weakref.WeakSet[_Stoppable]" = weakref.WeakSet()
        atexit.register(self.stop_all)

    def add(self, broker: _Stoppable) -> None:
        self._live.add(broker)

    def discard(self, broker: _Stoppable) -> None:
        self._live.discard(broker)

    def stop_all(self) -> None:
        """Stop every broker still registered (best effort)."""
        for broker in list(self._live):
            try:
                broker.stop(timeout=self.timeout)
            except Exception:  # pragma: no cover - best effort at exit
                pass
