"""``jobs.launch``: run a command of yours for each closed window (your own training system).

For each closed window the runner (jobs.runner) calls ``Launcher.run``, which:

1. works out the placeholder values from the config and the window's manifest (the
   window must be closed; the values never come from the windows event itself);
2. substitutes them into the command's arguments, one argument at a time
   (``schemas.config_jobs.substitute``), and runs the program without a shell, in its own
   process group, stdin closed, with the values also in the environment as
   ``DLABEL_PIPELINE``, ``DLABEL_WINDOW_START``, ... (one per placeholder);
3. kills the whole process group when an attempt outlives ``jobs.launch.timeout``;
   retries a failed or killed attempt ``jobs.launch.retries`` times, the backoff doubling;
4. records the outcome in the window's registry record under ``launch``: ``ok``,
   ``exit_code`` (None when killed), ``timed_out``, ``attempts``, ``duration_s``,
   ``argv`` and ``stderr_tail`` (its last lines), with ``status`` "launched" (or "failed");
   after dlabel's own job (``with_dlabel_job``) the record keeps its "trained" status and
   version and gains the ``launch`` entry.

A window whose record says it is done is not launched again, so a replayed or
duplicated windows event launches nothing twice. Each attempt logs its stdout and
stderr to ``<model.path>/logs/<window>.launch.<attempt>.log``.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from schemas.config import PipelineConfig
from schemas.config_jobs import substitute
from schemas.errors import DatasetError, JobError
from jobs import dataset as ds
from jobs.registry import Registry
from streams.common import metrics

log = logging.getLogger("dlabel.jobs.launch")
TAIL_LINES = 20
TAIL_LINE_CHARS = 400
TAIL_BYTES = 64 << 10


def launch_values(config: PipelineConfig, start_ms: int, attempt: int) -> dict[str, str]:
    """The placeholder values of the closed window starting at ``start_ms``."""
    window = ds.open_window(config.dataset.path, start_ms)
    return {"pipeline": config.pipeline, "window_start": ds.window_iso(window.start_ms),
            "window_end": ds.window_iso(window.end_ms), "window_start_ms": str(window.start_ms),
            "window_end_ms": str(window.end_ms), "manifest": window.manifest_path,
            "window_dir": window.storage.uri(window.dirname), "dataset": config.dataset.path,
            "attempt": str(attempt)}


def stderr_tail(data: bytes) -> list[str]:
    """The last TAIL_LINES non-empty lines of ``data``, each cut at TAIL_LINE_CHARS."""
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return [ln[:TAIL_LINE_CHARS] for ln in lines[-TAIL_LINES:]]


def run_command(argv: list[str], timeout_s: float, log_path: Path,
                env: dict[str, str]) -> dict[str, Any]:
    """Run ``argv`` once (no shell, own process group); its stdout and stderr go to
    ``log_path``. Returns ``exit_code`` (None if it did not start or was killed),
    ``timed_out``, ``duration_s``, ``stderr_tail`` and ``error``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "ab") as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        except OSError as e:
            error = f"cannot start {argv[0]!r}: {e.strerror or e}"
            out.write(f"[runner] {error}\n".encode())
            return {"exit_code": None, "timed_out": False, "duration_s": 0.0,
                    "stderr_tail": [error], "error": error}
        timed_out = False
        try:
            rc: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out, rc = True, None
        finally:  # a timeout, or the runner interrupted: leave nothing of it running
            if proc.returncode is None:
                _kill_group(proc)
        duration = time.monotonic() - t0
        err.seek(0)
        shutil.copyfileobj(err, out)  # stderr after stdout in the attempt's log
        err.seek(max(0, err.tell() - TAIL_BYTES))
        data = err.read()
        error = (f"timed out after {timeout_s:g}s (killed)" if timed_out
                 else f"exit status {rc}")
        if timed_out:
            out.write(f"\n[runner] {error}\n".encode())
    return {"exit_code": rc, "timed_out": timed_out, "duration_s": round(duration, 3),
            "stderr_tail": stderr_tail(data), "error": error}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads, then reap ``proc``."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class Launcher:
    """Runs ``jobs.launch``'s command for windows and records the outcomes."""

    def __init__(self, config: PipelineConfig, registry: Registry,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if config.jobs.launch is None:
            raise ValueError("the config has no jobs.launch")
        self.config = config
        self.spec = config.jobs.launch
        self.registry = registry
        self.sleep = sleep

    def pending(self, record: dict[str, Any] | None) -> bool:
        """Whether a window with this record still needs its command run: it has no
        record, or dlabel's job trained it and the launch has not happened yet."""
        if record is None:
            return True
        return (self.spec.with_dlabel_job and record.get("status") == "trained"
                and "launch" not in record)

    def done(self, record: dict[str, Any] | None) -> bool:
        """Whether a window with this record is finished (nothing to retry)."""
        if not record or record.get("status") == "failed" or self.pending(record):
            return False
        launch = record.get("launch")
        return launch is None or bool(launch.get("ok"))  # no launch: done before jobs.launch

    def run(self, name: str) -> bool:
        """Launch the command for window ``name`` (retries included) and record the
        outcome; True when an attempt exited 0."""
        start_ms = ds.parse_window(name)
        spec = self.spec
        attempts = 1 + spec.retries
        outcome: dict[str, Any] = {}
        argv: list[str] = []
        for attempt in range(1, attempts + 1):
            try:
                values = launch_values(self.config, start_ms, attempt)
            except DatasetError as e:
                outcome = {"exit_code": None, "timed_out": False, "duration_s": 0.0,
                           "stderr_tail": [], "error": str(e)}
                break
            argv = [substitute(arg, values) for arg in spec.argv]
            env = dict(os.environ, **{f"DLABEL_{k.upper()}": v for k, v in values.items()})
            outcome = run_command(argv, spec.timeout_ms / 1000,
                                  self.registry.launch_log_path(name, attempt), env)
            metrics.JOB_SECONDS.observe(outcome["duration_s"])
            if outcome["exit_code"] == 0:
                break
            metrics.JOBS.labels(outcome="launch_attempt_failed").inc()
            log.warning("window %s launch attempt %d/%d failed: %s", name, attempt, attempts,
                        outcome["error"])
            if attempt < attempts:
                self.sleep(spec.retry_backoff_ms / 1000 * 2 ** (attempt - 1))
        ok = outcome.get("exit_code") == 0
        self._record(name, ok, argv, outcome, attempt)
        metrics.JOBS.labels(outcome="launched" if ok else "launch_failed").inc()
        return ok

    def _record(self, name: str, ok: bool, argv: list[str], outcome: dict[str, Any],
                attempts: int) -> None:
        """Write the window's record with the launch outcome (keeping dlabel's job's)."""
        launch = {"ok": ok, "exit_code": outcome.get("exit_code"),
                  "timed_out": outcome.get("timed_out", False), "attempts": attempts,
                  "duration_s": outcome.get("duration_s", 0.0), "argv": argv,
                  "stderr_tail": outcome.get("stderr_tail", [])}
        fields: dict[str, Any] = {}
        if self.spec.with_dlabel_job:
            fields = {k: v for k, v in (self.registry.window_record(name) or {}).items()
                      if k not in ("window", "launch", "error")}
        if ok:
            fields.setdefault("status", "launched")
        else:
            fields.update(status=fields.get("status", "failed"),
                          error=f"launch: {outcome.get('error')}")
            if not self.spec.with_dlabel_job:
                fields["attempts"] = attempts
        self.registry.record_window(name, **fields, launch=launch)


def launcher_for(config: PipelineConfig, registry: Registry,
                 sleep: Callable[[float], None] = time.sleep) -> Launcher | None:
    """The launcher of ``jobs.launch`` (None without it); JobError when its program is
    not found, so that a typo fails when the runner starts, not once per window."""
    if config.jobs.launch is None:
        return None
    program = config.jobs.launch.argv[0]
    if shutil.which(program) is None:
        raise JobError(f"jobs.launch.command: program {program!r} is not found (PATH "
                       f"{os.environ.get('PATH', '')!r}); install it or give its full path")
    return Launcher(config, registry, sleep)
