"""Nothing taken from a config or an event can make dlabel write (or read) outside its roots."""
from __future__ import annotations

import json

import pytest

from jobs import dataset as ds
from schemas.config import config_from_dict
from schemas.dataset_schema import parse_window_dir, window_dir
from schemas.errors import CommitError, ConfigError, DlabelError
from streams.common.storage import LocalStorage


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "", "x" * 65, "a b"])
def test_pipeline_names_that_could_become_paths_are_refused(name):
    raw = {"pipeline": name, "topics": {"requests": "r", "feedback": "f", "labeled": "l",
                                        "dead_letter": "d", "windows": "w"},
           "join": {"label_window": "30m"}, "label": {"kind": "binary", "positive": ["click"]},
           "features": {"x": "int"}, "dataset": {"path": "d", "window": "1h"},
           "model": {"path": "m"}}
    with pytest.raises(ConfigError, match="pipeline"):
        config_from_dict(raw)


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "..", "a\\\\..\\\\x"])
def test_storage_refuses_paths_outside_its_root(tmp_path, rel):
    storage = LocalStorage(str(tmp_path / "root"))
    with pytest.raises(CommitError):
        storage.write_atomic(rel, b"x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("ms", [0, -1, 1_795_000_000_000, 253_402_300_799_000])
def test_window_directories_are_single_path_components(ms):
    name = window_dir(ms - ms % 3_600_000)
    assert "/" not in name and ".." not in name and parse_window_dir(name) == ms - ms % 3_600_000


def test_a_windows_event_cannot_point_a_job_at_another_manifest(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "_manifest.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({"format": 1, "window_start_ms": 0, "window_end_ms": 1,
                                     "files": [{"path": "../../secret.parquet", "rows": 1}],
                                     "rows": 1}))
    with pytest.raises(DlabelError, match="refusing"):
        ds.open_window(tmp_path / "data", 0, manifest=str(elsewhere))


def test_a_manifest_cannot_name_files_outside_its_window(tmp_path):
    wdir = tmp_path / "data" / window_dir(0)
    wdir.mkdir(parents=True)
    (wdir / "_manifest.json").write_text(json.dumps({
        "format": 1, "window_start_ms": 0, "window_end_ms": 1, "rows": 1,
        "files": [{"path": "../../outside.parquet", "rows": 1}]}))
    window = ds.open_window(tmp_path / "data", 0)
    with pytest.raises(DlabelError, match="plain file name"):
        ds.read_window(window)
