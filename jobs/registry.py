"""The model registry under ``model.path``.

```
<model.path>/
  v0001/model.skops        the model, saved by skops (never a pickle)
  v0001/model.sha256       sha256 of model.skops
  v0001/metrics.json       the job's evaluation, drift and promotion decision
  v0001/metrics-v2.json    its window's models scored on the corrected data version 2
  v0001/lineage.json       windows trained on, parent version, dataset manifests
  champion.json            {"version": "v0003", "history": ["v0001", ...]}: the champion
  windows/<window>.json    one record per window: trained (with its version) or failed
  logs/<window>.<n>.log    the log of attempt n of the job of a window (.v<n>: re-evaluation)
  logs/<window>.launch.<n>.log   the same for jobs.launch's command
```

Every write is atomic: a version directory is assembled under a hidden temp name and
renamed into place (its ``lineage.json`` written last); ``champion.json`` and window
records are written to a temp file, fsynced and renamed. Loading checks the sha256 and
asks skops which types the file holds; any type outside skops' trusted defaults
(sklearn, numpy, scipy) and the ``trusted_types`` the config lists
(``model.trusted_types``) is refused, so nothing is ever unpickled blind. Saving checks
the same before it stores anything, and that skops can load the file back, so a model
the next job could not load never becomes a version.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from schemas.errors import JobError, RegistryError
from streams.common.storage import fsync_dir
from streams.common.storage import write_file_atomic as write_atomic  # also used by jobs.runner
from jobs import modelfile
from jobs.modelfile import MODEL_FILE
from jobs.models import AnyModel

_VERSION_RE = re.compile(r"^v(\d{4,})$")


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the registry writes JSON: indented, sorted keys, NaN as null."""
    return (json.dumps(_finite(obj), indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


_json = json_bytes


def version_name(n: int) -> str:
    """``v0001`` for 1."""
    return f"v{n:04d}"


class Registry:
    """Versions, the champion pointer and per-window records under one directory.

    ``trusted_types``: fully qualified type names beyond skops' trusted defaults that
    models may hold (``model.trusted_types``).
    """

    def __init__(self, root: str | Path, trusted_types: tuple[str, ...] | list[str] = ()) -> None:
        self.root = Path(root)
        self.trusted_types = tuple(trusted_types)

    # ---- versions -------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions (with lineage.json), oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in self.root.iterdir()
                 if (m := _VERSION_RE.match(p.name)) and (p / "lineage.json").is_file()]
        return [name for _, name in sorted(found)]

    def normalize(self, version: str | int) -> str:
        """``3``, ``"3"``, ``"v3"``, ``"v0003"`` -> ``"v0003"`` (RegistryError if unknown)."""
        text = str(version).strip().lower().removeprefix("v")
        if not text.isdigit():
            raise RegistryError(f"{version!r} is not a version; write e.g. v0003 or 3")
        name = version_name(int(text))
        if name not in self.versions():
            known = ", ".join(self.versions()) or "none yet"
            raise RegistryError(f"version {name} is not in the registry {self.root} "
                                f"(versions: {known})")
        return name

    def save(self, model: AnyModel, metrics: dict[str, Any], lineage: dict[str, Any]) -> str:
        """Store a new version; returns its name (the next free ``vNNNN``).

        RegistryError, storing nothing, when the model holds types outside the trusted
        ones, or when skops cannot load it back.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        data, digest = modelfile.encode(model, self.trusted_types)
        tmp = Path(tempfile.mkdtemp(prefix=".version.", dir=self.root))
        try:
            (tmp / MODEL_FILE).write_bytes(data)
            (tmp / "model.sha256").write_text(modelfile.digest_line(digest))
            (tmp / "metrics.json").write_bytes(_json(metrics))
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            while True:
                existing = [int(m.group(1)) for p in self.root.iterdir()
                            if (m := _VERSION_RE.match(p.name))]
                name = version_name(max(existing, default=0) + 1)
                (tmp / "lineage.json").write_bytes(_json({**lineage, "version": name,
                                                          "sha256": digest}))
                with open(tmp / "lineage.json", "rb") as f:
                    os.fsync(f.fileno())
                try:
                    os.rename(tmp, self.root / name)
                except OSError:
                    if (self.root / name).exists():
                        continue  # another writer took this number: take the next
                    raise
                break
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.root)
        return name

    def load(self, version: str | int) -> AnyModel:
        """Load a version after checking its sha256 and the types the file holds."""
        name = self.normalize(version)
        vdir = self.root / name
        data = (vdir / MODEL_FILE).read_bytes()
        try:
            expected = (vdir / "model.sha256").read_text().split()[0]
        except (OSError, IndexError):
            raise RegistryError(f"{vdir}: model.sha256 is missing or empty; the version "
                                "cannot be verified, so it is not loaded") from None
        return modelfile.decode(data, expected, self.trusted_types, str(vdir / MODEL_FILE))

    def metrics(self, version: str | int) -> dict[str, Any]:
        """The ``metrics.json`` of a version."""
        return json.loads((self.root / self.normalize(version) / "metrics.json").read_text())

    def lineage(self, version: str | int) -> dict[str, Any]:
        """The ``lineage.json`` of a version."""
        return json.loads((self.root / self.normalize(version) / "lineage.json").read_text())

    # ---- champion -------------------------------------------------------------------
    def _pointer(self) -> dict[str, Any]:
        path = self.root / "champion.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {"version": None, "history": []}
        except (OSError, ValueError) as e:
            raise RegistryError(f"{path}: unreadable champion pointer ({e})") from None

    def champion(self) -> str | None:
        """The champion's version name, or None before the first promotion."""
        return self._pointer()["version"]

    def set_champion(self, version: str | int, reason: str = "promoted") -> str:
        """Make ``version`` the champion (atomic); the old one goes on the history."""
        name = self.normalize(version)
        ptr = self._pointer()
        if ptr["version"] == name:
            return name
        history = ptr["history"] + ([ptr["version"]] if ptr["version"] else [])
        write_atomic(self.root / "champion.json",
                     _json({"version": name, "history": history, "reason": reason}))
        return name

    def rollback(self) -> str:
        """Make the previous champion the champion again; returns it."""
        ptr = self._pointer()
        if not ptr["history"]:
            raise RegistryError(f"{self.root}: no earlier champion to roll back to")
        previous = ptr["history"][-1]
        write_atomic(self.root / "champion.json",
                     _json({"version": previous, "history": ptr["history"][:-1],
                            "reason": f"rollback from {ptr['version']}"}))
        return previous

    # ---- windows --------------------------------------------------------------------
    def _record_path(self, window: str) -> Path:
        return self.root / "windows" / (window.replace(":", "-") + ".json")

    def window_record(self, window: str) -> dict[str, Any] | None:
        """The record of a window (``status`` trained or failed), or None."""
        try:
            return json.loads(self._record_path(window).read_text())
        except FileNotFoundError:
            return None

    def record_window(self, window: str, **fields: Any) -> None:
        """Write a window's record atomically (``status`` = trained | failed, ...)."""
        write_atomic(self._record_path(window), _json({"window": window, **fields}))

    def window_records(self) -> dict[str, dict[str, Any]]:
        """Every window record by window name."""
        d = self.root / "windows"
        if not d.is_dir():
            return {}
        recs = [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]
        return {r["window"]: r for r in recs}

    def version_for_window(self, window: str) -> str | None:
        """The version a job trained on ``window`` (its last lineage window), if any."""
        for name in reversed(self.versions()):
            if self.lineage(name).get("window") == window:
                return name
        return None

    def log_path(self, window: str, attempt: int | str) -> Path:
        """Where attempt ``attempt`` of the job of ``window`` logs (``v2``: the
        re-evaluation of its data version 2)."""
        return self.root / "logs" / f"{window.replace(':', '-')}.{attempt}.log"

    def launch_log_path(self, window: str, attempt: int) -> Path:
        """Where attempt ``attempt`` of ``jobs.launch``'s command for ``window`` logs."""
        return self.root / "logs" / f"{window.replace(':', '-')}.launch.{attempt}.log"


@contextmanager
def registry_lock(root: Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (one job at a time: jobs form a lineage)."""
    with exclusive_lock(root / ".lock", "another job holds the registry lock {path}; run "
                        "one job at a time per registry"):
        yield


@contextmanager
def exclusive_lock(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created with its directory), or raise
    JobError(``busy`` formatted with ``path``) at once when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobError(busy.format(path=path)) from None
        yield
    finally:
        os.close(fd)
