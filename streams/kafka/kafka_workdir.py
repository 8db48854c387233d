"""The working directories of ``KafkaBroker``: one per start, removed on stop, swept when
their owner died without stopping (``kill -9``).

A directory ``$TMPDIR/dlabel-kafka-*`` holds the broker's ``server.properties``, its
``log4j2.xml`` (``LOG4J2_XML``: WARN and up to stdout, i.e. the log file), the storage
(``data``), by default the log (``kafka.log``), and ``owner.lock``, on which the live
owner (the Python process, and the JVM that inherits the descriptor) holds a ``flock``.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

__all__ = ["WORKDIR_PREFIX", "OWNER_LOCK", "LOG4J2_XML", "sweep_stale_workdirs"]

#: how the working directories' names start (in the temporary directory)
WORKDIR_PREFIX = "dlabel-kafka-"
#: the file in a working directory its owner holds a ``flock`` on
OWNER_LOCK = "owner.lock"
#: the broker's log4j2 configuration: WARN and up, to stdout (the broker's log file)
LOG4J2_XML = """<?xml version="1.0" encoding="UTF-8"?>
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
_STALE_AFTER_S = 60.0


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
    for d in Path(base or tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            st = d.lstat()
            if not d.is_dir() or d.is_symlink() or st.st_uid != os.getuid() \
                    or now - st.st_mtime < min_age_s:
                continue
            fd = os.open(d / OWNER_LOCK, os.O_RDWR)
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
