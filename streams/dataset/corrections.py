"""Corrections of closed windows: a new window version, atomically and idempotently.

A correction is a labeled example, for a window that is already closed, whose
``label_version`` is higher than the one the window holds for its request (or a request
the window does not hold yet: a sampled-out negative that became positive, a regression
request's first outcome). The sink commits corrections like any other rows, as staged
files of the window's directory (hidden, not ``.parquet``); the manifest's
``committed`` positions tell them from the leftovers of the close: a staged file from
offsets at or past those positions is a pending correction.

Applying them makes version ``n + 1`` of a window at version ``n``:

1. keep version ``n``: its data files as ``_versions/v000n/data-0000i.pq`` and its
   manifest as ``_versions/v000n/_manifest.json`` (each written once: a retry after a
   crash finds them, so they always hold version ``n``). ``_versions`` is hidden from
   pyarrow/pandas/Spark by its underscore, and ``.pq`` from the ``**/*.parquet`` globs of
   DuckDB and Polars; read an earlier version with ``pq.read_table(<that file>)``;
2. merge: version ``n``'s rows (read from the kept copies) with the corrections, each
   request once, at its highest ``label_version``;
3. rewrite the window's data files, each replaced atomically under its own name (a
   reader sees the old file or the new one, never both);
4. write manifest ``n + 1`` over the old one, with the sink's current positions;
5. remove the applied staged files.

With an Iceberg table (``dataset.iceberg``), every version is kept under ``_versions/``
as soon as it is written, not only once superseded (``keep_version``): the table
registers those immutable copies, so its older snapshots stay readable.

A crash anywhere and a restart give the same files: steps 2-4 are computed from the
kept copies and the same staged files, and staged files older than the manifest's
positions are removed by the next recovery.
"""
from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from schemas.dataset_schema import MANIFEST, parse_part_name
from streams.dataset.compaction import (conform, latest_per_request, read_staged,
                                        remove_staged, source_offsets, staged_files,
                                        write_data_files)
from streams.dataset.manifest import build_manifest, manifest_bytes, write_manifest

VERSIONS_DIR = "_versions"


def version_dir(dirname: str, version: int) -> str:
    """Where version ``version`` of a window is kept once a later one exists."""
    return f"{dirname}/{VERSIONS_DIR}/v{version:04d}"


def kept_name(data_file: str) -> str:
    """The name a data file is kept under in its version directory."""
    return data_file[: -len(".parquet")] + ".pq"


def keep_version(storage, dirname: str, files: list[dict[str, Any]], version: int,
                 manifest: dict[str, Any] | None = None) -> None:
    """Copy a window version's data files (and ``manifest``, if given) into its version
    directory, each only if it is not there yet (so a copy always holds that version)."""
    vdir = version_dir(dirname, version)
    kept = set(storage.list_dir(vdir))
    for f in files:
        if kept_name(f["path"]) not in kept:
            storage.write_atomic(f"{vdir}/{kept_name(f['path'])}",
                                 storage.read(f"{dirname}/{f['path']}"))
    if manifest is not None and MANIFEST not in kept:
        storage.write_atomic(f"{vdir}/{MANIFEST}", manifest_bytes(manifest))


def split_staged(storage, dirname: str, manifest: dict[str, Any],
                 committed: dict[int, int]) -> tuple[list[str], list[str], list[str]]:
    """A closed window's staged files as ``(leftovers, pending, uncommitted)``.

    Leftovers were compacted into the manifest (before its ``committed`` positions);
    pending corrections were committed by the sink since (before ``committed``); the
    rest belong to a commit a crash interrupted, which the sink will redo. A manifest
    without positions (written before corrections existed) has only leftovers.
    """
    at_manifest = manifest.get("committed")
    leftovers, pending, uncommitted = [], [], []
    for name in staged_files(storage, dirname):
        p, first, _ = parse_part_name(name)
        if at_manifest is None or first < at_manifest.get(str(p), 0):
            leftovers.append(name)
        elif first < committed.get(p, 0):
            pending.append(name)
        else:
            uncommitted.append(name)
    return leftovers, pending, uncommitted


def apply_corrections(storage, dirname: str, manifest: dict[str, Any], names: list[str],
                      config: PipelineConfig, schema: pa.Schema,
                      committed: dict[int, int]) -> dict[str, Any]:
    """Make the next version of a closed window from its pending staged ``names``
    (see the module docstring); return the new manifest."""
    version = manifest.get("version", 1)
    vdir = version_dir(dirname, version)
    keep_version(storage, dirname, manifest["files"], version, manifest)
    current = [conform(pq.read_table(io.BytesIO(storage.read(f"{vdir}/{kept_name(f['path'])}"))),
                       schema) for f in manifest["files"]]
    fixes = read_staged(storage, dirname, schema, names)
    merged = latest_per_request(pa.concat_tables(current + [fixes]))
    files, table = write_data_files(storage, dirname, merged,
                                    config.dataset.target_file_size)
    if config.dataset.iceberg is not None:
        keep_version(storage, dirname, files, version + 1)
    offsets = {k: list(v) for k, v in manifest["source_offsets"].items()}
    for key, (lo, hi) in source_offsets(names, config.topics.labeled).items():
        old = offsets.get(key, [lo, hi])
        offsets[key] = [min(old[0], lo), max(old[1], hi)]
    new = build_manifest(config, manifest["window_start_ms"], schema, files,
                         dict(sorted(offsets.items())), table, committed, version + 1)
    write_manifest(storage, dirname, new, replace=True)
    remove_staged(storage, dirname, names)
    return new
