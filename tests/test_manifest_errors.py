"""A manifest changed outside dlabel: every reader says which file and what is wrong,
with DatasetError (the CLI prints it), never a bare JSONDecodeError or KeyError."""
from __future__ import annotations

import json

import pytest

from jobs.dataset import open_window
from schemas.dataset_schema import MANIFEST, window_dir
from schemas.errors import DatasetError
from streams.common.storage import LocalStorage
from streams.dataset.manifest import list_windows, read_manifest, read_window

START_MS = 1_763_460_000_000  # 2025-11-18T10:00:00Z


def _window(tmp_path, text: str) -> tuple[LocalStorage, str]:
    dirname = window_dir(START_MS)
    (tmp_path / dirname).mkdir()
    (tmp_path / dirname / MANIFEST).write_text(text)
    return LocalStorage(str(tmp_path)), dirname


@pytest.mark.parametrize("text, says", [
    ('{"format": 1, "rows": 3', "is not valid JSON"),
    ("[1, 2]", "lacks format, pipeline"),
    (json.dumps({"format": 1, "pipeline": "p", "window_start": "x", "window_end": "y",
                 "files": []}), "lacks rows, positives"),
])
def test_a_broken_manifest_is_named_with_the_fix(tmp_path, text, says):
    storage, dirname = _window(tmp_path, text)
    for read in (lambda: read_manifest(storage, dirname), lambda: list_windows(storage),
                 lambda: read_window(storage, dirname)):
        with pytest.raises(DatasetError) as err:
            read()
        msg = str(err.value)
        assert says in msg and f"{dirname}/{MANIFEST}" in msg and "restore it" in msg


@pytest.mark.parametrize("text, says", [
    ('{"format": 1, "rows": 3', "is not valid JSON"),
    ("[1, 2]", "lacks format, window_start_ms"),
    (json.dumps({"format": 1, "window_start_ms": START_MS, "files": []}),
     "lacks window_end_ms, rows"),
])
def test_the_jobs_reader_names_a_broken_manifest_the_same_way(tmp_path, text, says):
    _window(tmp_path, text)
    with pytest.raises(DatasetError) as err:
        open_window(tmp_path, START_MS)
    msg = str(err.value)
    assert says in msg and f"{window_dir(START_MS)}/{MANIFEST}" in msg and "restore it" in msg


def test_an_open_window_is_not_read(tmp_path):
    dirname = window_dir(START_MS)
    (tmp_path / dirname).mkdir()
    storage = LocalStorage(str(tmp_path))
    assert read_manifest(storage, dirname) is None
    with pytest.raises(DatasetError, match="still open"):
        read_window(storage, dirname)


def test_a_manifest_of_another_format_is_refused_by_every_reader(tmp_path):
    manifest = {"format": 2, "pipeline": "p", "window_start": "x", "window_end": "y",
                "files": [], "rows": 0, "positives": 0, "window_start_ms": START_MS,
                "window_end_ms": START_MS + 3_600_000}
    storage, dirname = _window(tmp_path, json.dumps(manifest))
    for read in (lambda: list_windows(storage), lambda: open_window(tmp_path, START_MS)):
        with pytest.raises(DatasetError, match="format 2 is not supported"):
            read()
