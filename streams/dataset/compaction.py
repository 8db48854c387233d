"""Compaction at close: a window's staged files become its data files.

While a window is open, the sink commits its rows as *staged* files
(``.part-<partition>-<first>-<last>.staged``: a hidden name without the ``.parquet``
suffix, so no reader's default listing or ``**/*.parquet`` glob sees them). When the
window closes, its staged rows are rewritten, sorted by request time and id, into
``data-00000.parquet``, ``data-00001.parquet``... of at most about
``dataset.target_file_size`` each (Arrow's in-memory size of the rows, an upper bound of
the compressed file), then the manifest is written, then the staged files are removed.
Readers therefore see a window's rows only once it is complete, and never both the
small files and the compacted ones.

Every step is idempotent: the same staged files give byte-identical data files (a
crash between the data files and the manifest rewrites them), data files left from an
earlier attempt under another target size are removed before the manifest, and staged
files left after the manifest are removed by the next recovery.
"""
from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.dataset_schema import data_file_name, parse_data_file_name, parse_part_name


def staged_files(storage, dirname: str) -> list[str]:
    """The staged files of a window directory, in name order."""
    return sorted(n for n in storage.list_dir(dirname) if parse_part_name(n) is not None)


def data_files(storage, dirname: str) -> list[str]:
    """The (compacted) data files of a window directory, in name order."""
    return sorted(n for n in storage.list_dir(dirname) if parse_data_file_name(n) is not None)


def source_offsets(names: list[str], labeled_topic: str) -> dict[str, list[int]]:
    """``{"<labeled topic>:<partition>": [first, last]}`` covered by staged files."""
    offsets: dict[str, tuple[int, int]] = {}
    for name in names:
        p, first, last = parse_part_name(name)
        key = f"{labeled_topic}:{p}"
        lo, hi = offsets.get(key, (first, last))
        offsets[key] = (min(lo, first), max(hi, last))
    return {k: list(v) for k, v in sorted(offsets.items())}


def compact_window(storage, dirname: str, schema: pa.Schema,
                   target_file_size: int) -> tuple[list[dict[str, Any]], pa.Table]:
    """Write the window's data files from its staged files; ``([{"path", "rows"}], rows)``.

    Each request once, at its highest ``label_version`` (a label corrected while its
    window was open is in the staged files twice). Data files of an earlier attempt
    that the result does not name are removed.
    """
    return write_data_files(storage, dirname,
                            latest_per_request(read_staged(storage, dirname, schema)),
                            target_file_size)


def latest_per_request(table: pa.Table) -> pa.Table:
    """Each request once, its row with the highest ``label_version`` (the first of
    equals, so list the current rows before their corrections)."""
    if not table.num_rows or (pc.max(table.column("label_version")).as_py() or 1) <= 1:
        return table  # no corrections: the writer already kept each request once
    ids = table.column("request_id").to_pylist()
    versions = pc.fill_null(table.column("label_version"), 1).to_pylist()
    best: dict[str, int] = {}
    for i, (rid, v) in enumerate(zip(ids, versions)):
        j = best.get(rid)
        if j is None or v > versions[j]:
            best[rid] = i
    if len(best) == table.num_rows:
        return table
    return table.take(sorted(best.values()))


def read_staged(storage, dirname: str, schema: pa.Schema,
                names: list[str] | None = None) -> pa.Table:
    """The rows of a window's staged files (``names``, default all), cast to ``schema``."""
    tables = [pq.read_table(io.BytesIO(storage.read(f"{dirname}/{name}")))
              for name in (staged_files(storage, dirname) if names is None else names)]
    return pa.concat_tables([conform(t, schema) for t in tables]) if tables \
        else schema.empty_table()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: absent ones (written before a column
    was added) are null."""
    if table.schema.names != schema.names:
        table = pa.table({f.name: table.column(f.name) if f.name in table.schema.names
                          else pa.nulls(table.num_rows, f.type) for f in schema}, schema=schema)
    return table.cast(schema)


def write_data_files(storage, dirname: str, table: pa.Table,
                     target_file_size: int) -> tuple[list[dict[str, Any]], pa.Table]:
    """Write ``table``, sorted by request time and id, as the window's data files of
    about ``target_file_size`` each (atomically, each replacing the file of its name);
    remove data files the result does not name. ``([{"path", "rows"}], sorted rows)``."""
    if table.num_rows:
        table = table.sort_by([("request_ts", "ascending"), ("request_id", "ascending")])
    per_file = max(1, target_file_size * max(1, table.num_rows) // max(1, table.nbytes))
    files = []
    for i, start in enumerate(range(0, max(1, table.num_rows), per_file)):
        chunk = table.slice(start, per_file)
        name = data_file_name(i)
        storage.write_atomic(f"{dirname}/{name}", parquet_bytes(chunk))
        files.append({"path": name, "rows": chunk.num_rows})
    keep = {f["path"] for f in files}
    for name in data_files(storage, dirname):
        if name not in keep:
            storage.remove(f"{dirname}/{name}")
    return files, table


def remove_staged(storage, dirname: str, names: list[str] | None = None) -> None:
    """Remove a closed window's staged files (``names``, default all): its data files
    and manifest are written."""
    for name in staged_files(storage, dirname) if names is None else names:
        storage.remove(f"{dirname}/{name}")


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as one zstd-compressed Parquet file."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue().to_pybytes()
