"""`dlabel demo`'s label-quality part on a small day: corrections on in its config, the
buffered clicks corrected after their labels were final (new window versions), the
counts printed; and the per-window table's data version and corrections columns."""
from __future__ import annotations

import re
import pandas as pd
import pytest
import yaml

from streams.dev.demo import CORRECTION_WINDOW, corrections_line, run_demo, write_demo_config

pytestmark = pytest.mark.broker


def test_demo_config_turns_corrections_on(tmp_path):
    path = write_demo_config("ctr", "kafka://127.0.0.1:1", tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["join"]["correction_window"] == CORRECTION_WINDOW == "24h"


def test_corrections_line_counts_from_the_manifests():
    closed = [{"version": 1, "stats": {"corrections": 0}},
              {"version": 3, "stats": {"corrections": 4}},
              {"version": 2, "stats": {"corrections": 1}}, {"version": 1, "stats": None}]
    assert corrections_line(closed) == ("corrections: 5 label(s) corrected after they were "
                                        "final; 2 window(s) rewritten as a new version "
                                        "(highest v3)")


@pytest.mark.timeout(900)
def test_small_demo_corrects_the_buffered_clicks(tmp_path, monkeypatch):
    monkeypatch.setenv("DLABEL_PII_KEY", "demo-test-key")
    lines: list[str] = []
    out = run_demo("ctr", 3000, 2, str(tmp_path / "demo"), echo=lines.append, retrain=False)
    text = "\n".join(lines)
    late = int(re.search(r"then (\d+) clicks arrived that a mobile client had buffered", text)[1])
    fixed, versioned = map(int, re.search(
        r"corrections: (\d+) label\(s\) corrected after they were final; (\d+) window\(s\) "
        r"rewritten", text).groups())
    assert late > 0 and 0 < fixed <= late and versioned > 0, text
    closed = [w for w in out["windows"] if w["status"] == "closed"]
    assert sum(w["stats"]["corrections"] for w in closed) == fixed
    assert sum(w["version"] > 1 for w in closed) == versioned
    # issue 13: compaction leaves every closed window one data file (default target size)
    assert closed and all(w["files"] == 1 for w in closed), [(w["dir"], w["files"]) for w in closed]
    assert all(len(list((tmp_path / "demo" / "data" / "ctr" / w["dir"]).glob("*.parquet"))) == 1
               for w in closed)
    df = pd.read_parquet(tmp_path / "demo" / "data" / "ctr")  # current versions only
    assert (df["label_version"] > 1).sum() == fixed and df["request_id"].is_unique
    assert (df.loc[df["label_version"] > 1, "label"] == 1).all()
    dead = re.search(r"dead-lettered: (.*)", text)[1]
    assert "malformed_json" in dead and not re.search(r"\blate \d", dead), dead
