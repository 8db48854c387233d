"""The ``jobs:`` section: how retraining jobs are launched for closed windows.

Absent, every closed window runs dlabel's own retraining job. With ``jobs.launch`` the
runner runs a command of yours for each closed window instead (or after dlabel's job,
with ``with_dlabel_job: true``): how a Kubernetes Job, an Airflow DAG or any training
system of your own is started from the windows topic (jobs/docs/launch.md).

```yaml
jobs:
  launch:
    command: kubectl create job ctr-{window_start_ms}-{attempt} --from=cronjob/ctr-train
    timeout: 5m          # an attempt running longer is killed (its whole process group)
    retries: 2           # then the window is recorded as failed
    retry_backoff: 10s   # doubled after every failed attempt
    with_dlabel_job: false
```

The command is split like a shell would (``shlex.split``) but never run by one: each
``{placeholder}`` is replaced inside its own argument, so a value cannot add arguments,
pipes or redirections. The program (the first argument) takes no placeholder.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Optional

from schemas.config_checks import Section, boolean, duration, fail, non_negative_int

#: what a command's ``{name}`` may be: the pipeline, the window bounds (ISO UTC and epoch
#: ms), the window's manifest and directory, the dataset root and the attempt number
PLACEHOLDERS = ("pipeline", "window_start", "window_end", "window_start_ms", "window_end_ms",
                "manifest", "window_dir", "dataset", "attempt")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class LaunchSpec:
    """A command run for each closed window (``argv``: already split, placeholders in)."""
    argv: tuple[str, ...]
    timeout_ms: int = 1_800_000
    retries: int = 2
    retry_backoff_ms: int = 10_000
    with_dlabel_job: bool = False


@dataclass(frozen=True)
class JobsSpec:
    """How a closed window's job is launched (the defaults: dlabel's own job)."""
    launch: Optional[LaunchSpec] = None


def placeholders(arg: str) -> list[str]:
    """The ``{name}`` placeholders of one argument, in order."""
    return _PLACEHOLDER_RE.findall(arg)


def substitute(arg: str, values: dict[str, str]) -> str:
    """``arg`` with each ``{name}`` replaced by ``values[name]`` (other braces, e.g. JSON,
    are left as they are); one argument in, one argument out."""
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], arg)


def _argv(value: Any, field: str) -> tuple[str, ...]:
    """``jobs.launch.command``: a string (split like a shell) or a list of arguments."""
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise fail(field, f"{value!r} cannot be split into arguments ({e}); close the "
                              "quotes") from None
    elif isinstance(value, list) and all(isinstance(a, str) for a in value):
        argv = list(value)
    else:
        raise fail(field, f"{value!r} is not a command; write a string such as "
                          "'kubectl create job ...' or a list of arguments")
    if not argv or not argv[0].strip():
        raise fail(field, f"{value!r} has no program to run; write e.g. 'kubectl create job "
                          "train-{window_start_ms} --from=cronjob/train'")
    if placeholders(argv[0]):
        raise fail(field, f"the program {argv[0]!r} has a placeholder; name the program "
                          "itself and put placeholders in its arguments")
    for arg in argv:
        unknown = [p for p in placeholders(arg) if p not in PLACEHOLDERS]
        if unknown:
            raise fail(field, f"unknown placeholder {{{unknown[0]}}} in {arg!r}; use "
                              + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS))
    return tuple(argv)


def jobs_spec(top: Section) -> JobsSpec:
    """Validate ``jobs:`` (absent: the defaults)."""
    if top.data.get("jobs") is None:
        return JobsSpec()
    j = top.sub("jobs", ("launch",))
    if j.data.get("launch") is None:
        return JobsSpec()
    la = j.sub("launch", ("command", "timeout", "retries", "retry_backoff", "with_dlabel_job"))
    return JobsSpec(launch=LaunchSpec(
        argv=la.get("command", _argv),
        timeout_ms=la.get("timeout", duration(True), 1_800_000),
        retries=la.get("retries", non_negative_int, 2),
        retry_backoff_ms=la.get("retry_backoff", duration(False), 10_000),
        with_dlabel_job=la.get("with_dlabel_job", boolean, False)))
