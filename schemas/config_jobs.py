"""The ``jobs:`` section: how retraining jobs are launched for closed windows.

(Filled in by issue 15's ``jobs.launch``; absent means dlabel's own retraining job.)
"""
from __future__ import annotations

from dataclasses import dataclass

from schemas.config_checks import Section


@dataclass(frozen=True)
class JobsSpec:
    """How a closed window's job is launched (the defaults: dlabel's own job)."""


def jobs_spec(top: Section) -> JobsSpec:
    """Validate ``jobs:`` (absent: the defaults)."""
    if top.data.get("jobs") is None:
        return JobsSpec()
    top.sub("jobs", ())
    return JobsSpec()
