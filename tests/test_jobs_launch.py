"""jobs.launch: a command of yours per closed window, no shell, timeout, retries, once."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from schemas.config import config_from_dict
from schemas.config_jobs import LaunchSpec
from schemas.errors import ConfigError, JobError
from jobs.configio import config_from_json, config_to_json
from jobs.dataset import window_dirname, window_iso
from jobs.registry import Registry
from jobs.runner import RunSummary, Runner
from tests.jobs_support import H, START, on_tmp, write_ctr_windows
from tests.waiting import alive

# writes its arguments (after the output file) as JSON lines to argv[1]; prints to stderr
RECORD = ("import json, sys; open(sys.argv[1], 'a').write(json.dumps(sys.argv[2:]) + '\\n'); "
          "print('recorded', len(sys.argv) - 2, file=sys.stderr)")


def _launching(cfg, argv, **kw):
    spec = LaunchSpec(argv=tuple(argv), **{"retry_backoff_ms": 100, **kw})
    return dataclasses.replace(cfg, jobs=dataclasses.replace(cfg.jobs, launch=spec))


@pytest.fixture
def cfg(make_config, tmp_path):
    return on_tmp(make_config("ctr"), tmp_path, retries=0)


def _run(cfg, windows, sleeps=None, retry_failed=False):
    s = RunSummary()
    runner = Runner(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None),
                    retry_failed=retry_failed)
    runner.run_windows({w: None for w in windows}, s)
    return s


def _calls(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_placeholders_are_substituted_per_argument(cfg, tmp_path):
    """Each value lands in its own argument, whole: a path with spaces and shell syntax
    neither splits nor runs anything."""
    odd = tmp_path / "data dir; touch PWNED $(id)"
    cfg = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, path=str(odd)))
    [w] = write_ctr_windows(cfg, 1, rows=50)
    out = tmp_path / "calls.jsonl"
    cfg = _launching(cfg, [sys.executable, "-c", RECORD, str(out), "{pipeline}",
                           "{window_start}", "{window_end}", "{window_start_ms}",
                           "{window_end_ms}", "--manifest={manifest}", "{window_dir}",
                           "{dataset}", "job-{pipeline}-{window_start_ms}-{attempt}",
                           '{"conf": "{window_start}"}'])
    s = _run(cfg, [w])
    assert s.launched == [window_iso(w)] and s.trained == [] and s.failed == []
    wdir = f"{odd}/{window_dirname(w)}"
    assert _calls(out) == [[cfg.pipeline, "2026-11-18T11:00:00Z", "2026-11-18T12:00:00Z",
                            str(w), str(w + H), f"--manifest={wdir}/_manifest.json", wdir,
                            str(odd), f"job-{cfg.pipeline}-{w}-1",
                            '{"conf": "2026-11-18T11:00:00Z"}']]
    assert not list(tmp_path.rglob("PWNED"))
    rec = Registry(cfg.model.path).window_record(window_iso(w))
    assert rec["status"] == "launched"
    launch = rec["launch"]
    assert (launch["ok"], launch["exit_code"], launch["attempts"], launch["timed_out"]) == \
        (True, 0, 1, False)
    assert launch["stderr_tail"] == ["recorded 10"] and launch["duration_s"] >= 0
    assert launch["argv"][0] == sys.executable and launch["argv"][4] == cfg.pipeline


def test_values_are_in_the_environment_too(cfg, tmp_path):
    [w] = write_ctr_windows(cfg, 1, rows=50)
    out = tmp_path / "env.json"
    code = ("import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
            "if k.startswith('DLABEL_')}, open(sys.argv[1], 'w'))")
    _run(_launching(cfg, [sys.executable, "-c", code, str(out)]), [w])
    env = json.loads(out.read_text())
    assert env["DLABEL_WINDOW_START_MS"] == str(w) and env["DLABEL_PIPELINE"] == cfg.pipeline
    assert env["DLABEL_MANIFEST"].endswith("/_manifest.json") and env["DLABEL_ATTEMPT"] == "1"


def test_a_failing_command_is_retried_then_recorded_failed(cfg, tmp_path):
    [w] = write_ctr_windows(cfg, 1, rows=50)
    code = "import sys; print('boom', sys.argv[1], file=sys.stderr); sys.exit(3)"
    cfg = _launching(cfg, [sys.executable, "-c", code, "{attempt}"], retries=2)
    sleeps: list[float] = []
    s = _run(cfg, [w], sleeps)
    assert s.failed == [window_iso(w)] and s.launched == []
    assert sleeps == [0.1, 0.2]  # doubling backoff
    reg = Registry(cfg.model.path)
    rec = reg.window_record(window_iso(w))
    assert rec["status"] == "failed" and rec["attempts"] == 3
    assert rec["error"] == "launch: exit status 3"
    assert (rec["launch"]["ok"], rec["launch"]["exit_code"], rec["launch"]["attempts"]) == \
        (False, 3, 3)
    assert rec["launch"]["stderr_tail"] == ["boom 3"]  # the last attempt's stderr
    for attempt in (1, 2, 3):
        assert f"boom {attempt}" in reg.launch_log_path(window_iso(w), attempt).read_text()
    # a failed window is launched again only when asked
    assert _run(cfg, [w]).skipped == [window_iso(w)]
    ok = _launching(cfg, [sys.executable, "-c", "pass"])
    assert _run(ok, [w], retry_failed=True).launched == [window_iso(w)]
    assert reg.window_record(window_iso(w))["status"] == "launched"


def test_a_command_that_hangs_is_killed_with_its_children(cfg, tmp_path):
    """The whole process group goes at the timeout: the command and what it started."""
    [w] = write_ctr_windows(cfg, 1, rows=50)
    pids = tmp_path / "pids"
    hang = f'sleep 60 & echo $! >> "{pids}"; echo $$ >> "{pids}"; wait'
    cfg = _launching(cfg, ["/bin/sh", "-c", hang], timeout_ms=1000, retries=1)
    s = _run(cfg, [w])
    assert s.failed == [window_iso(w)]
    rec = Registry(cfg.model.path).window_record(window_iso(w))
    assert rec["launch"]["timed_out"] and rec["launch"]["exit_code"] is None
    assert rec["error"] == "launch: timed out after 1s (killed)" and rec["attempts"] == 2
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 4, "a shell and its sleep per attempt"
    assert not [p for p in started if alive(p)], "a timed-out command left a process running"


def test_a_replayed_window_is_not_launched_again(cfg, tmp_path):
    starts = write_ctr_windows(cfg, 2, rows=50)
    out = tmp_path / "calls.jsonl"
    cfg = _launching(cfg, [sys.executable, "-c", RECORD, str(out), "{window_start}"])
    s = _run(cfg, [starts[1], starts[0]])
    assert s.launched == [window_iso(w) for w in starts]  # in window order
    again = _run(cfg, starts)  # a replay of the topic, by a new runner
    assert again.skipped == s.launched and again.launched == []
    assert _calls(out) == [[window_iso(starts[0])], [window_iso(starts[1])]]


def test_with_dlabel_job_trains_then_launches_once(cfg, tmp_path):
    starts = write_ctr_windows(cfg, 2, rows=300)
    out = tmp_path / "calls.jsonl"
    cfg = _launching(cfg, [sys.executable, "-c", RECORD, str(out), "{window_start}"],
                     with_dlabel_job=True)
    s = _run(cfg, starts[:1])
    assert s.trained == s.launched == [window_iso(starts[0])]
    reg = Registry(cfg.model.path)
    rec = reg.window_record(window_iso(starts[0]))
    assert rec["status"] == "trained" and rec["version"] == "v0001" and rec["launch"]["ok"]
    # the runner died after the job and before the launch: the next pass launches it
    # without training it again
    reg.record_window(window_iso(starts[1]), **{k: v for k, v in rec.items()
                                                if k not in ("window", "launch")})
    s2 = _run(cfg, starts)
    assert s2.skipped == [window_iso(starts[0])] and s2.launched == [window_iso(starts[1])]
    assert reg.versions() == ["v0001"]
    assert _calls(out) == [[window_iso(starts[0])], [window_iso(starts[1])]]


def test_an_unclosed_window_is_not_launched(cfg, tmp_path):
    out = tmp_path / "calls.jsonl"
    cfg = _launching(cfg, [sys.executable, "-c", RECORD, str(out)], retries=2)
    s = _run(cfg, [START])
    assert s.failed == [window_iso(START)] and not out.exists()
    rec = Registry(cfg.model.path).window_record(window_iso(START))
    assert "not closed yet" in rec["error"] and rec["launch"]["exit_code"] is None


def test_a_missing_program_fails_at_start(cfg):
    cfg = _launching(cfg, ["no-such-program-dlabel", "{window_start}"])
    with pytest.raises(JobError, match="jobs.launch.command: program 'no-such-program-dlabel' "
                                       "is not found"):
        Runner(cfg)


def test_the_launch_spec_reaches_the_job_subprocess(cfg):
    cfg = _launching(cfg, ["kubectl", "create", "job", "x-{window_start_ms}"], timeout_ms=5000)
    assert config_from_json(config_to_json(cfg)) == cfg


# ---- config ----------------------------------------------------------------------------
def _ctr_dict(jobs):
    import yaml
    from tests.jobs_support import EXAMPLES
    data = yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())
    data["jobs"] = jobs
    return data


def test_launch_config_parsed():
    jobs = {"launch": {"command": "airflow dags trigger -c '{\"window\": \"{window_start}\"}' "
                                  "ctr_train", "timeout": "2m", "retries": 1,
                       "retry_backoff": "5s", "with_dlabel_job": True}}
    spec = config_from_dict(_ctr_dict(jobs), environ={}).jobs.launch
    assert spec == LaunchSpec(argv=("airflow", "dags", "trigger", "-c",
                                    '{"window": "{window_start}"}', "ctr_train"),
                              timeout_ms=120_000, retries=1, retry_backoff_ms=5000,
                              with_dlabel_job=True)
    listed = config_from_dict(_ctr_dict({"launch": {"command": ["train", "{manifest}"]}}),
                              environ={}).jobs.launch
    assert listed.argv == ("train", "{manifest}") and listed.timeout_ms == 1_800_000
    assert config_from_dict(_ctr_dict(None), environ={}).jobs.launch is None


@pytest.mark.parametrize("jobs, message", [
    ({"launch": {"command": "train {window}"}},
     "jobs.launch.command: unknown placeholder {window} in '{window}'; use {pipeline}"),
    ({"launch": {"command": "{dataset}/train.sh"}},
     "jobs.launch.command: the program '{dataset}/train.sh' has a placeholder"),
    ({"launch": {"command": "train 'unclosed"}},
     "jobs.launch.command: \"train 'unclosed\" cannot be split into arguments"),
    ({"launch": {"command": ""}}, "jobs.launch.command: '' has no program to run"),
    ({"launch": {"command": 5}}, "jobs.launch.command: 5 is not a command"),
    ({"launch": {"command": "train", "timeout": "soon"}},
     "jobs.launch.timeout: 'soon' is not a duration"),
    ({"launch": {"command": "train", "retry": 2}}, "jobs.launch: unknown key(s) 'retry'"),
    ({"launcher": {}}, "jobs: unknown key(s) 'launcher'; allowed keys are launch"),
])
def test_launch_config_errors(jobs, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(_ctr_dict(jobs), environ={})
    assert message in str(e.value)


def test_the_example_launches_a_kubernetes_job():
    from tests.jobs_support import EXAMPLES
    from schemas.config import load_config
    spec = load_config(EXAMPLES / "ctr-launch.yaml", environ={}).jobs.launch
    assert spec.argv[:4] == ("kubectl", "create", "job", "ctr-train-{window_start_ms}-{attempt}")
    assert "--manifest={manifest}" in spec.argv and spec.with_dlabel_job



def test_the_documented_launch_sections_are_valid():
    """Every ``jobs:`` YAML block of jobs/docs/launch.md loads (placeholders, quoting)."""
    import re
    import yaml
    from pathlib import Path
    doc = (Path(__file__).resolve().parent.parent / "jobs" / "docs" / "launch.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if b.startswith("jobs:")]
    assert len(blocks) >= 4
    for block in blocks:
        spec = config_from_dict(_ctr_dict(yaml.safe_load(block)["jobs"]), environ={}).jobs.launch
        assert spec is not None and spec.argv
    airflow = next(b for b in blocks if "airflow" in b)
    argv = config_from_dict(_ctr_dict(yaml.safe_load(airflow)["jobs"]), environ={}).jobs.launch.argv
    assert argv[-2:] == ("-c", '{"window_start": "{window_start}", "window_end": '
                               '"{window_end}", "manifest": "{manifest}"}')
