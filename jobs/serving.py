"""The serving model: the gated champion, or an in-window update of it (jobs.online).

```
<model.path>/serving.json                      the pointer a model server reads (atomic)
<model.path>/serving/v0003.u0012/model.skops   update 12 of champion v0003's line (skops, verified)
<model.path>/serving/v0003.u0012/model.sha256
<model.path>/serving/v0003.u0012/update.json   what it learned: rows, event time, guard losses
<model.path>/serving/.lock                     one updater per registry
```

A sub-version is published in two atomic steps: its directory is assembled under a
hidden temp name (files fsynced) and renamed into place, then ``serving.json`` is
replaced (temp file, fsync, rename). A crash before the second step leaves the pointer
on the previous serving model, whose files are still there; a half-written directory
keeps its hidden name and is never read. ``serving.json`` says
``{"version": "v0003.u0012", "champion": "v0003", "dir": "serving/v0003.u0012",
"sha256": ..., "reason": ..., "event_time_ms": ...}``; after a rollback (the guard) or
before the first update of a new champion it points at the champion itself
(``"version": "v0003", "dir": null``). Sub-versions never move ``champion.json``: the
champion changes only at window close, by the promotion rule. The model files of all
but the newest ``KEEP`` sub-versions are deleted; their ``update.json`` stays as the record.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from schemas.errors import RegistryError
from streams.common.storage import fsync_dir
from jobs import modelfile
from jobs.models import AnyModel
from jobs.registry import Registry, exclusive_lock, json_bytes, write_atomic

POINTER = "serving.json"
KEEP = 3
NO_CHAMPION = "v0000"  # the line before the first champion: a new model learning online
_SUB_RE = re.compile(r"^(v\d{4,})\.u(\d{4,})$")


def sub_version(champion: Optional[str], n: int) -> str:
    """``v0003.u0012``: update ``n`` of champion ``v0003``'s line (``v0000``: no champion yet)."""
    return f"{champion or NO_CHAMPION}.u{n:04d}"


class ServingStore:
    """Publishes and loads the serving model of one registry (see the module docstring)."""

    def __init__(self, root: str | Path, trusted_types: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.dir = self.root / "serving"
        self.trusted_types = tuple(trusted_types)

    def pointer(self) -> Optional[dict[str, Any]]:
        """The content of ``serving.json``, or None before anything was published."""
        try:
            return json.loads((self.root / POINTER).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise RegistryError(f"{self.root / POINTER}: unreadable serving pointer "
                                f"({e})") from None

    def sub_versions(self, champion: Optional[str] = None) -> list[str]:
        """Published sub-versions (of ``champion``'s line when given), oldest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _SUB_RE.match(p.name)
            if m and (p / "update.json").is_file() and (champion is None
                                                        or m.group(1) == champion):
                found.append((m.group(1), int(m.group(2)), p.name))
        return [name for *_, name in sorted(found)]

    def update_record(self, name: str) -> dict[str, Any]:
        """The ``update.json`` of a sub-version."""
        return json.loads((self.dir / name / "update.json").read_text())

    def publish(self, model: AnyModel, champion: Optional[str], facts: dict[str, Any]) -> str:
        """Store ``model`` as the next sub-version of ``champion``'s line and point
        ``serving.json`` at it; returns its name. RegistryError (nothing published) when
        the model holds untrusted types or skops cannot load it back."""
        data, digest = modelfile.encode(model, self.trusted_types)
        self.dir.mkdir(parents=True, exist_ok=True)
        base = champion or NO_CHAMPION
        n = max((int(_SUB_RE.match(s).group(2)) for s in self.sub_versions(base)), default=0) + 1
        name = sub_version(champion, n)
        record = {**facts, "version": name, "champion": champion, "update": n,
                  "sha256": digest}
        tmp = Path(tempfile.mkdtemp(prefix=".update.", dir=self.dir))
        try:
            (tmp / modelfile.MODEL_FILE).write_bytes(data)
            (tmp / modelfile.DIGEST_FILE).write_text(modelfile.digest_line(digest))
            (tmp / "update.json").write_bytes(json_bytes(record))
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            os.rename(tmp, self.dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(self.dir)
        self._point({"version": name, "champion": champion, "dir": f"serving/{name}",
                     "sha256": digest, "reason": facts.get("reason", "in-window update"),
                     "event_time_ms": facts.get("event_time_ms"),
                     "created_ms": facts.get("created_ms"),
                     "resume_offsets": facts.get("resume_offsets")})
        self.prune()
        return name

    def point_at_champion(self, champion: Optional[str], reason: str,
                          facts: Optional[dict[str, Any]] = None) -> None:
        """Serve the gated champion itself (a rollback, or a new champion's first moment)."""
        keep = ("event_time_ms", "created_ms", "resume_offsets", "guard")
        self._point({"version": champion, "champion": champion, "dir": None, "sha256": None,
                     "reason": reason, **{k: v for k, v in (facts or {}).items() if k in keep}})

    def _point(self, pointer: dict[str, Any]) -> None:
        write_atomic(self.root / POINTER, json_bytes(pointer))

    def load(self, registry: Optional[Registry] = None) -> tuple[Optional[str], Optional[AnyModel]]:
        """(name, model) of the serving model: the sub-version ``serving.json`` names,
        verified like a registry version, or the champion (None, None when there is none)."""
        reg = registry or Registry(self.root, self.trusted_types)
        ptr = self.pointer()
        if ptr is None or ptr.get("dir") is None:
            champion = ptr["champion"] if ptr else reg.champion()
            return (champion, reg.load(champion)) if champion else (None, None)
        where = self.root / ptr["dir"] / modelfile.MODEL_FILE
        try:
            data = where.read_bytes()
        except OSError as e:
            raise RegistryError(f"{where}: the serving model named by {POINTER} cannot be "
                                f"read ({e.strerror})") from None
        return ptr["version"], modelfile.decode(data, ptr["sha256"], self.trusted_types,
                                                str(where))

    def prune(self, keep: int = KEEP) -> None:
        """Delete the model files of all but the newest ``keep`` sub-versions (never the
        one ``serving.json`` names), and temp directories of crashed publishes."""
        current = (self.pointer() or {}).get("version")
        subs = self.sub_versions()
        by_age = sorted(subs, key=lambda s: (self.dir / s / "update.json").stat().st_mtime_ns)
        for name in by_age[:-keep] if keep else by_age:
            if name == current:
                continue
            for f in (modelfile.MODEL_FILE, modelfile.DIGEST_FILE):
                (self.dir / name / f).unlink(missing_ok=True)
        for p in self.dir.glob(".update.*"):
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def updater_lock(root: str | Path) -> Iterator[None]:
    """Hold ``<model.path>/serving/.lock``: one in-window updater per registry."""
    with exclusive_lock(Path(root) / "serving" / ".lock", "another in-window updater "
                        "holds {path}; run one per registry (one `dlabel jobs`)"):
        yield
