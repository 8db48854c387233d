"""Reading closed dataset windows, through their manifests only.

A window lives in ``<dataset.path>/window-<%Y-%m-%dT%H-%M-%SZ>/``; it is closed
(and readable) once its ``_manifest.json`` exists. Only the files the manifest lists
are read, never a glob, so a reader never sees uncommitted files.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from schemas.dataset_schema import (MANIFEST, iso_utc, parse_window_arg, parse_window_dir,
                                    window_dir)
from schemas.errors import DatasetError

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
    """A closed window: its start/end (ms), directory and parsed manifest."""
    start_ms: int
    end_ms: int
    path: Path
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return window_iso(self.start_ms)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST


def open_window(root: str | Path, start_ms: int, manifest: str | Path | None = None) -> Window:
    """The closed window starting at ``start_ms`` under ``root`` (DatasetError if not closed).

    ``manifest`` (e.g. from a windows-topic event) must name the window's own manifest
    under ``root``: an event cannot make a job read anything else (DatasetError).
    """
    mpath = Path(root) / window_dirname(start_ms) / MANIFEST
    if manifest:
        given = Path(str(manifest)[7:] if str(manifest).startswith("file://") else manifest)
        if given.resolve() != mpath.resolve():
            raise DatasetError(f"window {window_iso(start_ms)}: manifest {str(manifest)!r} is not "
                               f"this window's manifest under dataset.path ({mpath}); refusing "
                               "to read it")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"window {window_iso(start_ms)}: no manifest at {mpath}; the window "
                           "is not closed yet (or dataset.path is wrong)") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"window {window_iso(start_ms)}: cannot read manifest {mpath} "
                           f"({e})") from None
    for key in ("format", "window_start_ms", "window_end_ms", "files", "rows"):
        if key not in data:
            raise DatasetError(f"manifest {mpath}: missing key {key!r}")
    if data["format"] != 1:
        raise DatasetError(f"manifest {mpath}: format {data['format']!r} is not supported "
                           "(this dlabel reads format 1)")
    if data["window_start_ms"] != start_ms:
        raise DatasetError(f"manifest {mpath}: window_start_ms {data['window_start_ms']} is not "
                           f"the requested window {start_ms}")
    return Window(start_ms, int(data["window_end_ms"]), mpath.parent, data)


def read_window(window: Window) -> pd.DataFrame:
    """All rows of a closed window, from the files its manifest lists, in that order."""
    frames = []
    for entry in window.manifest["files"]:
        name = str(entry["path"])
        if "/" in name or "\\" in name or name.startswith("."):
            raise DatasetError(f"window {window.name}: manifest file name {name!r} is not a "
                               "plain file name in the window directory")
        path = window.path / name
        try:
            table = pq.read_table(path)
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
    out = []
    base = Path(root)
    if not base.is_dir():
        return out
    for child in base.iterdir():
        start = parse_window_dir(child.name)
        if start is not None and (child / MANIFEST).is_file():
            out.append(start)
    return sorted(out)


def previous_window(root: str | Path, start_ms: int) -> int | None:
    """The latest closed window before ``start_ms`` (the drift reference), or None."""
    earlier = [w for w in closed_windows(root) if w < start_ms]
    return earlier[-1] if earlier else None
