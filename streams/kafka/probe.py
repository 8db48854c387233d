"""Is the broker answering? A small watchdog every long-running dlabel process runs.

Kafka clients ride out a stalled broker silently: requests just wait (up to their
request timeout, 30-40 s), so a stall looks like a quiet input. The probe sends a Kafka
ApiVersions request (allowed before authentication, answered by every broker) every
``interval_s`` over its own connection, with a short timeout. When the broker does not
answer it logs one warning and sets ``dlabel_broker_up`` to 0; when it answers again it
logs how long it was gone and sets the gauge back to 1.
"""
from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Optional

from streams.kafka import clients as kafka_clients
from streams.common import metrics

log = logging.getLogger("dlabel.broker")

_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, 12) + b"dlabel-probe"
_REQUEST = struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS


def probe_once(bootstrap: str, timeout_s: float) -> bool:
    """True when the first bootstrap broker answers an ApiVersions request in time."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as sock:
            sec = kafka_clients.current_security()
            if sec.uses_ssl:
                ctx = kafka_clients.ssl_context(sec)
                sock = ctx.wrap_socket(sock, server_hostname=host.strip("[]"))
            sock.settimeout(timeout_s)
            sock.sendall(_REQUEST)
            head = sock.recv(8)
            return len(head) >= 4
    except OSError:
        return False


class BrokerProbe:
    """Runs ``probe_once`` in a daemon thread until ``stop``."""

    def __init__(self, bootstrap: str, interval_s: float = 2.0, timeout_s: float = 3.0) -> None:
        self.bootstrap, self.interval_s, self.timeout_s = bootstrap, interval_s, timeout_s
        self.down_since: Optional[float] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dlabel-broker-probe", daemon=True)

    def start(self) -> "BrokerProbe":
        """Start probing in a daemon thread; the broker counts as up until a probe fails."""
        metrics.BROKER_UP.set(1)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing (the thread ends after its current probe)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            up = probe_once(self.bootstrap, self.timeout_s)
            now = time.monotonic()
            if not up and self.down_since is None:
                self.down_since = now
                metrics.BROKER_UP.set(0)
                log.warning("broker %s did not answer within %.0fs (stalled or unreachable); "
                            "clients will retry", self.bootstrap, self.timeout_s)
            elif up and self.down_since is not None:
                log.warning("broker %s answers again after %.1fs", self.bootstrap,
                            now - self.down_since + self.timeout_s)
                self.down_since = None
                metrics.BROKER_UP.set(1)
