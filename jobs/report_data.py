"""What the report reads: the registry's trained windows and the dataset's closed windows.

``history`` gives ``(window record, metrics.json)`` per trained window; ``closed_windows``
each closed window's manifest facts (version, ``stats``); ``label_delays`` the
``label_delay_ms`` and ``label_version`` of the label-deciding rows of the latest closed
windows, read through their manifests. Everything here tolerates what older registries
and datasets lack (no confidence intervals, no ``stats``, no delay columns): a missing
value is None, never an exception.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.config import PipelineConfig
from schemas.errors import DlabelError
from jobs import dataset as ds
from jobs.registry import Registry

log = logging.getLogger("dlabel.jobs.report")

History = list[tuple[dict, dict]]
#: how many of the latest closed windows the label-delay chart reads
DELAY_WINDOWS = 48


def history(config: PipelineConfig) -> History:
    """(window record, metrics) of every trained window with a version, in window order."""
    reg = Registry(config.model.path)
    out = []
    for _, rec in sorted(reg.window_records().items()):
        if rec.get("status") == "trained" and rec.get("version"):
            out.append((rec, reg.metrics(rec["version"])))
    return out


def get(m: Any, *path: str) -> Any:
    """The value at ``path`` in nested dicts, or None when any step is missing."""
    for p in path:
        m = m.get(p) if isinstance(m, dict) else None
    return m


def num(m: Any, *path: str) -> float | None:
    """The number at ``path`` in nested dicts, or None when missing or not a number."""
    v = get(m, *path)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def interval(v: Any) -> tuple[float, float] | None:
    """``[lo, hi]`` as a tuple of finite floats, or None when it is not one."""
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return None
    lo, hi = float(v[0]), float(v[1])
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def metric_ci(entry: Any, metric: str) -> tuple[float, float] | None:
    """The confidence interval of ``metric`` in an evaluation entry (``{"ci": {metric:
    [lo, hi]}}``, as the jobs write it into overall metrics), or None."""
    return interval(get(entry, "ci", metric))


def fmt_interval(ci: tuple[float, float] | None, spec: str = "+.3f") -> str:
    """``[lo, hi]`` formatted, or an empty string without an interval."""
    return f"[{ci[0]:{spec}}, {ci[1]:{spec}}]" if ci else ""


def confidence(hist: History) -> float | None:
    """The confidence level of the latest decision that states one (e.g. 0.95)."""
    for _, m in reversed(hist):
        c = num(m, "decision", "confidence")
        if c is not None:
            return c
    return None


def fmt_duration(ms: float | None) -> str:
    """A duration for people: ``850ms``, ``42s``, ``4m12s``, ``30m``, ``1h05m``, ``24h``."""
    if ms is None:
        return "-"
    s = int(round(ms / 1000))
    if ms < 1000:
        return f"{int(ms)}ms"
    if s < 60:
        return f"{s}s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    return f"{m}m{sec:02d}s" if sec else f"{m}m"


def closed_windows(config: PipelineConfig) -> list[dict[str, Any]]:
    """Each closed window of the dataset, in window order: ``{"window", "rows",
    "positives", "version", "stats", "handle"}`` (``stats`` None for manifests written
    before window statistics existed; ``handle`` a ``jobs.dataset.Window``). A window
    whose manifest cannot be read is logged and left out: a report does not fail on it."""
    out = []
    try:
        starts = ds.closed_windows(config.dataset.path)
    except (OSError, DlabelError) as e:
        log.warning("report: cannot list the dataset's windows (%s)", e)
        return out
    for start in starts:
        try:
            w = ds.open_window(config.dataset.path, start)
        except (OSError, DlabelError) as e:
            log.warning("report: window %s left out (%s)", ds.window_iso(start), e)
            continue
        m = w.manifest
        out.append({"window": w.name, "rows": m.get("rows"), "positives": m.get("positives"),
                    "version": m.get("version", 1), "stats": m.get("stats"), "handle": w})
    return out


@dataclass(frozen=True)
class LabelDelays:
    """The delays (ms) and label versions of the label-deciding rows (binary: positives;
    regression: every labeled row) of ``windows`` closed windows."""
    delays: np.ndarray
    versions: np.ndarray
    windows: int

    def share_within(self, ms: float) -> float | None:
        """The share of rows whose delay is below ``ms``."""
        return float(np.mean(self.delays < ms)) if len(self.delays) else None

    def first_label_share(self) -> float | None:
        """The share of rows whose label was right the first time (``label_version`` 1):
        the rest came after the label was final, as corrections."""
        return float(np.mean(self.versions <= 1)) if len(self.versions) else None


def label_delays(windows: list[dict[str, Any]], limit: int = DELAY_WINDOWS) -> LabelDelays | None:
    """The label delays of the latest ``limit`` closed windows (``closed_windows``), read
    through their manifests; None when none of them has a ``label_delay_ms`` column
    (datasets written before it existed)."""
    delays, versions, used = [], [], 0
    for w in windows[-limit:]:
        try:
            df = ds.read_window(w["handle"])
        except (OSError, DlabelError) as e:
            log.warning("report: window %s left out of the delay chart (%s)", w["window"], e)
            continue
        if "label_delay_ms" not in df.columns:
            continue
        used += 1
        d = df["label_delay_ms"]
        keep = d.notna()  # a negative has no delay: no feedback decided its label
        delays.append(d[keep].to_numpy(dtype="float64"))
        v = df["label_version"][keep] if "label_version" in df.columns else None
        versions.append(np.ones(int(keep.sum())) if v is None
                        else v.fillna(1).to_numpy(dtype="float64"))
    if not used:
        return None
    return LabelDelays(np.concatenate(delays), np.concatenate(versions), used)
