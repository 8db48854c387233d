"""Behaviour tables for schemas.config: durations, brokers, validation messages, loading."""
from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from schemas.config import (
    RESERVED_COLUMNS, FeatureSpec, JoinSpec, PipelineConfig, config_from_dict, load_config,
    parse_duration_ms)
from schemas.errors import ConfigError
from schemas.records import LABEL_QUALITY_COLUMNS, LABELED_BASE_COLUMNS

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NO_ENV: dict[str, str] = {}


def ctr_dict() -> dict:
    return yaml.safe_load((EXAMPLES / "ctr.yaml").read_text())


def airport_dict() -> dict:
    return yaml.safe_load((EXAMPLES / "airport.yaml").read_text())


DELETE = object()


def with_change(base: dict, dotted: str, value: object) -> dict:
    """A deep copy of base with dotted key set to value (or deleted when value is DELETE)."""
    data = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node = data
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


# --- examples -------------------------------------------------------------------------

def test_ctr_example_loads_as_designed():
    cfg = load_config(EXAMPLES / "ctr.yaml", environ=NO_ENV)
    assert cfg.pipeline == "ctr"
    assert cfg.bootstrap_servers == "localhost:9092"
    assert cfg.topics.dead_letter == "ctr.dead-letter" and cfg.topics.partitions == 4
    assert cfg.join == JoinSpec(key="request_id", label_window_ms=30 * 60_000,
                                allowed_lateness_ms=2 * 60_000, idle_timeout_ms=5_000)
    assert cfg.label.kind == "binary" and cfg.label.positive == ("click",)
    assert cfg.features == (FeatureSpec("hour", "int"), FeatureSpec("category", "str"),
                            FeatureSpec("price", "float"),
                            FeatureSpec("user_email", "str", "hash"))
    assert cfg.slices == ("category",)
    assert cfg.dataset.path == "data/ctr" and cfg.dataset.window_ms == 3_600_000
    assert cfg.model.path == "models/ctr" and cfg.model.estimator == "sgd_classifier"
    assert cfg.store == "memory" and cfg.state_dir == ".dlabel-state"


def test_airport_example_loads_as_regression():
    cfg = load_config(str(EXAMPLES / "airport.yaml"), environ=NO_ENV)
    assert cfg.pipeline == "airport"
    assert cfg.label.kind == "regression"
    assert cfg.label.feedback == ("exit",) and cfg.label.value == "elapsed_seconds"
    assert cfg.label.value_field is None
    assert cfg.join.label_window_ms == 2 * 3_600_000
    assert [f.name for f in cfg.kept_features] == [
        "checkpoint", "hour", "passengers_in_line", "fast_track"]
    assert FeatureSpec("passport_id", "str", "drop") in cfg.features
    assert cfg.slices == ("checkpoint",)
    assert cfg.model.estimator == "sgd_regressor"


def test_config_is_frozen():
    cfg = config_from_dict(ctr_dict(), environ=NO_ENV)
    with pytest.raises(AttributeError):
        cfg.pipeline = "other"  # type: ignore[misc]


def test_reserved_columns_match_labeled_base_columns():
    assert RESERVED_COLUMNS == LABELED_BASE_COLUMNS + LABEL_QUALITY_COLUMNS


# --- durations ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("500ms", 500), ("90s", 90_000), ("30m", 1_800_000), ("2h", 7_200_000),
    ("1d", 86_400_000), ("1h30m", 5_400_000), ("0s", 0), (" 5s ", 5_000),
    (250, 250), (0, 0), ("1000000d", 86_400_000_000_000),
])
def test_parse_duration_ms(text, expected):
    assert parse_duration_ms(text, "join.label_window") == expected


@pytest.mark.parametrize("text", [
    "30x", "", "m", "1.5h", "-5m", "30", "5 mins", "h1", "1e3ms", True, 2.5, None, [1], -1,
])
def test_parse_duration_ms_rejects(text):
    with pytest.raises(ConfigError) as e:
        parse_duration_ms(text, "join.label_window")
    msg = str(e.value)
    assert msg.startswith("join.label_window: ")
    assert repr(text) in msg


def test_duration_message_is_bytewax_style():
    with pytest.raises(ConfigError, match=r"^join\.label_window: '30x' is not a duration; "
                                          r"write e\.g\. 30m or 2h"):
        parse_duration_ms("30x", "join.label_window")


# --- brokers --------------------------------------------------------------------------

@pytest.mark.parametrize("arg, env, in_file, expected", [
    ("kafka://a:1", {"DLABEL_BROKER": "kafka://b:2"}, "kafka://c:3", "kafka://a:1"),
    (None, {"DLABEL_BROKER": "kafka://b:2"}, "kafka://c:3", "kafka://b:2"),
    (None, {"DLABEL_BROKER": ""}, "kafka://c:3", "kafka://c:3"),
    (None, {}, "kafka://c:3", "kafka://c:3"),
    (None, {}, DELETE, "kafka://localhost:9092"),
])
def test_broker_precedence(arg, env, in_file, expected):
    cfg = config_from_dict(with_change(ctr_dict(), "broker", in_file), broker=arg, environ=env)
    assert cfg.broker == expected


def test_broker_env_read_from_os_environ(monkeypatch):
    monkeypatch.setenv("DLABEL_BROKER", "kafka://envhost:9999")
    assert load_config(EXAMPLES / "ctr.yaml").bootstrap_servers == "envhost:9999"


@pytest.mark.parametrize("broker, servers", [
    ("kafka://localhost:9092", "localhost:9092"),
    ("kafka://k1.example.com:9092,k2.example.com:9093", "k1.example.com:9092,k2.example.com:9093"),
    ("kafka://10.0.0.1:19092", "10.0.0.1:19092"),
    ("kafka://[::1]:9092", "[::1]:9092"),
])
def test_bootstrap_servers(broker, servers):
    cfg = config_from_dict(with_change(ctr_dict(), "broker", broker), environ=NO_ENV)
    assert cfg.bootstrap_servers == servers


@pytest.mark.parametrize("broker", [
    "localhost:9092", "kafka://localhost", "kafka://localhost:0", "kafka://localhost:70000",
    "http://localhost:9092", "kafka://a:1,", "kafka://a:1, b:2", "kafka://", 9092,
])
def test_bad_broker_in_file(broker):
    with pytest.raises(ConfigError, match=r"broker: .* is not a broker url; write e\.g\. kafka://"):
        config_from_dict(with_change(ctr_dict(), "broker", broker), environ=NO_ENV)


def test_bad_broker_argument_and_env_are_named():
    with pytest.raises(ConfigError, match=r"--broker: 'localhost:9092' is not a broker url"):
        config_from_dict(ctr_dict(), broker="localhost:9092", environ=NO_ENV)
    with pytest.raises(ConfigError, match=r"DLABEL_BROKER: 'nope' is not a broker url"):
        config_from_dict(ctr_dict(), environ={"DLABEL_BROKER": "nope"})


# --- validation table -----------------------------------------------------------------

BAD_CTR = [
    # (dotted key, new value or DELETE, expected substring)
    ("pipeline", DELETE, "pipeline: is required but missing"),
    ("pipeline", "bad name", "pipeline: 'bad name' is not a valid name"),
    ("pipeline", "-ctr", "pipeline: '-ctr' is not a valid name"),
    ("pipeline", "a/b", "pipeline: 'a/b' is not a valid name"),
    ("pipeline", "x" * 65, "is not a valid name; use 1-64 letters"),
    ("pipeline", 7, "pipeline: 7 is not a valid name"),
    ("pipelin", "ctr", "config: unknown key(s) 'pipelin'; allowed keys are pipeline, broker"),
    ("topics", DELETE, "topics: is required but missing"),
    ("topics", ["ctr.requests"], "topics: ['ctr.requests'] is not a mapping"),
    ("topics.requests", DELETE, "topics.requests: is required but missing"),
    ("topics.requests", "bad topic!", "topics.requests: 'bad topic!' is not a valid name"),
    ("topics.labeled", "ctr.requests", "topics.requests: 'ctr.requests' is also topics.labeled"),
    ("topics.partitions", 0, "topics.partitions: 0 is not a positive integer"),
    ("topics.partitions", "4", "topics.partitions: '4' is not a positive integer"),
    ("topics.partitions", True, "topics.partitions: True is not a positive integer"),
    ("topics.replication_factor", -1, "topics.replication_factor: -1 is not a positive"),
    ("topics.deadletter", "x", "topics: unknown key(s) 'deadletter'; allowed keys are requests"),
    ("join.label_window", DELETE, "join.label_window: is required but missing"),
    ("join.label_window", "30x", "join.label_window: '30x' is not a duration; write e.g. 30m"),
    ("join.label_window", "0m", "join.label_window: '0m' is zero; write a positive duration"),
    ("join.label_window", 0, "join.label_window: 0 is zero"),
    ("join.allowed_lateness", "-2m", "join.allowed_lateness: '-2m' is not a duration"),
    ("join.idle_timeout", "0s", "join.idle_timeout: '0s' is zero"),
    ("join.idle_timeout", "soon", "join.idle_timeout: 'soon' is not a duration"),
    ("join.key", "has space", "join.key: 'has space' is not a valid name"),
    ("join.label_windw", "30m", "join: unknown key(s) 'label_windw'; allowed keys are key, "
                                "label_window, allowed_lateness, idle_timeout"),
    ("label", DELETE, "label: is required but missing"),
    ("label.kind", "multiclass", "label.kind: 'multiclass' is not allowed; write one of binary, "
                                 "regression"),
    ("label.positive", [], "label.positive: [] is not a non-empty list; write e.g. [click]"),
    ("label.positive", "click", "label.positive: 'click' is not a non-empty list"),
    ("label.positive", DELETE, "label.positive: is required but missing"),
    ("label.positive", ["click", ""], "label.positive[1]: '' is not a non-empty string"),
    ("label.positive", ["click", "click"], "label.positive: ['click', 'click'] has duplicates"),
    ("label.feedback", ["exit"], "label.feedback: is only for kind: regression"),
    ("label.positve", ["click"], "label: unknown key(s) 'positve'"),
    ("features", DELETE, "features: is required but missing"),
    ("features", {}, "features: {} is not a non-empty mapping"),
    ("features", ["hour"], "features: ['hour'] is not a non-empty mapping"),
    ("features.hour", "integer", "features.hour.type: 'integer' is not allowed; write one of int,"
                                 " float, str, bool"),
    ("features.hour", {"type": "int", "pii": "encrypt"},
     "features.hour.pii: 'encrypt' is not allowed; write one of hash, drop"),
    ("features.hour", {"pii": "drop"}, "features.hour.type: is required but missing"),
    ("features.hour", {"type": "int", "pii": "hash"},
     "features.hour.type: 'int' cannot be hashed (hashes are hex strings); declare type: str"),
    ("features.hour", {"type": "int", "privacy": "drop"},
     "features.hour: unknown key(s) 'privacy'; allowed keys are type, pii"),
    ("features.label", "int", "features.label: 'label' clashes with a labeled-example column"),
    ("features.bad name", "int", "features.bad name: 'bad name' is not a valid feature name"),
    ("slices", ["country"], "slices[0]: 'country' is not a declared feature"),
    ("slices", "category", "slices: 'category' is not a non-empty list"),
    ("dataset", DELETE, "dataset: is required but missing"),
    ("dataset.window", "1y", "dataset.window: '1y' is not a duration"),
    ("join.dedupe_retention", "forever", "join.dedupe_retention: 'forever' is not a duration"),
    ("dataset.path", "", "dataset.path: '' is not a non-empty string"),
    ("dataset.format", "csv", "dataset: unknown key(s) 'format'; allowed keys are path, window"),
    ("model.path", DELETE, "model.path: is required but missing"),
    ("model.estimator", "xgboost", "model.estimator: 'xgboost' is not allowed; write one of "
                                   "sgd_classifier, sgd_regressor"),
    ("model.estimator", "sgd_regressor", "model.estimator: 'sgd_regressor' does not fit label "
                                         "kind 'binary'; write sgd_classifier"),
    ("store", "redis", "store: 'redis' is not allowed; write one of memory, rocksdb"),
    ("state_dir", 5, "state_dir: 5 is not a non-empty string"),
]


@pytest.mark.parametrize("dotted, value, expected", BAD_CTR,
                         ids=[f"{d}={v!r}"[:60] for d, v, _ in BAD_CTR])
def test_bad_ctr_field(dotted, value, expected):
    data = with_change(ctr_dict(), dotted, value)
    with pytest.raises(ConfigError) as e:
        config_from_dict(data, source="ctr.yaml", environ=NO_ENV)
    assert str(e.value).startswith("ctr.yaml: ")
    assert expected in str(e.value)


def test_slice_on_dropped_pii_is_rejected():
    data = with_change(airport_dict(), "slices", ["passport_id"])
    with pytest.raises(ConfigError, match=r"slices\[0\]: 'passport_id' is not a declared "
                                          r"feature \(or is dropped PII\)"):
        config_from_dict(data, environ=NO_ENV)


BAD_AIRPORT = [
    ("label.feedback", DELETE, "label.feedback: is required but missing"),
    ("label.feedback", [], "label.feedback: [] is not a non-empty list"),
    ("label.value", "seconds", "label.value: 'seconds' is not allowed; write elapsed_seconds or "
                               "field:<name"),
    ("label.value", "field:", "label.value: 'field:' is not allowed"),
    ("label.value", "field:a b", "label.value: 'field:a b' is not allowed"),
    ("label.value", "field:ts", "label.value: 'field:ts' names a key/time/type field"),
    ("label.positive", ["exit"], "label.positive: is only for kind: binary"),
    ("model.estimator", "sgd_classifier", "does not fit label kind 'regression'; write "
                                          "sgd_regressor"),
]


@pytest.mark.parametrize("dotted, value, expected", BAD_AIRPORT)
def test_bad_airport_field(dotted, value, expected):
    with pytest.raises(ConfigError) as e:
        config_from_dict(with_change(airport_dict(), dotted, value), environ=NO_ENV)
    assert expected in str(e.value)


def test_regression_defaults_and_field_value():
    data = with_change(airport_dict(), "label.value", "field:wait_seconds")
    data = with_change(data, "model", {"path": "models/airport"})
    data = with_change(data, "label.feedback", ["exit", "gave_up"])
    cfg = config_from_dict(data, environ=NO_ENV)
    assert cfg.label.value_field == "wait_seconds"
    assert cfg.label.feedback == ("exit", "gave_up")
    assert cfg.model.estimator == "sgd_regressor"


def test_optional_fields_default():
    data = ctr_dict()
    for key in ("broker", "slices"):
        del data[key]
    data["join"] = {"label_window": 60_000}
    del data["topics"]["partitions"]
    cfg = config_from_dict(data, environ=NO_ENV)
    assert cfg.join == JoinSpec(label_window_ms=60_000)
    assert cfg.join.key == "request_id" and cfg.join.allowed_lateness_ms == 0
    assert cfg.join.idle_timeout_ms == 30_000
    assert cfg.slices == () and cfg.topics.partitions == 4
    assert cfg.topics.replication_factor == 1
    assert cfg.broker == "kafka://localhost:9092"


def test_rocksdb_store_and_state_dir():
    data = ctr_dict()
    data.update(store="rocksdb", state_dir="/var/lib/dlabel")
    cfg = config_from_dict(data, environ=NO_ENV)
    assert (cfg.store, cfg.state_dir) == ("rocksdb", "/var/lib/dlabel")


def test_not_a_mapping_at_top():
    with pytest.raises(ConfigError, match="config: .* is not a mapping"):
        config_from_dict(["pipeline"], environ=NO_ENV)  # type: ignore[arg-type]


# --- files ----------------------------------------------------------------------------

BAD_FILES = [
    ("pipeline: ctr\ntopics: [a\n", "invalid yaml"),
    ("pipeline: ctr\n\ttopics: x\n", "invalid yaml"),
    ("pipeline: ctr\npipeline: ctr2\n", "duplicate key 'pipeline'; keep only one"),
    ("features:\n  hour: int\n  hour: float\n", "duplicate key 'hour'"),
    ("", "config file is empty"),
    ("# only a comment\n", "config file is empty"),
    ("- a\n- b\n", "config: ['a', 'b'] is not a mapping"),
    ("pipeline: ctr\n", "topics: is required but missing"),
    ("!!python/object/apply:os.system ['true']\n", "invalid yaml"),
]


@pytest.mark.parametrize("text, expected", BAD_FILES)
def test_bad_file(tmp_path, text, expected):
    path = tmp_path / "pipe.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ=NO_ENV)
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(path)


def test_field_error_in_file_names_file(tmp_path):
    text = (EXAMPLES / "ctr.yaml").read_text().replace("label_window: 30m", "label_window: 30x")
    path = tmp_path / "ctr.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ=NO_ENV)
    assert str(e.value) == (f"{path}: join.label_window: '30x' is not a duration; "
                            "write e.g. 30m or 2h (units ms, s, m, h, d; whole numbers only)")


def test_pipeline_config_has_no_mutable_state():
    cfg = load_config(EXAMPLES / "ctr.yaml", environ=NO_ENV)
    assert isinstance(cfg, PipelineConfig)
    assert isinstance(cfg.features, tuple) and isinstance(cfg.slices, tuple)
    assert hash(cfg) == hash(load_config(EXAMPLES / "ctr.yaml", environ=NO_ENV))


def test_yaml_boolean_feature_name_explained(tmp_path):
    text = (EXAMPLES / "ctr.yaml").read_text().replace("  hour: int", "  no: int")
    path = tmp_path / "ctr.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"features\.False: False is not a feature name "
                                          r"\(yaml reads yes/no/on/off as booleans\); quote it"):
        load_config(path, environ=NO_ENV)


# --- module structure -----------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PARTS = ("schemas.config_checks", "schemas.config_features", "schemas.config_sections")


@pytest.mark.parametrize("module", CONFIG_PARTS)
def test_config_parts_import_alone_without_schemas_config(module):
    code = (f"import sys, {module}; "
            "assert 'schemas.config' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def _imports(path: Path) -> list[ast.ImportFrom]:
    """Every absolute ``from X import ...`` of the file, TYPE_CHECKING blocks included."""
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)
            and n.module and n.level == 0]


@pytest.mark.parametrize("module", CONFIG_PARTS)
def test_config_parts_do_not_import_schemas_config(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert not [n.module for n in _imports(path) if n.module == "schemas.config"]


@pytest.mark.parametrize("package", ["schemas", "jobs"])
def test_no_private_name_is_imported_across_modules(package):
    private = [f"{p.relative_to(ROOT)}: from {n.module} import {a.name}"
               for p in sorted((ROOT / package).rglob("*.py")) for n in _imports(p)
               for a in n.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def test_schemas_config_re_exports_its_parts():
    import schemas.config as C
    from schemas import config_checks, config_features, config_sections
    for name in C.__all__:
        assert hasattr(C, name), name
    assert C.FeatureSpec is config_features.FeatureSpec
    assert C.ModelSpec is config_sections.ModelSpec
    assert C.KafkaSecurity is config_sections.KafkaSecurity
    assert C.parse_duration_ms is config_checks.parse_duration_ms
