"""Corrections in the dataset: a closed window gets a new version, atomically.

Pure logic on a local directory, records fed as the sink reads them. Phase 1 labels
three windows and closes them; phase 2 brings corrections (a higher ``label_version``
of some requests, repeated as an at-least-once upstream would, and a request the
window did not hold: a sampled-out negative that became positive). A crash at every
write of both phases, then a restart, must give the same current files as an
uninterrupted run, and the version kept under ``_versions/v0001`` must be the window as
it closed.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from streams.common.storage import LocalStorage
from streams.dataset.manifest import list_windows, read_manifest
from streams.dataset.writer import DatasetWriter
from tests.test_dataset_writer import MIN, T0, Crash, CrashingStorage
from tests.test_dataset_writer import run as run_phases

HOUR = 60 * MIN


def record(rid: str, ts: int, label: int, version: int = 1, weight: float = 1.0) -> bytes:
    return json.dumps({"request_id": rid, "request_ts": ts, "window_start": ts - ts % (10 * MIN),
                       "label": label, "label_ts": ts + (1000 if label else 30 * MIN),
                       "prediction": 0.5, "model_version": "m1",
                       "label_delay_ms": 1000 * version if label else None,
                       "label_version": version, "sample_weight": weight, "hour": 10,
                       "category": "shoes", "price": 9.5, "user_email": None}).encode()


@pytest.fixture
def config(make_config, tmp_path):
    cfg = make_config("ctr", partitions=2)
    return dataclasses.replace(
        cfg, join=dataclasses.replace(cfg.join, correction_window_ms=24 * HOUR),
        dataset=dataclasses.replace(cfg.dataset, path=str(tmp_path / "data"),
                                    window_ms=10 * MIN, flush_rows=7))


def topic(seed: int = 5) -> tuple[dict[int, list[bytes]], dict[int, int], set[str]]:
    """Labeled partitions: phase 1 (v1 of 60 requests over three windows, some repeated),
    then phase 2 from the returned offsets (corrections); and the corrected ids."""
    rnd = random.Random(seed)
    parts: dict[int, list[bytes]] = {0: [], 1: []}
    negatives = []
    for i in range(60):
        ts, label = T0 + i * MIN // 2, rnd.randint(0, 1)
        parts[i % 2].append(record(f"r{i:03d}", ts, label))
        if rnd.random() < 0.2:
            parts[i % 2].append(record(f"r{i:03d}", ts, label))
        if not label:
            negatives.append((i, ts))
    split = {p: len(v) for p, v in parts.items()}
    corrected = set()
    for i, ts in rnd.sample(negatives, 8):
        parts[i % 2].append(record(f"r{i:03d}", ts, 1, version=2))
        corrected.add(f"r{i:03d}")
        if rnd.random() < 0.5:
            parts[i % 2].append(record(f"r{i:03d}", ts, 1, version=2))
    parts[1].append(record("sampled-out", T0 + 5, 1, version=2))  # not in the window yet
    corrected.add("sampled-out")
    return parts, split, corrected


def run(config, storage, parts, split, seed: int) -> DatasetWriter:
    """Phase 1 (to ``split``: closes every window), then phase 2 (the corrections), as
    ``tests.test_dataset_writer.run`` reads, commits and closes."""
    return run_phases(config, storage, parts, seed,
                      phases=[split, {p: len(v) for p, v in parts.items()}])


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except the sink's own state, by relative path."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith("_sink")}


def test_corrections_make_a_new_version_that_default_readers_see_once(config):
    parts, split, corrected = topic()
    root = Path(config.dataset.path)
    writer = run(config, LocalStorage(str(root)), parts, split, seed=1)
    assert writer.counts["late"] == 0
    df = pd.read_parquet(root)
    assert len(df) == 61 and df.request_id.is_unique
    current = df.set_index("request_id")
    assert set(current.index[current.label_version == 2]) == corrected
    assert (current.loc[sorted(corrected), "label"] == 1).all()
    import duckdb
    import polars as pl
    n, ids = duckdb.sql(f"select count(*), count(distinct request_id) from "
                        f"read_parquet('{root}/**/*.parquet')").fetchall()[0]
    assert n == ids == 61
    assert pl.read_parquet(f"{root}/**/*.parquet").height == 61
    versions = 0
    for w in list_windows(LocalStorage(str(root))):
        manifest = read_manifest(LocalStorage(str(root)), w["dir"])
        new_ids = set(pd.read_parquet(root / w["dir"]).request_id)
        assert manifest["stats"]["corrections"] == len(new_ids & corrected)
        assert manifest["rows"] == len(new_ids)
        if not new_ids & corrected:
            assert manifest["version"] == w["version"] == 1
            assert not (root / w["dir"] / "_versions").exists()
            continue
        versions += 1
        assert manifest["version"] == w["version"] == 2
        old = pq.read_table(root / w["dir"] / "_versions/v0001/data-00000.pq").to_pandas()
        assert (old.label_version == 1).all() and "sampled-out" not in set(old.request_id)
        kept = json.loads((root / w["dir"] / "_versions/v0001/_manifest.json").read_bytes())
        assert kept["version"] == 1 and kept["rows"] == len(old)
    assert versions == writer.counts["window_versions"] >= 2


def test_a_label_corrected_before_its_window_closed_is_compacted_once(config):
    storage = LocalStorage(config.dataset.path)
    writer = DatasetWriter(config, storage, lambda: 0)
    writer.recover([0, 1])
    writer.add(0, 0, record("a", T0, 0))
    writer.add(1, 0, record("a", T0, 1, version=2))
    writer.add(1, 1, record("a", T0, 1, version=2))   # a repeat
    writer.add(0, 1, record("a", T0, 0))              # a late repeat of v1
    writer.commit_all()
    for w in writer.ready_windows(2 ** 62):
        writer.close(w, "t.labeled")
    df = pd.read_parquet(config.dataset.path)
    assert df[["request_id", "label", "label_version"]].values.tolist() == [["a", 1, 2]]


def test_without_corrections_a_new_version_for_a_closed_window_is_late(config):
    cfg = dataclasses.replace(config, join=dataclasses.replace(config.join,
                                                               correction_window_ms=0))
    parts, split, _ = topic()
    writer = run(cfg, LocalStorage(cfg.dataset.path), parts, split, seed=1)
    assert writer.counts["window_versions"] == 0 and writer.counts["late"] > 0


def _write_count(config, parts, split) -> int:
    probe = CrashingStorage(config.dataset.path + "-probe", crash_at=-1, after_rename=True)
    run(config, probe, parts, split, seed=1)
    return probe.writes


@pytest.mark.parametrize("after_rename", [False, True])
def test_crash_at_every_write_then_restart_gives_the_same_versions(config, tmp_path,
                                                                   after_rename):
    parts, split, _ = topic()
    ref_root = tmp_path / "reference"
    ref_cfg = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset,
                                                                      path=str(ref_root)))
    run(ref_cfg, LocalStorage(str(ref_root)), parts, split, seed=1)
    reference = {k: v for k, v in files_of(ref_root).items() if ".part-" not in k}
    ref_manifests = {w["dir"]: read_manifest(LocalStorage(str(ref_root)), w["dir"])
                     for w in list_windows(LocalStorage(str(ref_root)))}
    total = _write_count(config, parts, split)
    assert total > 30
    for k in range(1, total + 1):
        root = tmp_path / f"crash-{k}"
        cfg = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset,
                                                                      path=str(root)))
        with pytest.raises(Crash):
            run(cfg, CrashingStorage(str(root), crash_at=k, after_rename=after_rename),
                parts, split, seed=1)
        run(cfg, LocalStorage(str(root)), parts, split, seed=100 + k)
        got = files_of(root)
        assert not [n for n in got if "/.part-" in n or "/." in n], (k, sorted(got))
        # The current data files and the kept first version are the reference's, byte
        # for byte; a restart may apply corrections in more steps (as it may cut its
        # commits elsewhere), so versions in between may be added.
        def stable(files):
            return {n: b for n, b in files.items() if not n.endswith("_manifest.json")
                    and ("/_versions/" not in n or "/_versions/v0001/" in n)}
        assert stable(got) == stable(reference), k
        storage = LocalStorage(str(root))
        for w in list_windows(storage):
            manifest, ref = read_manifest(storage, w["dir"]), ref_manifests[w["dir"]]
            for key in ("rows", "positives", "files", "stats", "schema"):
                assert manifest[key] == ref[key], (k, key)
            assert manifest["version"] >= ref["version"], k


def test_iceberg_gets_a_snapshot_per_version_and_old_snapshots_stay_readable(config, tmp_path):
    pytest.importorskip("pyiceberg")
    from schemas.config import IcebergSpec
    from schemas.dataset_schema import arrow_schema
    from streams.dataset.iceberg_table import IcebergWindows, window_version_uris

    catalog = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db",
               "warehouse": f"file://{tmp_path}/warehouse"}
    cfg = dataclasses.replace(config, dataset=dataclasses.replace(
        config.dataset, iceberg=IcebergSpec("labels.t", tuple(sorted(catalog.items())))))
    ice = IcebergWindows("labels.t", catalog, arrow_schema(cfg), cfg.pipeline)
    ice.ensure_table()
    storage = LocalStorage(cfg.dataset.path)
    parts, split, corrected = topic()
    # phase 1 closes the windows (version 1), phase 2 corrects them (version 2); each
    # manifest is committed as the sink does, twice (a replayed windows event)
    writer = DatasetWriter(cfg, storage, lambda: 0)
    writer.recover([0, 1])
    first_ids: set[str] = set()
    for phase, ends in enumerate((split, {p: len(v) for p, v in parts.items()})):
        for p in parts:
            for off in range(split[p] if phase else 0, ends[p]):
                writer.add(p, off, parts[p][off])
        writer.commit_all()
        manifests = [writer.close(w, "t.labeled") for w in writer.ready_windows(2 ** 62)]
        manifests += [m for w in writer.corrected_windows()
                      if (m := writer.apply_corrections(w)) is not None]
        for m in manifests:
            assert ice.commit_window(m, window_version_uris(storage, m)) is True
            assert ice.commit_window(m, window_version_uris(storage, m)) is False
        table = ice.ensure_table()
        if phase == 0:
            v1_snapshot = table.current_snapshot().snapshot_id
            first_ids = set(table.scan().to_arrow().column("request_id").to_pylist())
    table = ice.ensure_table()
    current = table.scan().to_arrow().to_pandas().set_index("request_id").sort_index()
    files = pd.read_parquet(cfg.dataset.path).set_index("request_id").sort_index()
    assert list(current.index) == list(files.index)  # each request once, as the files
    assert (current.label_version == files.label_version).all()
    assert set(current.index[current.label_version == 2]) == corrected
    # time travel: the table before the corrections reads the first versions
    before = table.scan(snapshot_id=v1_snapshot).to_arrow()
    assert set(before.column("request_id").to_pylist()) == first_ids
    assert set(before.column("label_version").to_pylist()) == {1}
    assert "sampled-out" not in first_ids


def test_window_stats_in_the_manifest_and_the_datasets_command(config, tmp_path):
    import yaml
    from click.testing import CliRunner

    from streams.cli import main
    storage = LocalStorage(config.dataset.path)
    writer = DatasetWriter(config, storage, lambda: 0)
    writer.recover([0, 1])
    quick = json.loads(record("a", T0 + 5, 1))                      # delay 1 s
    slow = {**json.loads(record("b", T0 + 6, 1, version=2)), "label_delay_ms": 28 * MIN}
    rows = [quick, slow] + [json.loads(record(f"n{i}", T0 + 7 + i, 0, weight=10.0))
                            for i in range(2)]
    for i, row in enumerate(rows):
        writer.add(i % 2, i // 2, json.dumps(row).encode())
    writer.commit_all()
    stats = writer.close(T0, "t.labeled")["stats"]
    # 2 positives + 2 negatives kept at rate 0.1: 22 requests; the label window is 30m,
    # so a 28-minute delay came in its last 10%
    assert stats == {"requests": 22.0, "join_ratio": round(2 / 22, 6),
                     "label_delay_ms": {"p50": 1000, "p90": 1000, "p99": 1000},
                     "late_in_window_share": 0.5, "corrections": 1}
    data = yaml.safe_load((Path(__file__).parent.parent / "examples" / "ctr.yaml").read_text())
    data["dataset"] = {"path": config.dataset.path, "window": "10m"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(main, ["datasets", "-c", str(tmp_path / "p.yaml"), "--json"])
    assert json.loads(out.output)[0]["stats"] == stats
    text = CliRunner().invoke(main, ["datasets", "-c", str(tmp_path / "p.yaml")]).output
    assert "0.091" in text and "1.0/1.0/1.0" in text and "0.500" in text
