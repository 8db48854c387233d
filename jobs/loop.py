"""The retraining half of ``dlabel demo`` in one call: run, tabulate, report."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from schemas.config import PipelineConfig
from jobs.report import format_table, window_table, write_report
from jobs.runner import run_until_idle


def retrain_until_idle(config: PipelineConfig, slice_feature: str | None = None,
                       slice_value: str | None = None, idle_s: float = 2.0,
                       echo: Callable[[str], None] = print,
                       report_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every pending window of the windows topic, print the per-window table and
    write the report.

    Returns ``{"summary": RunSummary, "rows": window_table rows, "report": Path}``;
    ``slice_feature=slice_value`` (e.g. category=mens_dress_shoes) is the slice the table
    shows next to the overall metric.
    """
    summary = run_until_idle(config, idle_s=idle_s, echo=echo)
    rows = window_table(config, slice_feature, slice_value)
    echo(f"retraining: {len(summary.trained)} window(s) trained, {len(summary.skipped)} "
         f"already done, {len(summary.failed)} failed")
    if rows:
        echo(format_table(rows))
    report = write_report(config, report_dir)
    echo(f"report: {report}")
    return {"summary": summary, "rows": rows, "report": report}
