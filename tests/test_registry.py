"""The model registry: versions, checksums, skops types, the champion pointer, rollback."""
from __future__ import annotations

import json
import os
import threading
from collections import Counter

import pytest
import skops.io as sio

from schemas.errors import RegistryError
from jobs.estimators import Model
from jobs.registry import Registry, write_atomic
from streams.dev.synthetic_windows import ctr_window
from tests.jobs_support import H, START


class NotTrusted:
    """Any class outside sklearn/numpy/scipy: loading it could run code."""


@pytest.fixture
def model(make_config) -> Model:
    m = Model.for_config(make_config("ctr"))
    return m.partial_fit(ctr_window(START, H, 300, seed=1))


def _save(reg: Registry, model: Model, window: str = "w") -> str:
    return reg.save(model, {"decision": {"promote": True}, "rows": 1},
                    {"window": window, "windows": [window], "parent": None, "manifests": []})


def test_versions_numbered_and_loaded(tmp_path, model):
    reg = Registry(tmp_path / "m")
    assert reg.versions() == [] and reg.champion() is None
    assert [_save(reg, model, f"w{i}") for i in range(3)] == ["v0001", "v0002", "v0003"]
    assert reg.versions() == ["v0001", "v0002", "v0003"]
    assert sorted(p.name for p in (tmp_path / "m" / "v0002").iterdir()) == [
        "lineage.json", "metrics.json", "model.sha256", "model.skops"]
    assert reg.lineage(2)["window"] == "w1" and reg.lineage("v2")["version"] == "v0002"
    test = ctr_window(START + H, H, 100, seed=2)
    assert (reg.load("v0001").predict(test) == model.predict(test)).all()
    assert reg.version_for_window("w2") == "v0003" and reg.version_for_window("nope") is None
    # no stray temp directories
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".version")]


def test_tampered_model_is_refused(tmp_path, model):
    reg = Registry(tmp_path)
    v = _save(reg, model)
    path = tmp_path / v / "model.skops"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="checksum mismatch.*refusing to load"):
        reg.load(v)


def test_untrusted_types_are_refused_even_with_a_matching_checksum(tmp_path, model):
    import hashlib
    reg = Registry(tmp_path)
    v = _save(reg, model)
    state = model.to_state()
    state["extra"] = NotTrusted()  # a type skops does not trust by default
    blob = sio.dumps(state)
    (tmp_path / v / "model.skops").write_bytes(blob)
    (tmp_path / v / "model.sha256").write_text(hashlib.sha256(blob).hexdigest() + "  model.skops\n")
    with pytest.raises(RegistryError, match="types skops does not trust"):
        reg.load(v)


def test_unknown_version_says_which_exist(tmp_path, model):
    reg = Registry(tmp_path)
    _save(reg, model)
    with pytest.raises(RegistryError, match=r"v0007 is not in the registry .*v0001"):
        reg.load(7)
    with pytest.raises(RegistryError, match="not a version"):
        reg.normalize("latest")


def test_champion_promote_and_rollback(tmp_path, model):
    reg = Registry(tmp_path)
    for i in range(3):
        _save(reg, model, f"w{i}")
    reg.set_champion(1)
    reg.set_champion("v0003")
    assert reg.champion() == "v0003"
    assert reg.rollback() == "v0001" and reg.champion() == "v0001"
    with pytest.raises(RegistryError, match="no earlier champion"):
        reg.rollback()
    ptr = json.loads((tmp_path / "champion.json").read_text())
    assert ptr["version"] == "v0001" and ptr["history"] == []


def test_champion_pointer_is_replaced_atomically(tmp_path, model, monkeypatch):
    """A crash while writing leaves the old pointer whole; readers never see a partial one."""
    reg = Registry(tmp_path)
    _save(reg, model), _save(reg, model)
    reg.set_champion(1)

    def crash(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        reg.set_champion(2)
    monkeypatch.undo()
    assert reg.champion() == "v0001"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".champion")] == []
    # concurrent readers only ever see a complete pointer
    seen, errors, stop = Counter(), [], threading.Event()

    def read():
        try:
            while not stop.is_set():
                seen[reg.champion()] += 1
        except Exception as e:  # a torn pointer may fail to parse: that is a failure too
            errors.append(e)
    t = threading.Thread(target=read)
    t.start()
    try:
        writes = 0
        # at least 200 swaps, and on until the reader has read 200 times while they go on
        while writes < 200 or (sum(seen.values()) < 200 and t.is_alive() and writes < 100_000):
            reg.set_champion(1 + writes % 2)
            writes += 1
    finally:
        stop.set()
        t.join(60)
    assert not errors, errors
    assert sum(seen.values()) >= 200, seen
    assert set(seen) <= {"v0001", "v0002"}, seen


def test_write_atomic_leaves_no_temp(tmp_path):
    write_atomic(tmp_path / "a" / "x.json", b"{}")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]
