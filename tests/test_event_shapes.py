"""Real-world event shapes (ECS, Fluentd): the same events, as the production parser reads them.

For each shape and scenario, the simulated events are reshaped and parsed with the
matching ``inputs:`` config; every one must parse to what its flat (dlabel) original
parses to with the plain example config, and every malformed one must stay invalid for
the same reason. No broker needed.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from schemas.config import PipelineConfig, load_config
from schemas.errors import EventError
from schemas.events import EventParser
from schemas.pii import PiiHasher
from streams.dev import simulate as simulate_module
from streams.dev.event_shapes import FORMATS, inputs_section, mismatch, reshape
from streams.dev.simulate import generate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PII = PiiHasher(b"test-key")
SHAPED = ("ecs", "fluentd")
REASONS = {"broken_json": "malformed_json", "garbage": "malformed_json",
           "zoneless_ts": "bad_timestamp", "nan_feature": "bad_type", "bad_type": "bad_type",
           "missing_id": "missing_field", "missing_type": "missing_field"}
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _airport_text(outcome: bool) -> str:
    text = (EXAMPLES / "airport.yaml").read_text()
    if outcome:  # the label is a field of the exit event, not the elapsed time
        assert "value: elapsed_seconds" in text
        text = text.replace("value: elapsed_seconds", "value: field:wait_seconds")
    return text


def _write(tmp_path: Path, name: str, text: str) -> PipelineConfig:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_config(path)


def _configs(tmp_path: Path, case: str, fmt: str) -> tuple[str, PipelineConfig, PipelineConfig]:
    """(scenario, the flat config, the config reading ``fmt``) for one case."""
    if case == "ctr":
        return "ctr", load_config(EXAMPLES / "ctr.yaml"), load_config(EXAMPLES / f"ctr-{fmt}.yaml")
    if case == "logstash":
        return "ctr", load_config(EXAMPLES / "ctr.yaml"), load_config(EXAMPLES / "logstash.yaml")
    text = _airport_text(outcome=case == "airport-outcome")
    flat = _write(tmp_path, "flat", text)
    inputs = yaml.safe_dump({"inputs": inputs_section(fmt, flat)}, sort_keys=False)
    return "airport", flat, _write(tmp_path, f"airport-{fmt}", text + inputs)


def _parse(parser: EventParser, role: str, raw: bytes):
    parse = parser.parse_request if role == "requests" else parser.parse_feedback
    try:
        return parse(raw), None
    except EventError as e:
        return None, e


CASES = [("ctr", "ecs"), ("ctr", "fluentd"), ("logstash", "ecs"), ("airport", "ecs"),
         ("airport", "fluentd"), ("airport-outcome", "ecs"), ("airport-outcome", "fluentd")]


@pytest.mark.parametrize("case,fmt", CASES)
def test_reshaped_events_parse_like_the_flat_ones(tmp_path: Path, case: str, fmt: str) -> None:
    scenario, flat_cfg, shaped_cfg = _configs(tmp_path, case, fmt)
    assert mismatch(fmt, shaped_cfg) is None and mismatch(fmt, flat_cfg) is not None
    assert shaped_cfg.inputs.copartitioned is False
    flat = generate(flat_cfg, scenario, 2000, seed=11, bad_fraction=0.05)
    # the example copies generate the very same events (same join and label settings)
    assert generate(shaped_cfg, scenario, 2000, seed=11, bad_fraction=0.05) == flat
    shaped = reshape(flat, shaped_cfg, fmt)
    assert len(shaped) == len(flat)
    flat_parser, shaped_parser = EventParser(flat_cfg, PII), EventParser(shaped_cfg, PII)
    key_path = {role: getattr(shaped_cfg.inputs, role).path(flat_cfg.join.key).text
                for role in ("requests", "feedback")}
    type_path = shaped_cfg.inputs.feedback.path("type").text
    kinds, outcomes, hows = Counter(), 0, {"requests": set(), "feedback": set()}
    originals: dict = {}  # request id -> (flat original, shaped original)
    for a, b in zip(flat, shaped):
        if a.kind == "request":
            originals[a.key] = (a, b)
        elif a.kind == "duplicate":  # unkeyed, a duplicate is a retry of its original
            assert b.value == originals[a.key][1].value
            a = dataclasses.replace(a, value=originals[a.key][0].value)
        assert (b.role, b.ts, b.kind, b.arrival_ms) == (a.role, a.ts, a.kind, a.arrival_ms)
        assert b.key is None  # shippers send unkeyed records
        want, want_err = _parse(flat_parser, a.role, a.value)
        got, got_err = _parse(shaped_parser, b.role, b.value)
        kinds[a.kind.split(":")[0]] += 1
        if a.kind.startswith("malformed:"):
            how = a.kind.split(":", 1)[1]
            hows[a.role].add(how)
            assert want_err is not None and got_err is not None, (how, b.value)
            assert got_err.reason == want_err.reason == REASONS[how], (how, b.value)
            if how in ("broken_json", "garbage"):
                assert b.value == a.value  # not JSON: the original bytes
            elif how == "missing_id":
                assert f"{key_path[b.role]} is missing" in got_err.detail
            elif how == "missing_type":
                assert f"{type_path} is missing" in got_err.detail
            continue
        assert want_err is None and got_err is None, (a.value, b.value, got_err)
        assert got == want, (a.value, b.value)
        assert got.ts == a.ts
        outcomes += bool(getattr(got, "fields", None))
    assert set(kinds) == {"request", "feedback", "early_feedback", "duplicate", "orphan",
                          "malformed"}
    assert (outcomes > 0) == (case == "airport-outcome")
    assert hows == {"requests": set(REASONS) - {"missing_type"},  # every way to be malformed
                    "feedback": set(REASONS) - {"nan_feature", "bad_type"}}


def test_dlabel_format_is_unchanged() -> None:
    cfg = load_config(EXAMPLES / "ctr.yaml")
    events = generate(cfg, "ctr", 300, seed=5)
    again = reshape(generate(cfg, "ctr", 300, seed=5), cfg, "dlabel")
    assert again == events
    assert all(e.key is not None for e in events if e.kind != "malformed:missing_id")


@pytest.mark.parametrize("fmt", SHAPED)
def test_shapes_look_like_what_shippers_write(fmt: str) -> None:
    cfg = load_config(EXAMPLES / f"ctr-{fmt}.yaml")
    events = reshape(generate(cfg, "ctr", 500, seed=2), cfg, fmt)
    for e in events:
        if e.kind.startswith("malformed"):
            continue
        obj = json.loads(e.value)
        if fmt == "ecs":
            assert ISO_MS_Z.match(obj["@timestamp"]) and obj["ecs"] == {"version": "8.11.0"}
            assert "host" in obj
            if e.role == "feedback":
                assert set(obj["event"]) == {"action"} and "request_id" in obj["trace"]
                assert isinstance(obj["message"], str)
            else:
                assert set(obj["payload"]) >= {"features"} and obj["model"] == {"version": "v1"}
        else:
            t = obj["time"]
            assert type(t) is float and round(t * 1000) == e.ts
            assert re.match(rb'\{"time":\d+\.\d{1,3},', e.value), e.value  # ms as the fraction
            assert obj["tag"] == ("model.inference" if e.role == "requests"
                                  else f"app.{obj['record']['kind']}")
            assert "rid" in obj["record"]


def test_example_configs_load_and_do_not_collide() -> None:
    ctr = load_config(EXAMPLES / "ctr.yaml")
    configs = {name: load_config(EXAMPLES / f"{name}.yaml")
               for name in ("ctr", "ctr-ecs", "ctr-fluentd", "logstash", "airport")}
    for attr in ("requests", "feedback", "labeled", "dead_letter", "windows", "closed_time"):
        names = [getattr(c.topics, attr) for c in configs.values()]
        assert len(set(names)) == len(names), attr
    for attr in ("pipeline", "dataset", "model"):
        paths = [getattr(c, attr) if attr == "pipeline" else getattr(c, attr).path
                 for c in configs.values()]
        assert len(set(paths)) == len(paths), attr
    for fmt in SHAPED:  # copies of ctr.yaml but for names, paths and inputs
        cfg = configs[f"ctr-{fmt}"]
        assert dataclasses.replace(
            cfg, pipeline=ctr.pipeline, topics=ctr.topics, inputs=ctr.inputs,
            dataset=dataclasses.replace(cfg.dataset, path=ctr.dataset.path),
            model=dataclasses.replace(cfg.model, path=ctr.model.path)) == ctr
    for name, cfg in configs.items():
        fits = [fmt for fmt in FORMATS if mismatch(fmt, cfg) is None]
        assert fits == {"ctr-ecs": ["ecs"], "ctr-fluentd": ["fluentd"],
                        "logstash": ["ecs"]}.get(name, ["dlabel"]), name
    assert re.search(r"codec +=> json", (EXAMPLES / "logstash.yaml").read_text())


def test_unknown_format_is_refused() -> None:
    cfg = load_config(EXAMPLES / "ctr.yaml")
    with pytest.raises(ValueError, match="ecs"):
        reshape([], cfg, "gelf")


@pytest.mark.parametrize("fmt,config", [("ecs", "ctr-ecs"), ("fluentd", "ctr-fluentd"),
                                         ("dlabel", "ctr"), ("ecs", "ctr")])
def test_cli_simulate_format(monkeypatch: pytest.MonkeyPatch, fmt: str, config: str) -> None:
    """`dlabel simulate --format` produces the chosen shape (the broker is stubbed out)."""
    from streams import cli
    from streams.kafka import clients as kafka_clients
    produced: list = []
    monkeypatch.setattr(kafka_clients, "check_connection", lambda *a, **k: None)
    monkeypatch.setattr(simulate_module, "produce",
                        lambda bootstrap, cfg, events, **k: produced.extend(events) or len(events))
    path = EXAMPLES / f"{config}.yaml"
    result = CliRunner().invoke(cli.main, ["simulate", "-c", str(path), "--requests", "50",
                                           "--format", fmt])
    assert result.exit_code == 0, result.output
    cfg = load_config(path)
    assert produced == reshape(generate(cfg, "ctr", 50, 1), cfg, fmt)
    assert "(50 requests)" in result.stdout
    warned = "warning:" in result.stderr
    assert warned == (mismatch(fmt, cfg) is not None)
    if warned:
        assert f"examples/ctr-{fmt}.yaml" in result.stderr
