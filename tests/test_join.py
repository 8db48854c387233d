"""The event-time join as tables of arrivals -> expected labels and dead letters."""
from __future__ import annotations

import pytest

from tests.join_cases import MIN, assert_run_matches_oracle, config_dict, drive, fb, make_config, req

T0 = 1_795_000_000_000
W = 30 * MIN  # label window of make_config()

# (case, arrivals in order, expected {request_id: (label, label_ts)}, expected dead-letter reasons)
BINARY_CASES = [
    ("click inside window", [("requests", req("a", T0)), ("feedback", fb("a", T0 + 5 * MIN))],
     {"a": (1, T0 + 5 * MIN)}, []),
    ("no click -> negative at deadline", [("requests", req("a", T0))],
     {"a": (0, T0 + W)}, []),
    ("click exactly at request time counts", [("requests", req("a", T0)), ("feedback", fb("a", T0))],
     {"a": (1, T0)}, []),
    ("click exactly at window end does not count (half-open)",
     [("requests", req("a", T0)), ("feedback", fb("a", T0 + W))], {"a": (0, T0 + W)}, []),
    ("click one ms before window end counts",
     [("requests", req("a", T0)), ("feedback", fb("a", T0 + W - 1))], {"a": (1, T0 + W - 1)}, []),
    ("click before the request's time does not count",
     [("requests", req("a", T0)), ("feedback", fb("a", T0 - 1))], {"a": (0, T0 + W)}, []),
    ("feedback arrives before its request",
     [("feedback", fb("a", T0 + MIN)), ("requests", req("a", T0))], {"a": (1, T0 + MIN)}, []),
    ("non-positive feedback type", [("requests", req("a", T0)), ("feedback", fb("a", T0 + MIN, "view"))],
     {"a": (0, T0 + W)}, []),
    ("two clicks: labeled once", [("requests", req("a", T0)), ("feedback", fb("a", T0 + MIN)),
                                   ("feedback", fb("a", T0 + 2 * MIN))], {"a": (1, T0 + MIN)}, []),
    ("duplicate request: first wins", [("requests", req("a", T0)), ("requests", req("a", T0 + MIN)),
                                        ("feedback", fb("a", T0 + 30 * MIN + 30_000))],
     {"a": (0, T0 + W)}, ["duplicate_request"]),
    ("orphan feedback", [("feedback", fb("zz", T0)), ("requests", req("a", T0 + 40 * MIN))],
     {"a": (0, T0 + 40 * MIN + W)}, ["orphan_feedback"]),
    ("late request beyond allowed lateness",
     [("requests", req("a", T0 + 60 * MIN)), ("requests", req("b", T0 + 57 * MIN))],
     {"a": (0, T0 + 60 * MIN + W)}, ["late"]),
    ("out of order within allowed lateness is fine",
     [("requests", req("a", T0 + 60 * MIN)), ("requests", req("b", T0 + 59 * MIN))],
     {"a": (0, T0 + 60 * MIN + W), "b": (0, T0 + 59 * MIN + W)}, []),
    ("late click after the window closed changes nothing",
     [("requests", req("a", T0)), ("requests", req("b", T0 + 40 * MIN)),
      ("feedback", fb("a", T0 + MIN))], {"a": (0, T0 + W), "b": (0, T0 + 40 * MIN + W)}, ["late"]),
    ("malformed json", [("requests", b"{not json"), ("requests", req("a", T0))],
     {"a": (0, T0 + W)}, ["malformed_json"]),
    ("zone-less time", [("requests", b'{"request_id": "a", "ts": "2026-11-27T10:00:00"}')],
     {}, ["bad_timestamp"]),
    ("missing request id", [("feedback", b'{"ts": 1, "type": "click"}')], {}, ["missing_field"]),
]


@pytest.mark.parametrize("name,arrivals,expected,reasons", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_join(name, arrivals, expected, reasons):
    run = drive(make_config(), arrivals)
    assert {k: (v["label"], v["label_ts"]) for k, v in run.labeled.items()} == expected
    assert sorted(run.reasons()) == sorted(reasons)
    assert len(run.emitted) == len(run.labeled), "each request labeled exactly once"
    assert_run_matches_oracle(config_dict(), arrivals, run)  # every field, not only the label


REGRESSION_CASES = [
    ("elapsed seconds of the exit", [("requests", req("a", T0)), ("feedback", fb("a", T0 + 90_000, "exit"))],
     {"a": (90.0, T0 + 90_000)}, []),
    ("earliest exit wins, whatever the arrival order",
     [("requests", req("a", T0)), ("feedback", fb("a", T0 + 120_000, "exit")),
      ("feedback", fb("a", T0 + 60_000, "exit"))], {"a": (60.0, T0 + 60_000)}, []),
    ("exit before entry arrives", [("feedback", fb("a", T0 + 60_000, "exit")), ("requests", req("a", T0))],
     {"a": (60.0, T0 + 60_000)}, []),
    ("identical exit read again after the label is final: late, label unchanged",
     [("requests", req("a", T0)), ("feedback", fb("a", T0, "exit")), ("requests", req("b", T0 + 40 * MIN)),
      ("feedback", fb("b", T0 + 40 * MIN, "exit")), ("feedback", fb("a", T0, "exit"))],
     {"a": (0.0, T0), "b": (0.0, T0 + 40 * MIN)}, ["late"]),
    ("no exit in window -> unlabeled, not emitted", [("requests", req("a", T0)),
                                                      ("feedback", fb("a", T0 + W + 1, "exit"))], {}, []),
]


@pytest.mark.parametrize("name,arrivals,expected,reasons", REGRESSION_CASES, ids=[c[0] for c in REGRESSION_CASES])
def test_regression_join(name, arrivals, expected, reasons):
    run = drive(make_config("regression"), arrivals)
    assert {k: (v["label"], v["label_ts"]) for k, v in run.labeled.items()} == expected
    assert sorted(run.reasons()) == sorted(reasons)
    assert_run_matches_oracle(config_dict("regression"), arrivals, run)


def test_regression_value_from_feedback_field():
    arrivals = [("requests", req("a", T0)), ("feedback", fb("a", T0 + 1000, "exit", minutes=7.5))]
    run = drive(make_config("regression", value="field:minutes"), arrivals)
    assert run.labeled["a"]["label"] == 7.5
    assert_run_matches_oracle(config_dict("regression", value="field:minutes"), arrivals, run)


def test_positive_is_emitted_before_the_watermark_moves():
    run = drive(make_config(), [("requests", req("a", T0)), ("feedback", fb("a", T0 + MIN))], drain=False)
    assert run.labeled["a"]["label"] == 1


def test_negative_waits_for_the_watermark_past_deadline_plus_lateness():
    cfg = make_config()  # window 30m, lateness 2m
    early = drive(cfg, [("requests", req("a", T0)), ("requests", req("b", T0 + 32 * MIN - 1))], drain=False)
    assert "a" not in early.labeled
    due = drive(cfg, [("requests", req("a", T0)), ("requests", req("b", T0 + 32 * MIN))], drain=False)
    assert due.labeled["a"] == {**due.labeled["a"], "label": 0, "label_ts": T0 + W}


def test_dead_letter_keeps_original_bytes_and_position():
    run = drive(make_config(), [("requests", req("a", T0)), ("requests", b"\xff\xfe garbage")])
    [dl] = run.dead
    assert dl["original"] == b"\xff\xfe garbage"
    assert (dl["topic"], dl["partition"], dl["offset"]) == ("t.requests", 0, 1)


def test_labeled_example_columns():
    arrivals = [("requests", req("a", T0 + 61 * MIN, price="0", category="x"))]
    run = drive(make_config(), arrivals)
    assert_run_matches_oracle(config_dict(), arrivals, run)
    ex = run.labeled["a"]
    assert list(ex)[:7] == ["request_id", "request_ts", "window_start", "label", "label_ts",
                            "prediction", "model_version"]
    assert ex["window_start"] == T0 + 61 * MIN - (T0 + 61 * MIN) % 3_600_000
    assert ex["price"] == 0.0 and ex["category"] == "x"


@pytest.mark.parametrize("scenario,partitions", [("ctr", 1), ("ctr", 3), ("airport", 2)])
def test_simulated_example_pipelines_equal_oracle(scenario, partitions):
    """The example configs in-process (no broker): every column of every labeled example,
    hashed PII (ctr: user_email) and dropped PII (airport: passport_id) included, with the
    simulator's messy inputs (mixed time formats, numeric strings, duplicates, malformed
    events, early and orphan feedback)."""
    import yaml
    from pathlib import Path
    from schemas.config import load_config
    from schemas.pii import PiiHasher
    from streams.dev.simulate import generate
    from tests.pipeline_runs import PII_KEY

    path = Path(__file__).resolve().parent.parent / "examples" / f"{scenario}.yaml"
    data = yaml.safe_load(path.read_text())
    cfg = load_config(path, environ={"DLABEL_PII_KEY": PII_KEY})
    events = generate(cfg, scenario, 600, seed=5, bad_fraction=0.03)
    arrivals = [(e.role, e.value) for e in events]
    run = drive(cfg, arrivals, partitions=partitions, pii=PiiHasher(PII_KEY.encode()))
    expected = assert_run_matches_oracle(data, arrivals, run, PII_KEY.encode())
    assert len(expected) > 500 and "late" not in run.reasons()
