"""The Arrow schema of a labeled dataset, and the names of its window directories.

One schema comes from the config: the base columns of DESIGN.md, then one typed column
per kept feature. A window whose feature is null on every row still has the column, with
its declared type. Adding a feature to the config adds a nullable column at the end, so
older windows read together with newer ones through ``pyarrow.dataset`` schema
unification (see ``read_dataset``).
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Iterable

import pyarrow as pa

from schemas.config import PipelineConfig
from schemas.errors import DatasetError

TS = pa.timestamp("ms", tz="UTC")
FEATURE_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(),
                 "bool": pa.bool_()}
#: A window directory is ``window-2026-11-27T10-00-00Z``: not ``key=value``, so that no
#: reader's hive partitioning turns its name into a string column shadowing the file's
#: ``window_start`` timestamp (pandas raised on the merge, DuckDB read a VARCHAR).
WINDOW_DIR_PREFIX = "window-"
#: The first layout's prefix, still recognised when listing an older dataset.
LEGACY_WINDOW_DIR_PREFIX = "window_start="
#: A window's manifest file name (written last: the window is committed once it exists).
MANIFEST = "_manifest.json"
#: The manifest format this dlabel writes and reads.
MANIFEST_FORMAT = 1
#: The keys the dataset's listing relies on (``parse_manifest``'s default).
MANIFEST_KEYS = ("format", "pipeline", "window_start", "window_end", "files", "rows",
                 "positives")
_DIR_FORMAT = "%Y-%m-%dT%H-%M-%SZ"
_DIR_RE = re.compile(r"^(?:window-|window_start=)(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)$")


def arrow_schema(config: PipelineConfig) -> pa.Schema:
    """The dataset's Arrow schema for ``config`` (base columns, then features in order)."""
    label = pa.int64() if config.label.kind == "binary" else pa.float64()
    fields = [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("request_ts", TS, nullable=False),
        pa.field("window_start", TS, nullable=False),
        pa.field("label", label, nullable=False),
        pa.field("label_ts", TS, nullable=False),
        pa.field("prediction", pa.float64()),
        pa.field("model_version", pa.string()),
        pa.field("label_delay_ms", pa.int64()),
        pa.field("label_version", pa.int64()),
        pa.field("sample_weight", pa.float64()),
    ]
    for f in config.kept_features:
        # hashed PII is a hex digest, whatever the declared type
        fields.append(pa.field(f.name, pa.string() if f.pii == "hash" else FEATURE_TYPES[f.type]))
    return pa.schema(fields, metadata=_PANDAS_METADATA)


# pandas reads an int64 column with nulls as float64 unless the file says it is a
# nullable Int64 (pyarrow honours this part of the pandas metadata on its own).
_PANDAS_METADATA = {b"pandas": json.dumps({
    "index_columns": [], "column_indexes": [], "columns": [
        {"name": "label_delay_ms", "field_name": "label_delay_ms", "pandas_type": "int64",
         "numpy_type": "Int64", "metadata": None}]}).encode()}


def examples_to_table(examples: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """A table of labeled examples (dicts as published on the labeled topic)."""
    columns = {name: [e.get(name) for e in examples] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)


def iso_utc(ms: int) -> str:
    """``2026-11-27T10:00:00Z`` for an epoch-ms time (second precision)."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def window_dir(start_ms: int) -> str:
    """The directory name of the window starting at ``start_ms``."""
    dt = datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc)
    return WINDOW_DIR_PREFIX + dt.strftime(_DIR_FORMAT)


def parse_window_dir(name: str) -> int | None:
    """The start (ms) of a window directory name, or None if ``name`` is not one."""
    m = _DIR_RE.match(name)
    if not m:
        return None
    dt = datetime.strptime(m.group(1), _DIR_FORMAT).replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def parse_window_arg(text: str) -> int:
    """A window start given by a user: ISO-8601 with a zone, a directory name, or epoch ms."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    from_dir = parse_window_dir(
        text if text.startswith((WINDOW_DIR_PREFIX, LEGACY_WINDOW_DIR_PREFIX))
        else WINDOW_DIR_PREFIX + text)
    if from_dir is not None:
        return from_dir
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        dt = None
    if dt is None or dt.tzinfo is None:
        raise ValueError(f"window {text!r} is not a zoned time; write e.g. 2026-11-27T10:00:00Z")
    return int(dt.timestamp() * 1000)


def unify(schemas: Iterable[pa.Schema]) -> pa.Schema:
    """One schema for windows written under different configs (new features are added)."""
    return pa.unify_schemas(list(schemas), promote_options="default")


_PART_RE = re.compile(r"^\.part-(\d{3,})-(\d{12,})-(\d{12,})\.staged$")
_DATA_RE = re.compile(r"^data-(\d{5,})\.parquet$")


def part_name(partition: int, first: int, last: int) -> str:
    """The deterministic name of the staged file made from offsets ``first..last`` of a
    labeled partition: hidden, and without the ``.parquet`` suffix, so that no reader's
    listing or glob sees an open window's rows (see ``streams.dataset.compaction``)."""
    return f".part-{partition:03d}-{first:012d}-{last:012d}.staged"


def parse_part_name(name: str) -> tuple[int, int, int] | None:
    """``(partition, first, last)`` of a staged file name, or None."""
    m = _PART_RE.match(name)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def data_file_name(index: int) -> str:
    """The name of a closed window's ``index``-th data file."""
    return f"data-{index:05d}.parquet"


def parse_data_file_name(name: str) -> int | None:
    """The index of a closed window's data file name, or None."""
    m = _DATA_RE.match(name)
    return int(m.group(1)) if m else None


def parse_manifest(raw: bytes, where: str, keys: Iterable[str] = MANIFEST_KEYS
                   ) -> dict[str, Any]:
    """The manifest read from ``where`` (its path or URI, for errors).

    Raises DatasetError naming it when it is not a JSON object with ``keys`` (those its
    reader relies on) in ``MANIFEST_FORMAT``: the sink writes manifests atomically, so
    it was changed outside dlabel (or by a newer one).
    """
    fix = ("the dataset sink writes it atomically, so it was changed outside dlabel: "
           "restore it from a backup, or move the window's directory out of dataset.path")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise DatasetError(f"manifest {where} is not valid JSON ({str(e)[:120]}); {fix}"
                           ) from None
    missing = ([k for k in keys if k not in data] if isinstance(data, dict) else list(keys))
    if missing:
        raise DatasetError(f"manifest {where} lacks {', '.join(missing)}; {fix}")
    if data["format"] != MANIFEST_FORMAT:
        raise DatasetError(f"manifest {where}: format {data['format']!r} is not supported "
                           f"(this dlabel reads format {MANIFEST_FORMAT}); read it with the "
                           "dlabel that wrote it")
    return data
