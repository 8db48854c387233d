"""The dataset writer's commit protocol: a crash at every step, then a restart.

Pure logic on a local directory (no Kafka): records are fed as (partition, offset,
value) exactly as the sink reads them from the labeled topic.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from schemas.dataset_schema import arrow_schema
from schemas.dataset_schema import parse_part_name
from streams.dataset.writer import DatasetWriter
from streams.common.storage import LocalStorage
from streams.dataset.manifest import list_windows, read_manifest, read_window

MIN = 60_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % (10 * MIN)


class Crash(Exception):
    pass


class CrashingStorage(LocalStorage):
    """Local storage that dies at its ``crash_at``-th write: before the rename (leaving
    the hidden temp file) or right after it."""

    def __init__(self, root: str, crash_at: int, after_rename: bool) -> None:
        super().__init__(root)
        self.crash_at, self.after_rename, self.writes = crash_at, after_rename, 0

    def write_atomic(self, rel: str, data: bytes) -> None:
        self.writes += 1
        if self.writes == self.crash_at and not self.after_rename:
            path = Path(self.uri(rel))
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / f".{path.name}.tmp-{os.getpid()}").write_bytes(data[: len(data) // 2])
            raise Crash(rel)
        super().write_atomic(rel, data)
        if self.writes == self.crash_at:
            raise Crash(rel)


@pytest.fixture
def config(make_config, tmp_path):
    cfg = make_config("ctr", partitions=2)
    return dataclasses.replace(
        cfg, dataset=dataclasses.replace(cfg.dataset, path=str(tmp_path / "data"),
                                         window_ms=10 * MIN, flush_rows=7))


def example(rid: str, ts: int, label: int) -> bytes:
    return json.dumps({"request_id": rid, "request_ts": ts, "window_start": ts - ts % (10 * MIN),
                       "label": label, "label_ts": ts + 1000, "prediction": 0.5,
                       "model_version": "m1", "hour": 10, "category": "shoes",
                       "price": 9.5, "user_email": None}).encode()


def labeled_topic(seed: int = 5) -> dict[int, list[bytes]]:
    """Two partitions of labeled records over three windows, with identical repeats."""
    rnd = random.Random(seed)
    parts: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(60):
        ts = T0 + i * MIN // 2
        value = example(f"r{i:03d}", ts, rnd.randint(0, 1))
        p = i % 2
        parts[p].append(value)
        if rnd.random() < 0.2:
            parts[p].append(value)  # at-least-once upstream
    return parts


def write_closed(config, storage, examples, partitions: int = 2) -> DatasetWriter:
    """Feed labeled examples (dicts) round-robin over ``partitions`` labeled partitions,
    committing when due, then close every window (compacted, with its manifest)."""
    writer = DatasetWriter(config, storage, clock=lambda: 0)
    writer.recover(list(range(partitions)))
    offsets = dict.fromkeys(range(partitions), 0)
    for i, example in enumerate(examples):
        p = i % partitions
        writer.add(p, offsets[p], json.dumps(example, default=float).encode())
        offsets[p] += 1
        if writer.due():
            writer.commit_all()
    writer.commit_all()
    for w in writer.ready_windows(2 ** 62):
        writer.close(w, config.topics.labeled)
    return writer


def run(config, storage, parts, seed: int, clock=lambda: 0,
        phases: list[dict[int, int]] | None = None) -> DatasetWriter:
    """Recover, read every partition from its resume offset in a seeded interleaving,
    commit when due, then close every window and apply the corrections committed to
    closed ones. ``phases``: read up to these offsets in turn (default: to the end),
    each phase ending with the commit, the closes and the corrections."""
    writer = DatasetWriter(config, storage, clock)
    cursors = writer.recover(sorted(parts))
    rnd = random.Random(seed)
    for ends in phases or [{p: len(v) for p, v in parts.items()}]:
        while any(cursors[p] < ends[p] for p in parts):
            p = rnd.choice([p for p in parts if cursors[p] < ends[p]])
            for _ in range(rnd.randint(1, 5)):
                if cursors[p] < ends[p]:
                    writer.add(p, cursors[p], parts[p][cursors[p]])
                    cursors[p] += 1
            if writer.due():
                writer.commit_all()
        writer.commit_all()
        for w in writer.ready_windows(2 ** 62):
            writer.close(w, "t.labeled")
        for w in writer.corrected_windows():
            writer.apply_corrections(w)
    return writer


def dataset(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root, partitioning=None).sort_values("request_id").reset_index(drop=True)


def test_uninterrupted_run_writes_each_request_once(config, tmp_path):
    parts = labeled_topic()
    writer = run(config, LocalStorage(config.dataset.path), parts, seed=1)
    df = dataset(Path(config.dataset.path))
    assert len(df) == 60 and df.request_id.is_unique
    assert writer.counts["duplicates"] == sum(len(v) for v in parts.values()) - 60
    windows = list_windows(LocalStorage(config.dataset.path))
    assert [w["status"] for w in windows] == ["closed"] * 3
    assert [w["rows"] for w in windows] == [20, 20, 20]


def _write_count(config, parts) -> int:
    probe = CrashingStorage(config.dataset.path + "-probe", crash_at=-1, after_rename=True)
    run(config, probe, parts, seed=1)
    return probe.writes


@pytest.mark.parametrize("after_rename", [False, True])
def test_crash_at_every_write_then_restart_gives_the_same_rows(config, tmp_path, after_rename):
    parts = labeled_topic()
    ref_cfg = dataclasses.replace(config, dataset=dataclasses.replace(
        config.dataset, path=str(tmp_path / "reference")))
    run(ref_cfg, LocalStorage(ref_cfg.dataset.path), parts, seed=1)
    reference = dataset(Path(ref_cfg.dataset.path))
    ref_manifests = {w["dir"]: read_manifest(LocalStorage(ref_cfg.dataset.path), w["dir"])
                     for w in list_windows(LocalStorage(ref_cfg.dataset.path))}

    total = _write_count(config, parts)
    assert total > 20  # intents, files, checkpoints and manifests
    for k in range(1, total + 1):
        root = tmp_path / f"crash-{k}"
        cfg = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, path=str(root)))
        with pytest.raises(Crash):
            run(cfg, CrashingStorage(str(root), crash_at=k, after_rename=after_rename), parts, seed=1)
        # the restart reads in another order and cuts its commits elsewhere
        run(cfg, LocalStorage(str(root)), parts, seed=100 + k)
        got = dataset(root)
        pd.testing.assert_frame_equal(got, reference, check_like=True)
        assert not [p for p in root.rglob(".*")], "temp files left behind"
        storage = LocalStorage(str(root))
        for w in list_windows(storage):
            manifest = read_manifest(storage, w["dir"])
            ref = ref_manifests[w["dir"]]
            for key in ("rows", "positives", "label_counts", "min_request_ts", "max_request_ts",
                        "schema", "window_start", "window_end"):
                assert manifest[key] == ref[key], (k, key)
            assert read_window(storage, w["dir"]).num_rows == manifest["rows"]
            # compacted: the same data files, byte for byte (the staged files a restart
            # cut elsewhere, and the offset ranges they name, may differ)
            assert manifest["files"] == ref["files"], k
            for f in manifest["files"]:
                assert (root / w["dir"] / f["path"]).read_bytes() == (
                    Path(ref_cfg.dataset.path) / w["dir"] / f["path"]).read_bytes(), k
            assert not [n for n in storage.list_dir(w["dir"]) if parse_part_name(n)], k


def test_a_record_for_a_closed_window_is_late_unless_it_is_a_copy(config):
    parts = labeled_topic()
    storage = LocalStorage(config.dataset.path)
    writer = run(config, storage, parts, seed=1)
    first = parts[0][0]
    assert writer.add(0, len(parts[0]), first) is None  # an identical copy: counted, dropped
    assert writer.counts["duplicates"] > 0
    rejected = writer.add(0, len(parts[0]) + 1, example("new", T0 + 1, 1))
    assert rejected is not None and rejected.reason == "late"
    assert "window-" in rejected.detail and rejected.original == example("new", T0 + 1, 1)
    # after a restart too: the closed window's ids come back from its files
    again = DatasetWriter(config, storage, lambda: 0)
    again.recover([0, 1])
    assert again.add(0, len(parts[0]) + 2, first) is None
    assert again.add(0, len(parts[0]) + 3, example("new2", T0 + 1, 0)).reason == "late"


def test_open_window_has_no_manifest_and_windows_close_by_watermark(config):
    storage = LocalStorage(config.dataset.path)
    writer = DatasetWriter(config, storage, lambda: 0)
    writer.recover([0, 1])
    writer.add(0, 0, example("a", T0 + 5, 1))
    writer.add(1, 0, example("b", T0 + 10 * MIN + 5, 0))
    writer.commit_all()
    lw = config.join.label_window_ms
    assert writer.ready_windows(None) == []
    assert writer.ready_windows(T0 + 10 * MIN + lw - 1) == []
    assert writer.ready_windows(T0 + 10 * MIN + lw) == [T0]
    writer.close(T0, "t.labeled")
    assert sorted(w["status"] for w in list_windows(storage)) == ["closed", "open"]
    open_dir = [w["dir"] for w in list_windows(storage) if w["status"] == "open"][0]
    assert read_manifest(storage, open_dir) is None


def test_all_null_feature_keeps_its_type_and_added_features_read_together(config, tmp_path):
    storage = LocalStorage(config.dataset.path)
    writer = DatasetWriter(config, storage, lambda: 0)
    writer.recover([0, 1])
    writer.add(0, 0, example("a", T0 + 5, 1))  # user_email is null on every row
    writer.commit_all()
    writer.close(T0, "t.labeled")
    table = pd.read_parquet(config.dataset.path, partitioning=None)
    old_schema = arrow_schema(config)
    assert pa.parquet.read_schema(next(Path(config.dataset.path).rglob("data-*.parquet"))) \
        .field("user_email").type == pa.string()

    # the config gains a feature; a later window has the column, older ones do not
    from schemas.config import FeatureSpec
    new_cfg = dataclasses.replace(config, features=config.features + (FeatureSpec("device", "str"),))
    new_writer = DatasetWriter(new_cfg, storage, lambda: 0)
    new_writer.recover([0, 1])
    value = json.loads(example("b", T0 + 10 * MIN + 5, 0))
    value["device"] = "ios"
    new_writer.add(0, 1, json.dumps(value).encode())
    new_writer.commit_all()
    new_writer.close(T0 + 10 * MIN, "t.labeled")
    new_schema = arrow_schema(new_cfg)
    both = pd.read_parquet(config.dataset.path, partitioning=None, schema=new_schema)
    assert len(both) == 2 and len(table) == 1
    device = both.set_index("request_id").device
    assert pd.isna(device["a"]) and device["b"] == "ios"
    assert old_schema.names == new_schema.names[:-1]


def test_datasets_command_lists_windows_with_status(config, tmp_path):
    from click.testing import CliRunner

    import yaml
    from streams.cli import main
    storage = LocalStorage(config.dataset.path)
    writer = DatasetWriter(config, storage, lambda: 0)
    writer.recover([0, 1])
    writer.add(0, 0, example("a", T0 + 5, 1))
    writer.add(0, 1, example("b", T0 + 6, 0))
    writer.add(1, 0, example("c", T0 + 10 * MIN, 0))
    writer.commit_all()
    writer.close(T0, "t.labeled")
    data = yaml.safe_load((Path(__file__).parent.parent / "examples" / "ctr.yaml").read_text())
    data["dataset"] = {"path": config.dataset.path, "window": "10m"}
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(data))

    out = CliRunner().invoke(main, ["datasets", "-c", str(cfg_path), "--json"])
    assert out.exit_code == 0, out.output
    windows = json.loads(out.output)
    assert [(w["status"], w["rows"], w["label_rate"], w["files"]) for w in windows] == \
        [("closed", 2, 0.5, 1), ("open", None, None, 1)]
    text = CliRunner().invoke(main, ["datasets", "-c", str(cfg_path)]).output
    assert "closed" in text and "0.500" in text and "open" in text
