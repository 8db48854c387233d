"""Reading closed dataset windows, through their manifests only.

A window lives in ``<dataset.path>/window-<%Y-%m-%dT%H-%M-%SZ>/`` (a local directory or
an ``s3://`` prefix: read through ``streams.common.storage``); it is closed (and
readable) once its ``_manifest.json`` exists. Only the files the manifest lists
are read, never a glob, so a reader never sees uncommitted files.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from schemas.dataset_schema import (MANIFEST, iso_utc, parse_manifest, parse_window_arg,
                                    parse_window_dir, window_dir)
from schemas.errors import DatasetError
from streams.common.storage import open_storage

# The window names and the manifest's name are the sink's (one definition each).
window_dirname = window_dir
window_iso = iso_utc


def parse_window(text: str | int) -> int:
    """A window start in epoch ms from ``2026-11-27T10:00:00Z``, the directory form
    ``[window-]2026-11-27T10-00-00Z``, any ISO time with a zone, or integer ms."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    try:
        return parse_window_arg(str(text))
    except ValueError:
        raise DatasetError(f"window {text!r} is not a window start; write e.g. "
                           "2026-11-27T10:00:00Z (UTC, with the Z)") from None


@dataclass(frozen=True)
class Window:
    """A closed window: its start/end (ms), its directory in the dataset's storage (a
    local directory or an S3 prefix) and its parsed manifest."""
    start_ms: int
    end_ms: int
    storage: Any
    dirname: str
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return window_iso(self.start_ms)

    @property
    def manifest_path(self) -> str:
        """The manifest's path or ``s3://`` URI."""
        return self.storage.uri(f"{self.dirname}/{MANIFEST}")


def _same_location(given: str, expected: str) -> bool:
    if expected.startswith("s3://"):
        return given.rstrip("/") == expected
    path = given[7:] if given.startswith("file://") else given
    return "://" not in path and Path(path).resolve() == Path(expected).resolve()


def open_window(root: str | Path, start_ms: int, manifest: str | Path | None = None) -> Window:
    """The closed window starting at ``start_ms`` under ``root`` (DatasetError if not closed).

    ``root`` is ``dataset.path``: a local directory or ``s3://bucket/prefix``.
    ``manifest`` (e.g. from a windows-topic event) must name the window's own manifest
    under ``root``: an event cannot make a job read anything else (DatasetError).
    """
    storage = open_storage(str(root))
    dirname = window_dirname(start_ms)
    rel = f"{dirname}/{MANIFEST}"
    mpath = storage.uri(rel)
    if manifest and not _same_location(str(manifest), mpath):
        raise DatasetError(f"window {window_iso(start_ms)}: manifest {str(manifest)!r} is not "
                           f"this window's manifest under dataset.path ({mpath}); refusing "
                           "to read it")
    try:
        raw = storage.read(rel)
    except OSError as e:
        raise DatasetError(f"window {window_iso(start_ms)}: cannot read manifest {mpath} "
                           f"({e})") from None
    if raw is None:
        raise DatasetError(f"window {window_iso(start_ms)}: no manifest at {mpath}; the "
                           "window is not closed yet (or dataset.path is wrong)")
    data = parse_manifest(raw, mpath, ("format", "window_start_ms", "window_end_ms", "files",
                                       "rows"))
    if data["window_start_ms"] != start_ms:
        raise DatasetError(f"manifest {mpath}: window_start_ms {data['window_start_ms']} is not "
                           f"the requested window {start_ms}")
    return Window(start_ms, int(data["window_end_ms"]), storage, dirname, data)


def read_window(window: Window) -> pd.DataFrame:
    """All rows of a closed window, from the files its manifest lists, in that order."""
    frames = []
    for entry in window.manifest["files"]:
        name = str(entry["path"])
        if "/" in name or "\\" in name or name.startswith("."):
            raise DatasetError(f"window {window.name}: manifest file name {name!r} is not a "
                               "plain file name in the window directory")
        path = window.storage.uri(f"{window.dirname}/{name}")
        try:
            raw = window.storage.read(f"{window.dirname}/{name}")
            if raw is None:
                raise FileNotFoundError(path)
            table = pq.read_table(io.BytesIO(raw))
        except (OSError, ValueError) as e:
            raise DatasetError(f"window {window.name}: cannot read {path} ({e})") from None
        if table.num_rows != entry.get("rows", table.num_rows):
            raise DatasetError(f"window {window.name}: {path} has {table.num_rows} rows, the "
                               f"manifest says {entry['rows']}")
        frames.append(table.to_pandas())
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return df


def closed_windows(root: str | Path) -> list[int]:
    """Starts (ms) of every closed window under ``root``, ascending."""
    storage = open_storage(str(root))
    out = []
    for name in storage.list_dir():
        start = parse_window_dir(name)
        if start is not None and MANIFEST in storage.list_dir(name):
            out.append(start)
    return sorted(out)


def previous_window(root: str | Path, start_ms: int) -> int | None:
    """The latest closed window before ``start_ms`` (the drift reference), or None."""
    earlier = [w for w in closed_windows(root) if w < start_ms]
    return earlier[-1] if earlier else None
