"""Every Faust internal dlabel relies on still exists, with the shape we use it in.

``streams.join.faust_adapter.FAUST_INTERNALS`` lists them; these tests fail naming the
internal when a Faust upgrade renames, removes or reshapes one, long before a worker
silently reads its inputs twice or recovers a table short. A second check makes sure
no other module reaches into Faust.
"""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from streams.join.faust_adapter import FAUST_INTERNALS

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "streams" / "join" / "faust_adapter.py"

#: parameters (after self) of the internals we call or replace, in order
SIGNATURES = {
    "_getmany": ["active_partitions", "timeout"],
    "_commit": ["offsets"],
    "_ensure_consumer": [],
    "_db_for_partition": ["partition"],
    "_build_highwaters": ["consumer", "tps", "destination", "title"],
    "_schedule_shutdown": ["signal"],
    "_create_worker_consumer": ["transport"],
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.fixture(scope="module")
def offline_app():
    """A Faust app that is built but never started (nothing connects)."""
    import faust
    return faust.App("dlabel-internals-check", broker="kafka://127.0.0.1:1",
                     autodiscover=False, web_enabled=False)


@pytest.mark.parametrize("owner, attribute, why", FAUST_INTERNALS,
                         ids=[f"{o}.{a}" for o, a, _ in FAUST_INTERNALS])
def test_faust_internal_is_still_there(owner, attribute, why, offline_app):
    if owner == "app.consumer":
        holder = offline_app.consumer
    else:
        holder = _resolve(owner)
    assert hasattr(holder, attribute), (
        f"Faust internal {owner}.{attribute} is gone (used for: {why}); "
        f"adapt streams/join/faust_adapter.py to the installed Faust")
    expected = SIGNATURES.get(attribute)
    if expected is not None:
        params = list(inspect.signature(getattr(holder, attribute)).parameters)
        params = [p for p in params if p != "self"]
        assert params == expected, (
            f"Faust internal {owner}.{attribute} changed its parameters to {params} "
            f"(dlabel uses {expected}; used for: {why})")


def test_faust_consumer_of_an_app_is_the_one_whose_internals_we_check(offline_app):
    # the class-level checks above only mean something if the app's consumer and
    # producer are of those classes
    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Producer
    assert isinstance(offline_app.consumer, Consumer)
    assert isinstance(offline_app.consumer._thread, AIOKafkaConsumerThread)
    assert isinstance(offline_app.producer, Producer)


def _faust_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    internal_names = {a for _, a, _ in FAUST_INTERNALS}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "faust"
                                                 for a in node.names):
            found.append(f"line {node.lineno}: import faust")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "faust":
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif (isinstance(node, ast.Attribute) and node.attr in internal_names
              and not (isinstance(node.value, ast.Name) and node.value.id == "self")):
            found.append(f"line {node.lineno}: .{node.attr}")  # not one of our own privates
    return found


def test_only_the_adapter_touches_faust():
    offenders = {}
    for path in sorted(ROOT.glob("streams/**/*.py")) + sorted(ROOT.glob("jobs/**/*.py")) \
            + sorted(ROOT.glob("schemas/**/*.py")):
        if path == ADAPTER:
            continue
        uses = _faust_uses(path)
        if uses:
            offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, f"Faust used outside streams/join/faust_adapter.py: {offenders}"


def test_the_adapter_check_sees_faust_uses(tmp_path):
    # the scan above must be able to fail
    sample = tmp_path / "sample.py"
    sample.write_text("import faust\nfrom faust.types import TP\nx = c._committed_offset\n"
                      "y = self._commit\n")
    assert len(_faust_uses(sample)) == 3


def test_recovery_stats_skip_changelog_ends_left_unknown():
    """Memory store: the loop reads the changelog itself, so Faust's recovery gets no
    ends (None); its own statistics subtracted one and crashed the worker on a
    rebalance where a partition kept an offset from an earlier assignment."""
    from types import SimpleNamespace

    from faust.tables.recovery import Recovery

    from streams.join.faust_adapter import patch_table_recovery
    patch_table_recovery()
    stub = SimpleNamespace(active_offsets={"a": 5, "b": 3, "c": 7},
                           active_highwaters={"a": None, "b": 10, "c": 7})
    stats = Recovery.active_stats(stub)
    assert list(stats) == ["b"] and stats["b"].remaining == 7
