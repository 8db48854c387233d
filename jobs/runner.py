"""The jobs runner: windows-topic events in, one retraining job per closed window out.

The runner reads the windows topic from the beginning (jobs.feed), without a consumer
group: which windows are done is the registry's business, not a committed offset, so a
replayed, duplicated or out-of-order event trains nothing twice. An event with a data
``version`` >= 2 (a corrected window) re-evaluates the window's models on it
(jobs.reevaluate) once, and never retrains the past. Each poll's new windows run in
window order, each as a subprocess (``python -m jobs.job``) with a timeout and its own log file
``<model.path>/logs/<window>.<attempt>.log``. A failed or timed-out attempt is retried
after a backoff that doubles each time; after ``model.retries`` retries the window is
recorded as failed and the runner goes on with the next one. With ``jobs.launch`` the
window runs your command instead (or after dlabel's job): see jobs.launch.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from schemas.config import PipelineConfig
from jobs.configio import config_to_json
from jobs.dataset import window_iso
from jobs.feed import RunSummary, WindowsFeed, parse_events
from jobs.launch import launcher_for
from jobs.reevaluate import needs_reevaluation
from jobs.registry import Registry, write_atomic
from streams.common import metrics

__all__ = ["RunSummary", "Runner", "WindowsFeed", "default_job_argv", "parse_events",
           "run_forever", "run_until_idle"]

log = logging.getLogger("dlabel.jobs.runner")
ROOT = Path(__file__).resolve().parent.parent
JobArgv = Callable[[Path, str, "str | None"], list]


def default_job_argv(config_json: Path, window: str, manifest: str | None) -> list[str]:
    """``python -m jobs.job --config-json F --window W [--manifest M]``."""
    argv = [sys.executable, "-m", "jobs.job", "--config-json", str(config_json),
            "--window", window]
    return argv + (["--manifest", manifest] if manifest else [])


class Runner:
    """Runs the jobs of windows in order, in subprocesses, with retries."""

    def __init__(self, config: PipelineConfig, *, job_argv: JobArgv = default_job_argv,
                 sleep: Callable[[float], None] = time.sleep, retry_failed: bool = False,
                 echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.registry = Registry(config.model.path, config.model.trusted_types)
        self.launcher = launcher_for(config, self.registry, sleep)
        self.job_argv = job_argv
        self.sleep = sleep
        self.retry_failed = retry_failed
        self.echo = echo or (lambda msg: None)
        self.config_json = self.registry.root / "runner" / "config.json"
        write_atomic(self.config_json, config_to_json(config).encode())
        self.latest: int | None = None

    def run_windows(self, windows: dict[int, str | None], summary: RunSummary,
                    versions: dict[int, int] | None = None) -> None:
        """Run every window not yet done, in window order; then re-evaluate a trained
        window whose ``versions`` entry names a data version not evaluated yet."""
        for start in sorted(windows):
            name = window_iso(start)
            rec = self.registry.window_record(name)
            if rec and not self._todo(rec):
                self._reevaluate(name, (versions or {}).get(start, 1), summary)
                summary.skipped.append(name)
                continue
            if self.latest is not None and start < self.latest:
                log.warning("window %s arrived after the later window %s was trained; training "
                            "it now, out of order", name, window_iso(self.latest))
            ok = self.run_window(name, windows[start])
            launch = self.config.jobs.launch
            if ok and launch:
                summary.launched.append(name)
            if ok:
                self._reevaluate(name, (versions or {}).get(start, 1), summary)
            if not ok:
                summary.failed.append(name)
            elif not launch or launch.with_dlabel_job:
                summary.trained.append(name)
            self.latest = max(start, self.latest or start)

    def _todo(self, rec: dict[str, Any]) -> bool:
        """Whether a window that has a record still needs a run (``--retry-failed`` runs
        the failed ones too)."""
        if self.launcher is None:
            return rec["status"] == "failed" and self.retry_failed
        if self.launcher.pending(rec):
            return True
        return not self.launcher.done(rec) and self.retry_failed

    def run_window(self, name: str, manifest: str | None) -> bool:
        """One window: dlabel's job, ``jobs.launch``'s command, or the job then the
        command; True when it ended well."""
        launch = self.config.jobs.launch
        if launch is None:
            return self.run_job(name, manifest)
        rec = self.registry.window_record(name)
        if launch.with_dlabel_job and not (rec and rec.get("status") == "trained"):
            if not self.run_job(name, manifest):
                return False
        ok = self.launcher.run(name)
        self.echo(f"{name}: {'launched' if ok else 'launch FAILED'}")
        return ok

    def _reevaluate(self, name: str, version: int, summary: RunSummary) -> None:
        """Re-evaluate a corrected window (one attempt: a failure is logged, and the
        next replay of its event tries again)."""
        if not needs_reevaluation(self.registry.window_record(name), version):
            return
        argv = self.job_argv(self.config_json, name, None) + ["--reevaluate"]
        path = self.registry.log_path(name, f"v{version}")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as out:
            try:
                subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=_job_env(),
                               timeout=self.config.model.job_timeout_ms / 1000)
            except subprocess.TimeoutExpired:
                out.write(b"\n[runner] re-evaluation timed out (killed)\n")
        if needs_reevaluation(self.registry.window_record(name), version):
            log.warning("window %s: re-evaluation of data version %d failed (log %s)", name,
                        version, path)
            return
        summary.reevaluated.append(f"{name}@v{version}")
        self.echo(f"{name}: data version {version} re-evaluated")

    def run_job(self, name: str, manifest: str | None) -> bool:
        """One window's dlabel job with retries; True when it ended trained."""
        m = self.config.model
        attempts = 1 + m.retries
        error = ""
        for attempt in range(1, attempts + 1):
            path = self.registry.log_path(name, attempt)
            path.parent.mkdir(parents=True, exist_ok=True)
            argv = self.job_argv(self.config_json, name, manifest)
            env = _job_env()
            t0 = time.monotonic()
            with open(path, "ab") as out:
                try:
                    rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        timeout=m.job_timeout_ms / 1000).returncode
                    error = f"exit status {rc}"
                except subprocess.TimeoutExpired:
                    rc = None
                    error = f"timed out after {m.job_timeout_ms / 1000:g}s (killed)"
                    out.write(f"\n[runner] {error}\n".encode())
            rec = self.registry.window_record(name)
            metrics.JOB_SECONDS.observe(time.monotonic() - t0)
            if rc == 0 and rec and rec.get("status") == "trained":
                metrics.JOBS.labels(outcome="trained").inc()
                self._export_metrics(rec.get("version"))
                self.echo(f"{name}: trained {rec.get('version')}"
                          f"{' (promoted)' if rec.get('promoted') else ''} in "
                          f"{time.monotonic() - t0:.1f}s")
                return True
            metrics.JOBS.labels(outcome="attempt_failed").inc()
            if rc == 0:
                error = "the job exited 0 but recorded nothing"
            log.warning("window %s attempt %d/%d failed: %s (log %s)", name, attempt, attempts,
                        error, path)
            if attempt < attempts:
                self.sleep(m.retry_backoff_ms / 1000 * 2 ** (attempt - 1))
        self.registry.record_window(name, status="failed", attempts=attempts, error=error,
                                    log=str(self.registry.log_path(name, attempts)))
        self.echo(f"{name}: FAILED after {attempts} attempt(s): {error}")
        metrics.JOBS.labels(outcome="failed").inc()
        return False

    def _export_metrics(self, version: str | None) -> None:
        """Champion metrics on the window (prequential) and drift flags, as gauges."""
        if not version:
            return
        try:
            m = self.registry.metrics(version)
        except (OSError, ValueError) as e:
            log.warning("no metrics for %s: %s", version, e)
            return
        champion = self.registry.champion()
        if champion:
            metrics.CHAMPION_VERSION.set(int(champion.lstrip("v")))
        preq = m.get("prequential") or {}
        for name, value in (preq.get("overall") or {}).items():
            if isinstance(value, (int, float)) and value == value:
                metrics.CHAMPION_METRIC.labels(metric=name, slice="overall").set(value)
        for feature, values in (preq.get("slices") or {}).items():
            for value_name, ms in values.items():
                for name, value in ms.items():
                    if isinstance(value, (int, float)) and value == value:
                        metrics.CHAMPION_METRIC.labels(
                            metric=name, slice=f"{feature}={value_name}").set(value)
        for feature, d in ((m.get("drift") or {}).get("features") or {}).items():
            metrics.DRIFT_FLAGGED.labels(feature=feature).set(1 if d.get("flagged") else 0)


def _job_env() -> dict[str, str]:
    """The job subprocess's environment: ours, with this checkout on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


def run_until_idle(config: PipelineConfig, *, idle_s: float = 2.0,
                   job_argv: JobArgv = default_job_argv,
                   sleep: Callable[[float], None] = time.sleep, retry_failed: bool = False,
                   echo: Callable[[str], None] | None = None) -> RunSummary:
    """Read the windows topic to the end it has now, then until ``idle_s`` pass without
    an event (WindowsFeed.read_until_idle), run every pending window in order, and return
    what happened (what the demo and tests call); BrokerError if the topic is missing."""
    summary = RunSummary()
    runner = Runner(config, job_argv=job_argv, sleep=sleep, retry_failed=retry_failed,
                    echo=echo)
    feed = WindowsFeed(config.bootstrap_servers, config.topics.windows)
    versions: dict[int, int] = {}
    try:
        windows = parse_events(feed.read_until_idle(idle_s), config.pipeline, summary,
                               versions)
    finally:
        feed.close()
    runner.run_windows(windows, summary, versions)
    return summary


def run_forever(config: PipelineConfig, *, idle_s: float = 1.0, retry_failed: bool = False,
                echo: Callable[[str], None] | None = None,
                stop: Callable[[], bool] = lambda: False) -> RunSummary:
    """Follow the windows topic, running new windows as their events come, until ``stop()``
    (``retry_failed``: windows recorded as failed run again too); with
    ``model.update_every``, the in-window updater (jobs.online_feed) steps in between."""
    summary = RunSummary()
    runner = Runner(config, retry_failed=retry_failed, echo=echo)
    feed = WindowsFeed(config.bootstrap_servers, config.topics.windows)
    updates = None
    if config.model.updates.enabled:  # in-window updates of the serving model, between jobs
        from jobs.online_feed import UpdaterLoop
        updates = UpdaterLoop(config)
    try:
        while not stop():
            values = feed.poll(idle_s)
            if values:
                versions: dict[int, int] = {}
                windows = parse_events(values, config.pipeline, summary, versions)
                runner.run_windows(windows, summary, versions)
            if updates is not None:
                served = updates.tick(idle_s / 2)
                if served and echo:
                    echo(f"serving {served}")
    finally:
        feed.close()
        if updates is not None:
            updates.close()
    return summary
