"""Publishing the serving model: atomic across a crash at every step, verified on load,
and rolled back by the guard when the updates make it worse than the frozen champion."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from schemas.errors import RegistryError
from jobs.configio import config_to_json
from jobs.job import run_job
from jobs.online import OnlineUpdater
from jobs.registry import Registry
from jobs.serving import ServingStore
from tests.online_support import close_window, ctr_rows, topic_rows, with_updates

ROOT = Path(__file__).resolve().parent.parent

# a publish killed at one step (os._exit: no cleanup runs, as with SIGKILL)
CRASH = textwrap.dedent("""
    import os, sys, json
    from pathlib import Path
    from jobs.configio import config_from_json
    from jobs.online import OnlineUpdater
    from tests.online_support import ctr_rows, topic_rows
    import jobs.serving as serving
    config = config_from_json(Path(sys.argv[1]).read_text())
    step = sys.argv[2]
    def die(*a, **k):
        os._exit(137)
    if step == "files":      # model files written, directory not renamed into place yet
        serving.os.rename = die
    elif step == "pointer":  # directory in place, serving.json not replaced yet
        serving.write_atomic = die
    elif step == "replace":  # serving.json's temp file written, not renamed yet
        os.replace = die
    updater = OnlineUpdater(config)
    updater.add(topic_rows(ctr_rows(1)[1])[:400])
    updater.step()
    os._exit(0)
""")


def _champion_and_first_update(cfg):
    start, df = ctr_rows(0)
    close_window(cfg, start, df)
    run_job(cfg, start)
    updater = OnlineUpdater(cfg)
    updater.add(topic_rows(ctr_rows(1)[1])[:200])
    assert updater.step() == "v0001.u0001"


@pytest.mark.parametrize("step", ["files", "pointer", "replace"])
def test_a_crash_mid_publish_leaves_the_previous_serving_model_loadable(make_config,
                                                                         tmp_path, step):
    cfg = with_updates(make_config("ctr"), tmp_path)
    _champion_and_first_update(cfg)
    store = ServingStore(cfg.model.path)
    before = store.pointer()
    probe = ctr_rows(5)[1]
    expected = store.load()[1].predict(probe)
    conf = tmp_path / "config.json"
    conf.write_text(config_to_json(cfg))
    proc = subprocess.run([sys.executable, "-c", CRASH, str(conf), step], cwd=ROOT,
                          capture_output=True, timeout=300)
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    assert store.pointer() == before
    name, model = store.load()
    assert name == "v0001.u0001"
    np.testing.assert_allclose(model.predict(probe), expected)
    if step == "files":
        assert list((tmp_path / "models" / "serving").glob(".update.*"))  # hidden leftover
        assert store.sub_versions() == ["v0001.u0001"]
    # a restarted updater publishes the next one and clears what the crash left
    updater = OnlineUpdater(cfg)
    updater.add(topic_rows(ctr_rows(1)[1])[:300])
    name = updater.step()
    assert name == ("v0001.u0002" if step == "files" else "v0001.u0003")
    assert store.load()[0] == name
    assert not list((tmp_path / "models" / "serving").glob(".update.*"))


def test_a_tampered_serving_model_is_refused(make_config, tmp_path):
    cfg = with_updates(make_config("ctr"), tmp_path)
    _champion_and_first_update(cfg)
    path = tmp_path / "models" / "serving" / "v0001.u0001" / "model.skops"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(RegistryError, match="checksum mismatch"):
        ServingStore(cfg.model.path).load()


def test_old_sub_versions_keep_their_record_not_their_model(make_config, tmp_path):
    cfg = with_updates(make_config("ctr"), tmp_path, every_rows=50)
    _champion_and_first_update(cfg)
    updater = OnlineUpdater(cfg)
    rows = topic_rows(ctr_rows(2)[1])
    for k in range(0, 250, 50):
        updater.add(rows[k:k + 50])
        updater.step()
    store = ServingStore(cfg.model.path)
    subs = store.sub_versions()
    assert len(subs) == 6
    with_model = [s for s in subs if (store.dir / s / "model.skops").exists()]
    assert with_model == subs[-3:]
    assert all(store.update_record(s)["version"] == s for s in subs)


def test_the_guard_rolls_back_to_the_champion_until_a_window_closes(make_config, tmp_path):
    """Labels that teach the opposite of the world (flipped) make the updated line worse
    than the frozen champion: serving.json goes back to the champion and the updates stop;
    after the next window closes a new line starts from the champion."""
    cfg = with_updates(make_config("ctr"), tmp_path, every_rows=100, tolerance=0.05,
                       guard_rows=400)
    for i in range(2):
        start, df = ctr_rows(i, rows=1500)
        close_window(cfg, start, df)
        run_job(cfg, start)
    champion = Registry(cfg.model.path).champion()
    updater = OnlineUpdater(cfg)
    flipped = [dict(r, label=1 - r["label"]) for r in topic_rows(ctr_rows(2, rows=1500)[1])]
    served = [updater.step() for k in range(0, 1500, 100) if not updater.add(flipped[k:k + 100])]
    store = ServingStore(cfg.model.path)
    ptr = store.pointer()
    assert ptr["version"] == champion and ptr["dir"] is None
    assert ptr["reason"].startswith("guard: the updated model's log_loss")
    assert champion in served
    tripped = served.index(champion)
    assert all(s is None for s in served[tripped + 1:])  # suspended: nothing published
    assert store.load()[0] == champion
    start, df = ctr_rows(2, rows=1500)
    close_window(cfg, start, df)
    assert updater.step() is None  # a new line from the champion, learning from now on
    updater.add(topic_rows(ctr_rows(3)[1])[:100])
    assert updater.step() == f"{champion}.u{len(store.sub_versions(champion)):04d}"
    assert store.update_record(store.pointer()["version"])["line_rows"] == 100


def test_the_guard_holds_while_the_updates_help(make_config, tmp_path):
    cfg = with_updates(make_config("ctr"), tmp_path, every_rows=100, guard_rows=400)
    start, df = ctr_rows(0, rows=1500)
    close_window(cfg, start, df)
    run_job(cfg, start)
    updater = OnlineUpdater(cfg)
    rows = topic_rows(ctr_rows(1, rows=1500)[1])
    served = [updater.step() for k in range(0, 1500, 100) if not updater.add(rows[k:k + 100])]
    assert all(s and ".u" in s for s in served)
    guard = ServingStore(cfg.model.path).update_record(served[-1])["guard"]
    assert guard["rows"] == 400 and guard["line"] <= guard["champion"] * 1.05


def test_the_config_with_updates_reaches_the_job_subprocess(make_config, tmp_path):
    from jobs.configio import config_from_json
    cfg = with_updates(make_config("ctr"), tmp_path, every_rows=123, tolerance=0.2)
    back = config_from_json(config_to_json(cfg))
    assert back.model.updates == cfg.model.updates
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    assert json.loads(config_to_json(cfg))["model"]["updates"]["every_rows"] == 123
