"""Closed dataset windows committed to an Apache Iceberg table, one snapshot per window.

DESIGN.md "Dataset layout", ``dataset.iceberg``. Choices:

* **Files are registered, not copied** (``add_files``). The table and the dataset are
  the same bytes and can't disagree. A commit writes only metadata (no copy under the
  warehouse, no storage used twice), so a crash mid-commit leaves only stray metadata.
  The files are written by pyarrow and have no Iceberg field ids. ``add_files`` stores
  the table's name mapping (``schema.name-mapping.default``) and readers resolve columns
  by name, as the spec says for such files (pyiceberg and Polars, tested). Times stay
  ``timestamp[ms, UTC]`` in the files and read as the table's microsecond
  ``timestamptz``. The cost is shared ownership: don't delete or rewrite rows through
  Iceberg (``rewrite_data_files``, deletes), and don't move window directories. The
  catalog's FileIO must be able to read ``dataset.path``.
* **Partitioning: identity on ``window_start``** (``timestamptz``). All of a window's rows
  have the same ``window_start``, so each window is exactly one partition value for any
  ``dataset.window``. ``hour`` would merge 10-minute windows and ``day`` would merge 24
  hourly ones. ``add_files`` reads the value from each file's min/max stats.
* **Exactly once**: each snapshot's summary records ``dlabel.window_start``. A window is
  not committed again if it is in the snapshot history, or if its files are already in
  the current table (for when history has been expired); ``commit_window`` then returns
  False. After a conflicting concurrent commit, dlabel refreshes and checks again.
  pyiceberg's own blind retry is turned off.
* **Window versions** (``join.correction_window``): a window corrected to version n is
  one more snapshot, which drops the window's files and adds version n's, and records
  ``dlabel.window_version``. So that every snapshot stays readable, the table then
  registers the immutable copies under ``_versions/v000n/`` (``window_version_uris``),
  not the data files, which a correction replaces in place for the default readers.
* **Schema**: made from the dataset's Arrow schema. New nullable columns (a feature
  added to the config) are added with ``union_by_name``. A removed or retyped column is a
  ``ConfigError``: start a new table, as for the dataset path.
"""
from __future__ import annotations

import json
from typing import Any, Optional

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import (CommitFailedException, NoSuchTableError,
                                  TableAlreadyExistsError, ValidationError)
from pyiceberg.expressions import EqualTo
from pyiceberg.table import Table

from schemas.dataset_schema import window_dir
from schemas.errors import CommitError, ConfigError, DatasetError
from streams.dataset.corrections import kept_name, version_dir

PARTITION_COLUMN = "window_start"
#: Snapshot-summary keys (and the table property naming the owning pipeline).
PIPELINE, WINDOW_START, WINDOW_END, ROWS, SOURCE_OFFSETS, WINDOW_VERSION = (
    "dlabel.pipeline", "dlabel.window_start", "dlabel.window_end", "dlabel.rows",
    "dlabel.source_offsets", "dlabel.window_version")
COMMIT_ATTEMPTS = 5
#: pyiceberg 0.12 retries a conflicting append by re-applying it to the new table state,
#: without the window check, so a window could be committed twice. dlabel retries instead.
TABLE_PROPERTIES = {"commit.retry.num-retries": "0"}


def window_file_uris(storage, manifest: dict[str, Any]) -> list[str]:
    """The full paths/URIs of a closed window's data files, in manifest order."""
    name = window_dir(manifest["window_start_ms"])
    return [storage.uri(f"{name}/{f['path']}") for f in manifest["files"]]


def window_version_uris(storage, manifest: dict[str, Any]) -> list[str]:
    """The immutable copies of a window version's data files (``_versions/v000n/``), in
    manifest order: what the table registers when corrections are on."""
    vdir = version_dir(window_dir(manifest["window_start_ms"]), manifest.get("version", 1))
    return [storage.uri(f"{vdir}/{kept_name(f['path'])}") for f in manifest["files"]]


def _uri(path: str) -> str:
    """A local absolute path as a ``file://`` URI (what Iceberg metadata should hold)."""
    return f"file://{path}" if path.startswith("/") else path


class IcebergWindows:
    """The Iceberg table a pipeline's closed windows are committed to.

    ``table`` is ``namespace.table``. ``catalog`` holds pyiceberg catalog properties (sql,
    rest, glue, hive...). ``schema`` is the dataset's Arrow schema
    (``schemas.dataset_schema.arrow_schema(config)``).
    """

    def __init__(self, table: str, catalog: dict[str, Any], schema: pa.Schema,
                 pipeline: str) -> None:
        namespace, _, name = table.rpartition(".")
        if not namespace or not name:
            raise ConfigError(f"dataset.iceberg.table: {table!r} is not namespace.table; "
                              "write e.g. labels.ctr")
        self.identifier, self.namespace = table, namespace
        self.catalog_properties = dict(catalog)
        self.schema, self.pipeline = schema, pipeline
        self._catalog: Optional[Catalog] = None
        self._table: Optional[Table] = None

    @property
    def catalog(self) -> Catalog:
        """The pyiceberg catalog, loaded on first use."""
        if self._catalog is None:
            try:
                self._catalog = load_catalog("dlabel", **self.catalog_properties)
            except ValueError as e:
                raise ConfigError(f"dataset.iceberg.catalog: {e}") from e
        return self._catalog

    def ensure_table(self) -> Table:
        """Load the table, creating its namespace and itself if missing (partitioned by
        identity on ``window_start``). Add the schema's new nullable columns to the
        table; never drop or retype a column."""
        self.catalog.create_namespace_if_not_exists(self.namespace)
        try:
            table = self.catalog.load_table(self.identifier)
        except NoSuchTableError:
            try:
                tx = self.catalog.create_table_transaction(
                    self.identifier, schema=self.schema,
                    properties={PIPELINE: self.pipeline, **TABLE_PROPERTIES})
                with tx.update_spec() as spec:
                    spec.add_identity(PARTITION_COLUMN)
                tx.commit_transaction()
            except TableAlreadyExistsError:
                pass  # created concurrently
            table = self.catalog.load_table(self.identifier)
        owner = table.properties.get(PIPELINE)
        if owner not in (None, self.pipeline):
            raise ConfigError(f"dataset.iceberg.table: {self.identifier} holds pipeline "
                              f"{owner!r}'s windows, not {self.pipeline!r}'s; use another table")
        wanted = {PIPELINE: self.pipeline, **TABLE_PROPERTIES}
        if any(table.properties.get(k) != v for k, v in wanted.items()):
            with table.transaction() as tx:
                tx.set_properties(wanted)
        self._evolve(table)
        self._table = table
        return table

    def _evolve(self, table: Table) -> None:
        have = {f.name for f in table.schema().fields}
        if removed := sorted(have - set(self.schema.names)):
            raise ConfigError(f"dataset.iceberg.table: {self.identifier} has columns {removed} "
                              "that the dataset no longer has; removing a feature is not "
                              "supported in place: use a new table")
        if required := [f.name for f in self.schema if f.name not in have and not f.nullable]:
            raise ConfigError(f"dataset.iceberg.table: cannot add required columns {required} "
                              f"to {self.identifier}")
        try:
            with table.update_schema() as update:
                update.union_by_name(self.schema)
        except (ValidationError, ValueError) as e:
            raise ConfigError(f"dataset.iceberg.table: {self.identifier} does not take the "
                              f"dataset's schema ({e}); retyping a feature is not supported "
                              "in place: use a new table") from e

    def commit_window(self, manifest: dict[str, Any], data_file_uris: list[str]) -> bool:
        """Commit one closed window (its ``build_manifest`` manifest, and the full URIs of
        ``manifest["files"]`` in the same order) as ONE snapshot whose summary records the
        window. Return False, committing nothing, if the window is already in the table
        (at this version). A version after the first replaces the window's files."""
        files = manifest["files"]
        if len(files) != len(data_file_uris):
            raise DatasetError(f"window {manifest['window_start']}: {len(data_file_uris)} "
                               f"file URIs for the manifest's {len(files)} files")
        # an empty window's only file has no rows (and no stats): a snapshot without files
        uris = [_uri(u) for u, f in zip(data_file_uris, files) if f["rows"]]
        summary = {PIPELINE: self.pipeline, WINDOW_START: manifest["window_start"],
                   WINDOW_END: manifest["window_end"], ROWS: str(manifest["rows"]),
                   SOURCE_OFFSETS: json.dumps(manifest["source_offsets"], sort_keys=True,
                                              separators=(",", ":"))}
        version = manifest.get("version", 1)
        if version > 1:
            summary[WINDOW_VERSION] = str(version)
        table = self._table or self.ensure_table()
        for _ in range(COMMIT_ATTEMPTS):
            table.refresh()
            if (manifest["window_start"], version) in _versions(table):
                return False
            if version > 1:
                if self._replace(table, manifest, uris, summary):
                    return True
                continue
            referenced = _referenced(table, manifest["window_start_ms"], uris)
            if referenced and referenced == set(uris):
                return False  # committed under a snapshot since expired
            if referenced:
                raise CommitError(f"window {manifest['window_start']}: {self.identifier} "
                                  f"already holds some of its files: {sorted(referenced)}")
            try:
                with table.transaction() as tx:
                    tx.add_files(uris, snapshot_properties=summary, check_duplicate_files=False)
                return True
            except CommitFailedException:
                continue  # another writer committed first: look again
            except FileNotFoundError as e:
                raise DatasetError(f"window {manifest['window_start']}: {e}") from e
            except ValueError as e:
                raise CommitError(f"window {manifest['window_start']} cannot be added to "
                                  f"{self.identifier}: {e}") from e
        raise CommitError(f"window {manifest['window_start']}: {self.identifier} kept changing "
                          f"under {COMMIT_ATTEMPTS} commit attempts")

    def _replace(self, table: Table, manifest: dict[str, Any], uris: list[str],
                 summary: dict[str, str]) -> bool:
        """A new version of a committed window: drop its files, add the new ones, in one
        transaction. False when another writer committed first."""
        try:
            with table.transaction() as tx:
                tx.delete(EqualTo(PARTITION_COLUMN, manifest["window_start_ms"] * 1000),
                          snapshot_properties=summary)
                if uris:
                    tx.add_files(uris, snapshot_properties=summary,
                                 check_duplicate_files=False)
            return True
        except CommitFailedException:
            return False
        except (FileNotFoundError, ValueError) as e:
            raise CommitError(f"window {manifest['window_start']} version "
                              f"{manifest.get('version')} cannot replace its files in "
                              f"{self.identifier}: {e}") from e

    def windows_committed(self) -> set[str]:
        """The ``window_start`` (ISO) of every window in the table's snapshot history
        (empty if the table does not exist yet)."""
        if self._table is None:
            try:
                self._table = self.catalog.load_table(self.identifier)
            except NoSuchTableError:
                return set()
        self._table.refresh()
        return _windows(self._table)


def _windows(table: Table) -> set[str]:
    return {w for w, _ in _versions(table)}


def _versions(table: Table) -> set[tuple[str, int]]:
    """``(window_start, version)`` of every window version in the snapshot history."""
    out = set()
    for s in table.metadata.snapshots:
        if s.summary is not None and s.summary[WINDOW_START]:
            out.add((s.summary[WINDOW_START], int(s.summary[WINDOW_VERSION] or 1)))
    return out


def _referenced(table: Table, window_start_ms: int, uris: list[str]) -> set[str]:
    """Which of ``uris`` the current snapshot references, reading only the manifests
    whose partition range holds the window (not the whole table)."""
    if not uris or table.current_snapshot() is None:
        return set()
    tasks = table.scan(row_filter=EqualTo(PARTITION_COLUMN, window_start_ms * 1000)).plan_files()
    return {t.file.file_path for t in tasks} & set(uris)
