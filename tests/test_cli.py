"""The `dlabel` command line, run as a real process (`python -m streams.cli`)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streams.kafka.broker import EmbeddedBroker
from streams.dev.simulate import generate
from tests.pipeline_runs import EXAMPLES, load, write_pipeline

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("broker", "worker", "simulate", "tail", "demo")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any dlabel setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLABEL_")}
    env.update(extra)
    return env


def dlabel(*args: str, env: dict[str, str] | None = None, timeout: float = 180,
           cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``dlabel *args``; ``timeout`` only bounds a hung command (generous: shared CPUs)."""
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, env=clean_env() if env is None else env, cwd=str(cwd),
                          timeout=timeout)


def example_with(tmp_path: Path, name: str = "ctr", **join: object) -> Path:
    """The ctr example config with ``join`` fields replaced, written under ``tmp_path``."""
    data = yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())
    data["join"].update(join)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class ListeningDetector:
    """A localhost port that listens but never speaks Kafka: counts who connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def detector():
    d = ListeningDetector()
    try:
        yield d
    finally:
        d.close()


# --------------------------------------------------------------- help
def test_help_lists_every_command() -> None:
    result = dlabel("--help")
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^\s{2}([a-z][a-z-]*)\s{2,}", result.stdout, re.M))
    assert set(COMMANDS) <= listed, result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str) -> None:
    result = dlabel(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:")


# --------------------------------------------------------------- config errors
@pytest.mark.parametrize("bad", ["30x", "1.5h", "30 minutes", "m30"])
def test_worker_rejects_a_bad_label_window(tmp_path: Path, bad: str) -> None:
    config = example_with(tmp_path, label_window=bad)
    result = dlabel("worker", "-c", str(config), env=clean_env(DLABEL_PII_KEY="k"))
    assert result.returncode != 0
    err = result.stderr
    assert "join.label_window" in err, err
    assert repr(bad) in err, err           # quotes the bad value
    assert "30m" in err, err               # and suggests a good one
    assert "Traceback" not in err, err
    assert str(config) in err, err         # names the file too
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["simulate", "tail"])
def test_other_commands_reject_a_bad_label_window(tmp_path: Path, command: str) -> None:
    config = example_with(tmp_path, label_window="30x")
    result = dlabel(command, "-c", str(config))
    assert result.returncode != 0
    assert "join.label_window" in result.stderr and "'30x'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_missing_config_file(tmp_path: Path) -> None:
    result = dlabel("worker", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr


# --------------------------------------------------------------- PII key
@pytest.mark.parametrize("key", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_worker_without_pii_key_fails_before_touching_the_broker(
        tmp_path: Path, detector: ListeningDetector, key: str | None) -> None:
    config = example_with(tmp_path)  # user_email: {type: str, pii: hash}
    assert yaml.safe_load(config.read_text())["features"]["user_email"]["pii"] == "hash"
    env = clean_env() if key is None else clean_env(DLABEL_PII_KEY=key)
    result = dlabel("worker", "-c", str(config), "--broker",
                    f"kafka://127.0.0.1:{detector.port}", env=env)
    err = result.stderr
    assert result.returncode != 0
    assert "DLABEL_PII_KEY" in err, err
    assert "user_email" in err, err        # names the feature that needs it
    assert "Traceback" not in err, err
    assert detector.connections() == 0, "the worker reached for the broker before checking the key"


# --------------------------------------------------------------- against the broker
@pytest.mark.broker
def test_simulate_then_tail_requests(broker: EmbeddedBroker, tmp_path: Path,
                                     unique_name: str) -> None:
    config = write_pipeline(tmp_path, "ctr", broker.url, unique_name, partitions=1)
    n_requests, seed = 40, 1
    sim = dlabel("simulate", "-c", str(config), "--requests", str(n_requests),
                 "--seed", str(seed))
    assert sim.returncode == 0, sim.stderr
    assert f"({n_requests} requests)" in sim.stdout

    # -n 5 ends the tail at the fifth record; --timeout only bounds a broken run (it is
    # counted from before the first fetch, so a short one may stop before any record)
    result = dlabel("tail", "-c", str(config), "--topic", "requests", "-n", "5",
                    "--timeout", "60")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5, result.stdout
    records = [json.loads(line) for line in lines]
    assert all("request_id" in r and "ts" in r for r in records)
    # one partition: the topic holds the generated requests in arrival order
    expected = [e.value.decode() for e in generate(load(config), "ctr", n_requests, seed)
                if e.role == "requests"][:5]
    assert lines == expected


@pytest.mark.broker
def test_tail_with_broker_from_the_environment(broker: EmbeddedBroker, tmp_path: Path,
                                               unique_name: str) -> None:
    """--broker may come from DLABEL_BROKER; the config's broker: is then ignored."""
    config = write_pipeline(tmp_path, "ctr", "kafka://127.0.0.1:1", unique_name, partitions=1)
    env = clean_env(DLABEL_BROKER=broker.url)
    sim = dlabel("simulate", "-c", str(config), "--requests", "10", env=env)
    assert sim.returncode == 0, sim.stderr
    result = dlabel("tail", "-c", str(config), "--topic", "requests", "-n", "3",
                    "--timeout", "60", env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_json_log_format_gives_one_object_per_line(tmp_path):
    """A failing command still logs as JSON lines when asked (no broker needed)."""
    import logging
    from streams.common.logs import JsonFormatter
    record = logging.LogRecord("dlabel.sink", logging.ERROR, __file__, 1, "cannot write to %s", ("x",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "dlabel.sink"
    assert line["message"] == "cannot write to x" and line["ts"].endswith("Z")
    child = subprocess.run(
        [sys.executable, "-c", "import logging; from streams.common.logs import setup_logging; "
         "setup_logging('INFO', 'json'); logging.getLogger('dlabel.x').info('hello %s', 1)"],
        capture_output=True, text=True, cwd=str(ROOT), env=clean_env(), timeout=60)
    lines = [json.loads(line) for line in child.stderr.splitlines()]
    assert [(x["logger"], x["message"]) for x in lines] == [("dlabel.x", "hello 1")]
