"""The pipeline config: YAML file -> validated, frozen ``PipelineConfig``.

Every invalid field raises ``ConfigError`` naming the dotted field, quoting the bad
value and saying how to fix it. Unknown keys are errors, so typos cannot pass silently.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from schemas.config_checks import (_Section, _choice, _duration, _fail, _names, _pattern,
                                   _positive_int, _str, validate_broker)
from schemas.config_checks import parse_duration_ms  # noqa: F401  (re-exported)
from schemas.config_sections import KafkaSecurity, ModelSpec, _kafka_security, _model
from schemas.config_sections import (  # noqa: F401  (re-exported: one import for users)
    ESTIMATORS, KAFKA_PASSWORD_ENV, KAFKA_PROTOCOLS, PROMOTION_METRICS, SASL_MECHANISMS,
    DriftSpec, PromotionSpec)
from schemas.errors import ConfigError

BROKER_ENV = "DLABEL_BROKER"
DEFAULT_BROKER = "kafka://localhost:9092"
FEATURE_TYPES = ("int", "float", "str", "bool")
PII_ACTIONS = ("hash", "drop")
STORES = ("memory", "rocksdb")
# columns of a labeled example before the features (mirrored in schemas.records)
RESERVED_COLUMNS = ("request_id", "request_ts", "window_start", "label", "label_ts",
                    "prediction", "model_version")

_PIPELINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class FeatureSpec:
    """A declared feature: its name, type and PII handling (None, 'hash' or 'drop')."""
    name: str
    type: str
    pii: str | None = None


@dataclass(frozen=True)
class TopicsSpec:
    """The Kafka topics of one pipeline."""
    requests: str
    feedback: str
    labeled: str
    dead_letter: str
    windows: str
    partitions: int = 4
    replication_factor: int = 1
    closed_time: str = ""       # the join's closed-time reports for the dataset sink


def default_closed_time_topic(labeled: str) -> str:
    """Name of the closed-time report topic when ``topics.closed_time`` is not set."""
    return f"{labeled}.closed-time"


@dataclass(frozen=True, kw_only=True)
class JoinSpec:
    """How requests and feedback are joined (durations in milliseconds; keywords only)."""
    key: str = "request_id"
    label_window_ms: int
    allowed_lateness_ms: int = 0
    idle_timeout_ms: int = 30_000


@dataclass(frozen=True)
class LabelSpec:
    """How a label is derived from feedback (see DESIGN.md, 'the oracle')."""
    kind: str
    positive: tuple[str, ...] = ()
    feedback: tuple[str, ...] = ()
    value: str = "elapsed_seconds"

    @property
    def value_field(self) -> str | None:
        """The feedback field carrying the outcome for ``value: field:<name>``, else None."""
        return self.value[6:] if self.value.startswith("field:") else None


@dataclass(frozen=True)
class DatasetSpec:
    """Where the Parquet dataset goes, how long a window is (ms), when the sink flushes."""
    path: str
    window_ms: int
    flush_rows: int = 50_000
    flush_interval_ms: int = 30_000


@dataclass(frozen=True)
class PipelineConfig:
    """A whole validated pipeline config."""
    pipeline: str
    broker: str
    topics: TopicsSpec
    join: JoinSpec
    label: LabelSpec
    features: tuple[FeatureSpec, ...]
    slices: tuple[str, ...]
    dataset: DatasetSpec
    model: ModelSpec
    store: str = "memory"
    state_dir: str = ".dlabel-state"
    kafka: KafkaSecurity = KafkaSecurity()

    @property
    def bootstrap_servers(self) -> str:
        """The broker as ``host:port[,host:port...]`` (what Kafka clients expect)."""
        return self.broker[len("kafka://"):]

    @property
    def kept_features(self) -> tuple[FeatureSpec, ...]:
        """The features that appear in output (all but ``pii: drop``), in config order."""
        return tuple(f for f in self.features if f.pii != "drop")


def _feature(name: Any, spec: Any) -> FeatureSpec:
    field = f"features.{name}"
    if isinstance(name, bool):
        raise _fail(field, f"{name!r} is not a feature name (yaml reads yes/no/on/off as "
                           "booleans); quote it, e.g. 'no': int")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail(field, f"{name!r} is not a valid feature name; use letters, digits, "
                           "'_', '.' or '-', starting with a letter or '_'")
    if name in RESERVED_COLUMNS:
        raise _fail(field, f"{name!r} clashes with a labeled-example column; rename the feature "
                           f"(reserved: {', '.join(RESERVED_COLUMNS)})")
    if isinstance(spec, str):
        return FeatureSpec(name, _choice(FEATURE_TYPES)(spec, f"{field}.type"))
    sec = _Section(spec, field, ("type", "pii"))
    ftype = sec.get("type", _choice(FEATURE_TYPES))
    pii = sec.get("pii", _choice(PII_ACTIONS), None)
    if pii == "hash" and ftype != "str":
        raise _fail(f"{field}.type", f"{ftype!r} cannot be hashed (hashes are hex strings); "
                                     "declare type: str")
    return FeatureSpec(name, ftype, pii)


def _label(sec: _Section, join_key: str) -> LabelSpec:
    kind = sec.get("kind", _choice(("binary", "regression")))
    if kind == "binary":
        for key in ("feedback", "value"):
            if key in sec.data:
                raise _fail(sec.name(key), "is only for kind: regression; remove it or "
                                           "use positive: [...]")
        return LabelSpec(kind, positive=sec.get("positive", _names))
    if "positive" in sec.data:
        raise _fail(sec.name("positive"), "is only for kind: binary; use feedback: [...]")
    value = sec.get("value", _str, "elapsed_seconds")
    target = value[6:] if value.startswith("field:") else None
    if value != "elapsed_seconds" and not (target and _NAME_RE.match(target)):
        raise _fail(sec.name("value"), f"{value!r} is not allowed; write elapsed_seconds or "
                                       "field:<name of a numeric feedback field>")
    if target in (join_key, "ts", "type"):
        raise _fail(sec.name("value"), f"{value!r} names a key/time/type field, not an outcome; "
                                       "use elapsed_seconds for durations")
    return LabelSpec(kind, feedback=sec.get("feedback", _names), value=value)


_TOP_KEYS = ("pipeline", "broker", "topics", "join", "label", "features", "slices",
             "dataset", "model", "store", "state_dir", "kafka")


def config_from_dict(data: dict, source: str = "<dict>", broker: str | None = None,
                     environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Validate a parsed config mapping.

    Broker precedence: ``broker`` argument > ``DLABEL_BROKER`` in ``environ`` (default
    ``os.environ``) > the mapping's ``broker:`` > ``kafka://localhost:9092``.
    Errors are prefixed with ``source``.
    """
    try:
        return _build(data, broker, os.environ if environ is None else environ)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _build(data: Any, broker: str | None, environ: Mapping[str, str]) -> PipelineConfig:
    top = _Section(data, "", _TOP_KEYS)
    pipeline = top.get("pipeline", _pattern(_PIPELINE_RE, "use 1-64 letters, digits, '.', "
                                            "'_' or '-', starting with a letter or digit"))
    if broker:
        broker = validate_broker(broker, "--broker")
    elif environ.get(BROKER_ENV):
        broker = validate_broker(environ[BROKER_ENV], BROKER_ENV)
    else:
        broker = top.get("broker", validate_broker, DEFAULT_BROKER)

    t = top.sub("topics", ("requests", "feedback", "labeled", "dead_letter", "windows",
                           "closed_time", "partitions", "replication_factor"))
    topic = _pattern(_TOPIC_RE, "kafka topic names use 1-249 letters, digits, '.', '_', '-'")
    names = {k: t.get(k, topic) for k in ("requests", "feedback", "labeled", "dead_letter",
                                          "windows")}
    names["closed_time"] = t.get("closed_time", topic, default_closed_time_topic(names["labeled"]))
    for key, value in names.items():
        other = next((k for k, v in names.items() if v == value and k != key), None)
        if other:
            raise _fail(f"topics.{key}", f"{value!r} is also topics.{other}; give each topic "
                                         "its own name")
    topics = TopicsSpec(**names, partitions=t.get("partitions", _positive_int, 4),
                        replication_factor=t.get("replication_factor", _positive_int, 1))

    j = top.sub("join", ("key", "label_window", "allowed_lateness", "idle_timeout"))
    join = JoinSpec(key=j.get("key", _pattern(_NAME_RE, "write e.g. request_id"), "request_id"),
                    label_window_ms=j.get("label_window", _duration(True)),
                    allowed_lateness_ms=j.get("allowed_lateness", _duration(False), 0),
                    idle_timeout_ms=j.get("idle_timeout", _duration(True), 30_000))

    label = _label(top.sub("label", ("kind", "positive", "feedback", "value")), join.key)

    raw_features = top.get("features", lambda v, f: v)
    if not isinstance(raw_features, dict) or not raw_features:
        raise _fail("features", f"{raw_features!r} is not a non-empty mapping; write e.g. "
                                "'hour: int' lines (types int, float, str, bool)")
    features = tuple(_feature(n, s) for n, s in raw_features.items())

    slices = top.get("slices", _names, ())
    kept = {f.name for f in features if f.pii != "drop"}
    for i, s in enumerate(slices):
        if s not in kept:
            raise _fail(f"slices[{i}]", f"{s!r} is not a declared feature (or is dropped PII); "
                                        f"slice by one of {', '.join(sorted(kept))}")

    d = top.sub("dataset", ("path", "window", "flush_rows", "flush_interval"))
    dataset = DatasetSpec(d.get("path", _str), d.get("window", _duration(True)),
                          flush_rows=d.get("flush_rows", _positive_int, 50_000),
                          flush_interval_ms=d.get("flush_interval", _duration(True), 30_000))

    model = _model(top, label.kind, features)
    return PipelineConfig(pipeline=pipeline, broker=broker, topics=topics, join=join,
                          label=label, features=features, slices=slices, dataset=dataset,
                          model=model,
                          store=top.get("store", _choice(STORES), "memory"),
                          state_dir=top.get("state_dir", _str, ".dlabel-state"),
                          kafka=_kafka_security(top, environ))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict:
    seen: list[Any] = []
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}; keep only one", key_node.start_mark)
        seen.append(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _construct_mapping)


def load_config(path: str | Path, broker: str | None = None,
                environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read and validate a YAML pipeline config file.

    Broker precedence: ``broker`` argument > env ``DLABEL_BROKER`` > the file's
    ``broker:`` > ``kafka://localhost:9092``.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid yaml: {e}") from None
    if data is None:
        raise ConfigError(f"{path}: config file is empty; see examples/ctr.yaml")
    return config_from_dict(data, source=str(path), broker=broker, environ=environ)
