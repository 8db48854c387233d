"""The Apache Kafka jars ``KafkaBroker`` runs, and what it needs to run them: Java and Maven.

The official jars (``kafka_2.13``, main class ``kafka.Kafka``) are fetched once with
Maven from the small pom shipped next to this module (``kafka-broker-pom.xml``) into
``$DLABEL_KAFKA_CACHE/kafka-<version>/libs`` (default cache root ``~/.cache/dlabel``).
The fetch goes to a temporary directory that is renamed into place when complete, so a
killed fetch never leaves a half cache; later starts do not run Maven. Needs Java 17+
(``$JAVA_HOME/bin/java`` or ``java`` on PATH) and, for the first start of a version,
Maven (``mvn``).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

from schemas.errors import BrokerError
from streams.kafka.child_process import LOG_TAIL_BYTES, die_with_parent_preexec

__all__ = ["DEFAULT_KAFKA_VERSION", "MIN_JAVA", "POM", "INSTALL_HINT", "java_binary",
           "cache_root", "cached_libs", "kafka_libs"]

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
_FETCH_TIMEOUT_S = 900.0
_JAVA_MAJOR: dict[str, int] = {}


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
                              preexec_fn=die_with_parent_preexec())
    except subprocess.TimeoutExpired:
        raise BrokerError(f"Maven did not fetch Apache Kafka {version} within {timeout:g}s "
                          "(is Maven Central reachable? check Maven's proxy/mirror settings "
                          "in ~/.m2/settings.xml)") from None
    except OSError as e:
        raise BrokerError(f"cannot run Maven ({mvn}): {e}. {INSTALL_HINT}") from None
    if proc.returncode != 0 or not _libs_complete(workdir / "libs", version):
        tail = proc.stdout.decode("utf-8", "replace")[-LOG_TAIL_BYTES:]
        raise BrokerError(f"Maven could not fetch Apache Kafka {version} (`{' '.join(cmd)}` "
                          f"exited with code {proc.returncode}; is the version on Maven Central "
                          f"and Maven Central reachable?); output tail:\n{tail}")
