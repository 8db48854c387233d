"""The retraining commands: retrain (one window, backfill), models, report, jobs."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from jobs.cli import COMMANDS
from jobs.registry import Registry
from streams.dev.simulate import ConceptDrift, generate
from tests.jobs_support import on_tmp, write_ctr_windows, write_yaml


@click.group()
def cli() -> None:
    """Stand-in for streams.cli:main."""


for _cmd in COMMANDS:
    cli.add_command(_cmd)


@pytest.fixture
def setup(make_config, tmp_path):
    cfg = on_tmp(make_config("ctr"), tmp_path)
    return cfg, write_yaml(cfg, "ctr", tmp_path / "ctr.yaml")


def run(*args: str, ok: bool = True):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert (res.exit_code == 0) is ok, res.output
    return res


def test_retrain_one_window_then_backfill_the_rest(setup):
    cfg, path = setup
    write_ctr_windows(cfg, 4, rows=300)
    out = run("retrain", "-c", path, "--window", "2026-11-18T11:00:00Z").output
    assert "2026-11-18T11:00:00Z: trained v0001 (promoted)" in out
    out = run("retrain", "-c", path, "--from", "2026-11-18T11:00:00Z",
              "--to", "2026-11-18T14:00:00Z").output
    assert "11:00:00Z: skipped" in out and "12:00:00Z: trained v0002" in out
    assert "14:00:00Z" not in out  # --to is exclusive
    assert len(Registry(cfg.model.path).versions()) == 3
    assert "give either --window" in run("retrain", "-c", path, ok=False).output
    assert "is not a window start" in run("retrain", "-c", path, "--window", "yesterday",
                                          ok=False).output


def test_models_list_show_promote_rollback(setup):
    cfg, path = setup
    write_ctr_windows(cfg, 3, rows=300)
    run("retrain", "-c", path, "--from", "2026-11-18T11:00:00Z")
    reg = Registry(cfg.model.path)
    out = run("models", "-c", path, "list").output
    assert "v0001" in out and "v0002" in out and "<- champion" in out
    d3 = reg.metrics(3)["decision"]  # window 3 judged v0002 in shadow: an interval
    lo, hi = d3["gain_ci"]
    assert f"{d3['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] 95%" in out
    shown = json.loads(run("models", "-c", path, "show", "1").output)
    assert shown["version"] == "v0001" and shown["lineage"]["parent"] is None
    shown = json.loads(run("models", "-c", path, "show", "3").output)
    assert shown["metrics"]["decision"]["gain_ci"] == [lo, hi]
    assert "ci" in shown["metrics"]["holdout"]["challenger"]["overall"]
    run("models", "-c", path, "promote", "v0001")
    assert reg.champion() == "v0001"
    run("models", "-c", path, "promote", "2")
    assert "champion is now v0001" in run("models", "-c", path, "rollback").output
    assert "version v0009 is not in the registry" in run("models", "-c", path, "show", "9",
                                                         ok=False).output
    p = reg.root / "v0002" / "model.skops"
    p.write_bytes(p.read_bytes() + b"x")
    assert "checksum mismatch" in run("models", "-c", path, "promote", "2", ok=False).output


def test_report_command(setup):
    cfg, path = setup
    write_ctr_windows(cfg, 2, rows=300)
    run("retrain", "-c", path, "--from", "2026-11-18T11:00:00Z")
    index = run("report", "-c", path).output.strip()
    assert index.endswith("report/index.html") and "<img" in open(index).read()


@pytest.mark.broker
def test_jobs_until_idle_command(broker, make_config, tmp_path):
    cfg = on_tmp(make_config("ctr", broker=broker.url), tmp_path)
    path = write_yaml(cfg, "ctr", tmp_path / "ctr.yaml")
    from streams.kafka.topics import ensure_topics
    ensure_topics(broker.bootstrap, cfg)
    res = run("jobs", "-c", path, "--broker", broker.url, "--until-idle", "--idle-timeout", "1")
    assert json.loads(res.output.strip().splitlines()[-1])["trained"] == []


@pytest.mark.broker
def test_jobs_follow_mode_retries_failed_windows_when_asked(broker, make_config, tmp_path,
                                                            monkeypatch):
    """``--retry-failed`` without ``--until-idle`` reaches the Runner (it was dropped)."""
    import jobs.runner
    cfg = on_tmp(make_config("ctr", broker=broker.url), tmp_path)
    path = write_yaml(cfg, "ctr", tmp_path / "ctr.yaml")
    seen: list[dict] = []

    def runner(config, **kwargs):  # Ctrl-C as soon as the follow loop builds its Runner
        seen.append(kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(jobs.runner, "Runner", runner)
    out = run("jobs", "-c", path, "--broker", broker.url, "--retry-failed").output
    assert "following" in out and [k.get("retry_failed") for k in seen] == [True]
    run("jobs", "-c", path, "--broker", broker.url)
    assert [k.get("retry_failed") for k in seen] == [True, False]


def test_simulated_concept_drift(make_config):
    cfg = make_config("ctr")
    plain = generate(cfg, "ctr", 3000, seed=4)
    assert generate(cfg, "ctr", 3000, seed=4, drift=None) == plain
    at = plain[len(plain) // 2].ts
    drifted = generate(cfg, "ctr", 3000, seed=4, drift=ConceptDrift(at_ms=at))

    def clicked_shoes(events, after: bool):
        reqs = {e.key: json.loads(e.value) for e in events if e.kind == "request"}
        clicked = {e.key for e in events if e.kind in ("feedback", "early_feedback")
                   and json.loads(e.value)["type"] == "click"}
        shoes = [k for k, r in reqs.items() if r["features"]["category"] == "mens_dress_shoes"
                 and (_ts(r["ts"]) >= at) == after]
        return sum(k in clicked for k in shoes), len(shoes)
    assert clicked_shoes(drifted, after=True)[0] == 0 < clicked_shoes(drifted, after=True)[1]
    assert clicked_shoes(drifted, after=False)[0] > 0
    with pytest.raises(ValueError, match="not a ctr category"):
        ConceptDrift(at_ms=0, category="mens_hats")


def _ts(v) -> int:
    from datetime import datetime
    return v if isinstance(v, int) else int(datetime.fromisoformat(v.replace("Z", "+00:00"))
                                            .timestamp() * 1000)
