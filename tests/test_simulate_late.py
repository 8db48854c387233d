"""The simulator's buffered clicks (``late_click_fraction``): off by default, and when on,
only the arrival of label-deciding feedback inside its window changes, past the moment
its label is final, deterministically by seed."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from schemas.config import load_config
from streams.dev.simulate import generate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: sha256 of generate(example config, scenario, 800, seed=11) before the option existed
BEFORE = {"ctr": "ba13050400996aaef3383a488adf29ca13bae20853d970d472612ee91241813e",
          "airport": "c2af78b68ae229a71e9c232d2cdd329e46754f2dd0a11f8c6cd197e853a83b9d"}


def _shape(events):
    return [(e.role, e.key, e.value, e.ts, e.kind, e.arrival_ms) for e in events]


@pytest.mark.parametrize("scenario", ["ctr", "airport"])
def test_default_output_is_byte_identical_to_before_the_option(scenario):
    h = hashlib.sha256()
    for e in generate(load_config(EXAMPLES / f"{scenario}.yaml"), scenario, 800, seed=11):
        h.update(repr((e.role, e.key, e.value, e.ts, e.kind, e.arrival_ms)).encode())
    assert h.hexdigest() == BEFORE[scenario]


@pytest.mark.parametrize("scenario", ["ctr", "airport"])
def test_off_by_default_and_zero_is_the_default(make_config, scenario):
    cfg = make_config(scenario)
    plain = generate(cfg, scenario, 2000, seed=5)
    assert _shape(plain) == _shape(generate(cfg, scenario, 2000, seed=5, late_click_fraction=0.0))
    assert not [e for e in plain if e.kind == "late_feedback"]


def test_late_clicks_arrive_after_the_label_is_final(make_config):
    cfg = make_config("ctr")
    plain = generate(cfg, "ctr", 6000, seed=3)
    late = generate(cfg, "ctr", 6000, seed=3, late_click_fraction=0.2)
    assert _shape(late) == _shape(generate(cfg, "ctr", 6000, seed=3, late_click_fraction=0.2))
    # the same events; only some feedback's arrival (and kind) moved
    assert Counter(e.value for e in plain) == Counter(e.value for e in late)
    moved = [e for e in late if e.kind == "late_feedback"]
    clicks = [e for e in plain if e.role == "feedback" and e.kind in ("feedback", "early_feedback")
              and json.loads(e.value).get("type") == "click"]
    assert 0.1 * len(clicks) < len(moved) < 0.3 * len(clicks)
    requests = {e.key: e.ts for e in late if e.kind == "request"}
    window, lateness = cfg.join.label_window_ms, cfg.join.allowed_lateness_ms
    for e in moved:
        fb = json.loads(e.value)
        assert fb["type"] == "click"
        assert requests[e.key] <= e.ts < requests[e.key] + window  # inside the window
        # arrives when the request's label is final (+5 min), within the 2 h default
        assert e.ts + lateness + window + 300_000 <= e.arrival_ms
        assert e.arrival_ms <= e.ts + lateness + window + 7_200_000
    assert [e.arrival_ms for e in late] == sorted(e.arrival_ms for e in late)
    others = Counter((e.value, e.arrival_ms) for e in late if e.kind != "late_feedback")
    assert others <= Counter((e.value, e.arrival_ms) for e in plain)


def test_bad_options_are_refused(make_config):
    cfg = make_config("ctr")
    with pytest.raises(ValueError, match="late_click_fraction"):
        generate(cfg, "ctr", 10, seed=1, late_click_fraction=1.5)
    with pytest.raises(ValueError, match="late_click_max_delay_ms"):
        generate(cfg, "ctr", 10, seed=1, late_click_fraction=0.1, late_click_max_delay_ms=1000)
