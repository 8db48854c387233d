"""Reading closed dataset windows, through their manifests only.

A window lives in ``<dataset.path>/window_start=<%Y-%m-%dT%H-%M-%SZ>/``; it is closed
(and readable) once its ``_manifest.json`` exists. Only the files the manifest lists
are read, never a glob, so a reader never sees uncommitted files.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from schemas.errors import DatasetError

MANIFEST = "_manifest.json"
_DIR_FMT = "%Y-%m-%dT%H-%M-%SZ"
_ISO_FMT = "%Y-%m-%dT%H:%M:%SZ"
_DIR_RE = re.compile(r"^window_start=(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)$")


def window_dirname(start_ms: int) -> str:
    """``window_start=2026-11-27T10-00-00Z`` for a window starting at ``start_ms``."""
    return "window_start=" + _utc(start_ms).strftime(_DIR_FMT)


def window_iso(start_ms: int) -> str:
    """``2026-11-27T10:00:00Z``: how events, manifests and the registry name a window."""
    return _utc(start_ms).strftime(_ISO_FMT)


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def parse_window(text: str | int) -> int:
    """A window start in epoch ms from ``2026-11-27T10:00:00Z``, the directory form
    ``[window_start=]2026-11-27T10-00-00Z``, any ISO time with a zone, or integer ms."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text).strip()
    if s.isdigit():
        return int(s)
    s = s.removeprefix("window_start=")
    for fmt in (_DIR_FMT, _ISO_FMT):
        try:
            return int(datetime.strptime(s, fmt).replace(tzinfo=timezone.utc).timestamp() * 1000)
        except ValueError:
            pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None:
        raise DatasetError(f"window {text!r} is not a window start; write e.g. "
                           "2026-11-27T10:00:00Z (UTC, with the Z)")
    return int(dt.timestamp() * 1000)


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
        m = _DIR_RE.match(child.name)
        if m and (child / MANIFEST).is_file():
            out.append(parse_window(m.group(1)))
    return sorted(out)


def previous_window(root: str | Path, start_ms: int) -> int | None:
    """The latest closed window before ``start_ms`` (the drift reference), or None."""
    earlier = [w for w in closed_windows(root) if w < start_ms]
    return earlier[-1] if earlier else None
