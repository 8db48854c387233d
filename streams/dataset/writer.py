"""Labeled examples in, event-time-windowed Parquet files out; no Kafka in here.

The writer is fed the labeled topic record by record (partition, offset, value) and
keeps, per labeled partition, the range of offsets read since its last commit. Commit
state lives *in the dataset itself*, under ``_sink/`` (hidden from pyarrow, pandas, DuckDB
and Spark by its leading underscore), like Kafka Connect's HDFS sink: the Kafka
consumer-group offsets are committed too, but only for monitoring; a restart resumes
from ``_sink/``.

While a window is open its rows are committed as *staged* files, whose names say
exactly what was consumed to make them:
``window-<start>/.part-<partition>-<first offset>-<last offset>.staged``. See
``DatasetWriter.commit_partition`` for the protocol that makes a crash at any point and
a restart give the same files. At close the staged files are compacted into the
window's data files (``streams.dataset.compaction``), then the manifest is written.
With ``join.correction_window`` on, a newer ``label_version`` of a request in a closed
window is committed the same way, into the closed window's directory, and applied as a
new version of the window (``streams.dataset.corrections``).
"""
from __future__ import annotations

import io
import json
import logging
from collections import OrderedDict
from typing import Any, Callable, Optional

import pyarrow.parquet as pq

from schemas.config import PipelineConfig
from schemas.records import DeadLetter
from schemas.errors import DatasetError
from schemas.dataset_schema import (arrow_schema, examples_to_table, parse_part_name,
                                    parse_window_dir, part_name, window_dir)
from streams.dataset.compaction import (compact_window, data_files, parquet_bytes,
                                        remove_staged, source_offsets, staged_files)
from streams.dataset.corrections import apply_corrections, keep_version, split_staged
from streams.dataset.manifest import (build_manifest, manifest_exists, read_manifest,
                                      write_manifest)

log = logging.getLogger("dlabel.sink")

STATE_DIR = "_sink"
class DatasetWriter:
    """Buffers labeled examples per window and commits them as Parquet files."""

    def __init__(self, config: PipelineConfig, storage, clock: Callable[[], int],
                 closed_cache: int = 4) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.schema = arrow_schema(config)
        self.window_ms = config.dataset.window_ms
        self.positions: dict[int, int] = {}        # partition -> next offset to read
        self.committed: dict[int, int] = {}        # partition -> next offset in _sink/
        self.redo: dict[int, int] = {}             # partition -> last offset of an unfinished commit
        self.buffers: dict[int, dict[int, list[dict]]] = {}  # partition -> window -> rows
        self.buffered_rows = 0
        self.first_buffered_at: Optional[int] = None
        #: window -> {request id: label_version} (committed + buffered)
        self.open_ids: dict[int, dict[str, int]] = {}
        self.closed: set[int] = set()
        #: closed window -> {request id: label_version} (a few, most recent last)
        self._closed_ids: OrderedDict[int, dict[str, int]] = OrderedDict()
        self._closed_cache = closed_cache
        self.corrections_on = config.join.correction_window_ms > 0
        self.corrected: set[int] = set()  # closed windows with committed corrections
        self.counts = {"rows": 0, "duplicates": 0, "late": 0, "invalid": 0, "files": 0,
                       "windows_closed": 0, "corrections": 0, "window_versions": 0}

    # ------------------------------------------------------------------ recovery
    def recover(self, partitions: list[int]) -> dict[int, int]:
        """Load commit state from ``_sink/`` and the window directories.

        Returns the offset to resume from for each labeled partition.
        """
        for p in partitions:
            state = self._read_json(f"{STATE_DIR}/p{p:03d}.json") or {}
            self.committed[p] = self.positions[p] = int(state.get("next", 0))
            intent = self._read_json(f"{STATE_DIR}/p{p:03d}.intent.json")
            if intent and int(intent["first"]) >= self.committed[p]:
                if int(intent["first"]) != self.committed[p]:
                    raise DatasetError(
                        f"the sink state of partition {p} under {self.storage.uri(STATE_DIR)} "
                        f"is inconsistent: intent {intent} vs next {self.committed[p]}; it "
                        "was changed outside dlabel, or two sinks wrote this dataset: stop "
                        "every sink of dataset.path and restore that directory from a backup")
                self.redo[p] = int(intent["last"])
        self._remove_temp_files(STATE_DIR)
        for name in self.storage.list_dir():
            start = parse_window_dir(name)
            if start is None:
                continue
            self._remove_temp_files(name)
            manifest = (read_manifest(self.storage, name)
                        if manifest_exists(self.storage, name) else None)
            if manifest is not None:
                self.closed.add(start)
                leftovers, pending, _ = split_staged(self.storage, name, manifest,
                                                     self.committed)
                remove_staged(self.storage, name, leftovers)  # a crash came before
                if pending:
                    self.corrected.add(start)
            else:
                self.open_ids[start] = self._committed_ids(name)
        if self.redo:
            log.info("sink: finishing interrupted commits %s", self.redo)
        return dict(self.positions)

    def _remove_temp_files(self, dirname: str) -> None:
        """Hidden temp files of writes a crash interrupted (never visible to readers)."""
        for name in self.storage.list_dir(dirname):
            if name.startswith(".") and ".tmp-" in name:
                self.storage.remove(f"{dirname}/{name}")

    def _committed_ids(self, dirname: str) -> dict[str, int]:
        """``{request id: label_version}`` of the committed files of a window (files of
        an unfinished commit are left out: the commit is redone and rewrites them)."""
        return self._versions_in(dirname, self._committed_staged(dirname))

    def _committed_staged(self, dirname: str) -> list[str]:
        """A window's staged files from committed offsets (not an interrupted commit's)."""
        return [name for name in staged_files(self.storage, dirname)
                if parse_part_name(name)[1] < self.committed.get(parse_part_name(name)[0], 0)]

    def _versions_in(self, dirname: str, names: list[str]) -> dict[str, int]:
        """``{request id: highest label_version}`` in some files of a window."""
        ids: dict[str, int] = {}
        for name in names:
            parquet = pq.ParquetFile(io.BytesIO(self.storage.read(f"{dirname}/{name}")))
            columns = [c for c in ("request_id", "label_version")
                       if c in parquet.schema_arrow.names]  # not the features
            table = parquet.read(columns=columns)
            versions = (table.column("label_version").to_pylist()
                        if "label_version" in columns else [1] * table.num_rows)
            for rid, v in zip(table.column("request_id").to_pylist(), versions):
                ids[rid] = max(ids.get(rid, 1), v or 1)
        return ids

    def _read_json(self, rel: str) -> Optional[dict]:
        raw = self.storage.read(rel)
        return json.loads(raw) if raw else None

    # ------------------------------------------------------------------ input
    def add(self, partition: int, offset: int, value: bytes) -> Optional[DeadLetter]:
        """Take one record of the labeled topic; a rejected record is returned."""
        redo = self.redo.get(partition)
        if redo is not None and offset > redo:  # the interrupted range ended in a gap
            self.positions[partition] = redo + 1
            self.commit_partition(partition)
        self.positions[partition] = offset + 1
        rejected = self._take(partition, offset, value)
        if self.redo.get(partition) == offset:
            self.commit_partition(partition)
        return rejected

    def _take(self, partition: int, offset: int, value: bytes) -> Optional[DeadLetter]:
        try:
            example = json.loads(value)
            rid, ts = example["request_id"], int(example["request_ts"])
        except (ValueError, TypeError, KeyError) as e:
            self.counts["invalid"] += 1
            return DeadLetter("malformed_json", f"not a labeled example: {e}",
                              self.config.topics.labeled, partition, offset, value)
        window = ts - ts % self.window_ms
        if window in self.closed:
            versions = self._ids_of_closed(window)
            have, version = versions.get(rid), example.get("label_version") or 1
            if have is not None and have >= version:
                self.counts["duplicates"] += 1
                return None
            if not self.corrections_on:
                self.counts["late"] += 1
                return DeadLetter("late", f"window {window_dir(window)} is already closed",
                                  self.config.topics.labeled, partition, offset, value)
            versions[rid] = version  # a correction: committed into the closed window
            self.counts["corrections"] += 1
            self._buffer(partition, window, example)
            return None
        ids = self.open_ids.setdefault(window, {})
        version = example.get("label_version") or 1
        have = ids.get(rid)
        if have is not None and have >= version:  # at-least-once upstream: a copy
            self.counts["duplicates"] += 1
            return None
        if have is not None:  # corrected before its window closed: compaction keeps it
            self.counts["corrections"] += 1
        ids[rid] = version
        self._buffer(partition, window, example)
        return None

    def _buffer(self, partition: int, window: int, example: dict) -> None:
        self.buffers.setdefault(partition, {}).setdefault(window, []).append(example)
        self.buffered_rows += 1
        if self.first_buffered_at is None:
            self.first_buffered_at = self.clock()

    def _ids_of_closed(self, window: int) -> dict[str, int]:
        """``{request id: label_version}`` of a closed window: its data files and its
        committed, not yet applied corrections."""
        ids = self._closed_ids.get(window)
        if ids is None:
            name = window_dir(window)
            # the data files and the committed corrections not applied yet (staged
            # files of an interrupted commit are rewritten by its redo: not counted)
            ids = self._versions_in(name, data_files(self.storage, name)
                                    + self._committed_staged(name))
            self._closed_ids[window] = ids
            while len(self._closed_ids) > self._closed_cache:
                self._closed_ids.popitem(last=False)
        self._closed_ids.move_to_end(window)
        return ids

    # ------------------------------------------------------------------ commits
    def due(self) -> bool:
        """True when the buffers should be committed (size or age)."""
        if self.buffered_rows >= self.config.dataset.flush_rows:
            return True
        return (self.first_buffered_at is not None and
                self.clock() - self.first_buffered_at >= self.config.dataset.flush_interval_ms)

    def commit_all(self) -> None:
        """Commit every partition read past its last commit (except unfinished redos)."""
        for p in sorted(self.positions):
            if p not in self.redo and self.positions[p] > self.committed.get(p, 0):
                self.commit_partition(p)
        if not any(self.buffers.values()):
            self.buffered_rows, self.first_buffered_at = 0, None

    def commit_partition(self, partition: int) -> None:
        """Commit what was read from ``partition``: the one function that writes data.

        Protocol, for offsets ``first..last`` read since the previous commit:

        1. write ``_sink/p<partition>.intent.json`` = ``{first, last}`` (atomically);
        2. for each window with rows from that range, write
           ``window-<w>/.part-<partition>-<first>-<last>.staged`` atomically
           (hidden temp name, fsync, rename; one PUT on S3);
        3. write ``_sink/p<partition>.json`` = ``{"next": last + 1}`` (atomically).

        The caller commits the consumer-group offset afterwards, for monitoring only.
        If a write fails, nothing in memory changed: the caller must retry this commit
        before reading more of the partition (a longer range would get another name).
        A crash before 1 re-reads the range on restart, and may cut it differently, but
        nothing of it was visible. A crash after 1 and before 3 leaves an intent: the
        restart re-reads from ``first`` and commits again exactly at ``last``, which
        rewrites the same files with the same rows (deduplication only counts files
        committed before ``first``). Files are only ever replaced by identical ones.
        """
        first, last = self.committed.get(partition, 0), self.positions[partition] - 1
        if last < first:
            return
        windows = self.buffers.get(partition, {})
        prefix = f"{STATE_DIR}/p{partition:03d}"
        # Nothing in memory changes until the checkpoint is written: after an error
        # (disk full, unwritable path) the caller retries the very same commit.
        self.storage.write_atomic(f"{prefix}.intent.json", _json({"first": first, "last": last}))
        for window, rows in sorted(windows.items()):
            table = examples_to_table(rows, self.schema)
            self.storage.write_atomic(f"{window_dir(window)}/{part_name(partition, first, last)}",
                                      parquet_bytes(table))
        self.storage.write_atomic(f"{prefix}.json", _json({"next": last + 1}))
        self.buffers.pop(partition, None)
        self.corrected.update(w for w in windows if w in self.closed)
        for rows in windows.values():
            self.counts["rows"] += len(rows)
            self.counts["files"] += 1
            self.buffered_rows -= len(rows)
        self.committed[partition] = last + 1
        self.redo.pop(partition, None)
        if self.buffered_rows <= 0:
            self.buffered_rows, self.first_buffered_at = 0, None

    # ------------------------------------------------------------------ windows
    def ready_windows(self, closed_time: Optional[int]) -> list[int]:
        """Open windows the join's closed time has passed (``end + label_window``)."""
        if closed_time is None or self.redo:
            return []
        lw = self.config.join.label_window_ms
        return sorted(w for w in self.open_ids if w + self.window_ms + lw <= closed_time)

    def close(self, window: int, topic: str) -> dict[str, Any]:
        """Close a ready window (after ``commit_all``): compact its staged files into its
        data files, write its manifest, remove the staged files; return the manifest.

        Idempotent at every step (see ``streams.dataset.compaction``).
        """
        if any(window in b for b in self.buffers.values()):
            raise RuntimeError(f"window {window_dir(window)} still has uncommitted rows")
        name = window_dir(window)
        manifest = read_manifest(self.storage, name)
        if manifest is None:
            offsets = source_offsets(staged_files(self.storage, name), topic)
            files, rows = compact_window(self.storage, name, self.schema,
                                         self.config.dataset.target_file_size)
            if self.corrections_on and self.config.dataset.iceberg is not None:
                keep_version(self.storage, name, files, 1)  # what the table registers
            manifest = build_manifest(self.config, window, self.schema, files, offsets, rows,
                                      committed=self.committed)
            write_manifest(self.storage, name, manifest)
        remove_staged(self.storage, name)
        self.closed.add(window)
        self._closed_ids[window] = self.open_ids.pop(window)
        while len(self._closed_ids) > self._closed_cache:
            self._closed_ids.popitem(last=False)
        self.counts["windows_closed"] += 1
        return manifest


    def corrected_windows(self) -> list[int]:
        """Closed windows with committed corrections to apply (none while a commit a
        crash interrupted is being redone)."""
        return [] if self.redo else sorted(self.corrected)

    def apply_corrections(self, window: int) -> Optional[dict[str, Any]]:
        """Apply a closed window's committed corrections as its next version; return the
        new manifest (None: nothing was pending)."""
        name = window_dir(window)
        manifest = read_manifest(self.storage, name)
        _, pending, _ = split_staged(self.storage, name, manifest, self.committed)
        if pending:
            manifest = apply_corrections(self.storage, name, manifest, pending, self.config,
                                         self.schema, dict(self.committed))
        self.corrected.discard(window)  # after success: a storage error retries it
        if not pending:
            return None
        self._closed_ids.pop(window, None)
        self.counts["window_versions"] += 1
        return manifest


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
