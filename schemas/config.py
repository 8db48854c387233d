"""The pipeline config: YAML file -> validated, frozen ``PipelineConfig``.

Every invalid field raises ``ConfigError`` naming the dotted field, quoting the bad
value and saying how to fix it. Unknown keys are errors, so typos cannot pass silently.

The checks live in ``schemas.config_checks``, the ``features:`` section in
``schemas.config_features``, the ``model:`` and ``kafka:`` sections in
``schemas.config_sections``; this module re-exports their public names (``__all__``),
so ``from schemas.config import ...`` is the one import for users.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from schemas.config_checks import (NAME_RE, Section, byte_size, choice, duration, fail,
                                   name_list,
                                   non_empty_str, parse_duration_ms, pattern, positive_int,
                                   validate_broker)
from schemas.config_features import (FEATURE_TYPES, PII_ACTIONS, RESERVED_COLUMNS, FeatureSpec,
                                     feature_specs, kept_feature_names)
from schemas.config_iceberg import IcebergSpec, iceberg_spec
from schemas.config_inputs import TS_UNITS, FieldPath, InputsSpec, RoleInputs, inputs_spec
from schemas.config_jobs import JobsSpec, jobs_spec
from schemas.config_sections import (ESTIMATORS, KAFKA_PASSWORD_ENV, KAFKA_PROTOCOLS,
                                     PROMOTION_METRICS, SASL_MECHANISMS, DriftSpec,
                                     KafkaSecurity, ModelSpec, PromotionSpec, kafka_security,
                                     model_spec)
from schemas.errors import ConfigError

__all__ = [
    "BROKER_ENV", "DEFAULT_BROKER", "ESTIMATORS", "FEATURE_TYPES", "KAFKA_PASSWORD_ENV",
    "KAFKA_PROTOCOLS", "PII_ACTIONS", "PROMOTION_METRICS", "RESERVED_COLUMNS",
    "SASL_MECHANISMS", "STORES", "TS_UNITS", "DatasetSpec", "DriftSpec", "FeatureSpec",
    "FieldPath", "IcebergSpec", "InputsSpec", "JobsSpec", "JoinSpec", "RoleInputs",
    "KafkaSecurity", "LabelSpec", "ModelSpec", "PipelineConfig", "PromotionSpec",
    "TopicsSpec", "config_from_dict", "default_closed_time_topic", "load_config",
    "repartition_topic",
    "parse_duration_ms", "validate_broker",
]

BROKER_ENV = "DLABEL_BROKER"
DEFAULT_BROKER = "kafka://localhost:9092"
STORES = ("memory", "rocksdb")

_PIPELINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


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


def repartition_topic(input_topic: str) -> str:
    """The topic the worker repartitions ``input_topic`` into, keyed by the join key."""
    return f"{input_topic}.repartition"


def default_closed_time_topic(labeled: str) -> str:
    """Name of the closed-time report topic when ``topics.closed_time`` is not set."""
    return f"{labeled}.closed-time"


#: ``join.dedupe_retention`` when not set: a day
DEFAULT_DEDUPE_RETENTION_MS = 24 * 3600 * 1000


@dataclass(frozen=True, kw_only=True)
class JoinSpec:
    """How requests and feedback are joined (durations in milliseconds; keywords only)."""
    key: str = "request_id"
    label_window_ms: int
    allowed_lateness_ms: int = 0
    idle_timeout_ms: int = 30_000
    #: how long after a request is finalized a late, in-window feedback still corrects
    #: its label (0: off; such feedback is a ``late`` dead letter)
    correction_window_ms: int = 0
    #: how long past its label window a finalized request's id is remembered, so that a
    #: later request with the same id is a ``duplicate_request`` (memory: ~200 bytes a
    #: request finalized in that time)
    dedupe_retention_ms: int = DEFAULT_DEDUPE_RETENTION_MS


@dataclass(frozen=True)
class LabelSpec:
    """How a label is derived from feedback (see DESIGN.md, 'the oracle')."""
    kind: str
    positive: tuple[str, ...] = ()
    feedback: tuple[str, ...] = ()
    value: str = "elapsed_seconds"
    #: share of negatives kept (binary), chosen by a hash of the request id
    negative_sample_rate: float = 1.0

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
    target_file_size: int = 256 << 20   # bytes per data file of a closed window
    iceberg: Optional[IcebergSpec] = None  # commit closed windows to this table too


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
    inputs: InputsSpec = InputsSpec()
    jobs: JobsSpec = JobsSpec()

    @property
    def bootstrap_servers(self) -> str:
        """The broker as ``host:port[,host:port...]`` (what Kafka clients expect)."""
        return self.broker[len("kafka://"):]

    @property
    def repartitions(self) -> bool:
        """Whether the worker repartitions its inputs by the join key (the default)."""
        return not self.inputs.copartitioned

    @property
    def join_inputs(self) -> dict[str, str]:
        """``{role: topic}`` the join reads: the repartition topics, or the inputs
        themselves when ``inputs.copartitioned`` promises they are keyed right."""
        t = self.topics
        if self.inputs.copartitioned:
            return {"requests": t.requests, "feedback": t.feedback}
        return {"requests": repartition_topic(t.requests),
                "feedback": repartition_topic(t.feedback)}

    @property
    def kept_features(self) -> tuple[FeatureSpec, ...]:
        """The features that appear in output (all but ``pii: drop``), in config order."""
        return tuple(f for f in self.features if f.pii != "drop")


def _sample_rate(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise fail(field, f"{value!r} is not a rate in (0, 1]; write e.g. 0.1 to keep one "
                          "negative in ten, or 1 to keep all")
    return float(value)


def _label(sec: Section, join_key: str) -> LabelSpec:
    kind = sec.get("kind", choice(("binary", "regression")))
    if kind == "binary":
        for key in ("feedback", "value"):
            if key in sec.data:
                raise fail(sec.name(key), "is only for kind: regression; remove it or "
                                           "use positive: [...]")
        return LabelSpec(kind, positive=sec.get("positive", name_list),
                         negative_sample_rate=sec.get("negative_sample_rate", _sample_rate, 1.0))
    if "negative_sample_rate" in sec.data:
        raise fail(sec.name("negative_sample_rate"), "is only for kind: binary (a regression "
                                                      "label has no negatives); remove it")
    if "positive" in sec.data:
        raise fail(sec.name("positive"), "is only for kind: binary; use feedback: [...]")
    value = sec.get("value", non_empty_str, "elapsed_seconds")
    target = value[6:] if value.startswith("field:") else None
    if value != "elapsed_seconds" and not (target and NAME_RE.match(target)):
        raise fail(sec.name("value"), f"{value!r} is not allowed; write elapsed_seconds or "
                                       "field:<name of a numeric feedback field>")
    if target in (join_key, "ts", "type"):
        raise fail(sec.name("value"), f"{value!r} names a key/time/type field, not an outcome; "
                                       "use elapsed_seconds for durations")
    return LabelSpec(kind, feedback=sec.get("feedback", name_list), value=value)


_TOP_KEYS = ("pipeline", "broker", "topics", "join", "label", "features", "slices",
             "dataset", "model", "store", "state_dir", "kafka", "inputs", "jobs")


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
    top = Section(data, "", _TOP_KEYS)
    pipeline = top.get("pipeline", pattern(_PIPELINE_RE, "use 1-64 letters, digits, '.', "
                                            "'_' or '-', starting with a letter or digit"))
    if broker:
        broker = validate_broker(broker, "--broker")
    elif environ.get(BROKER_ENV):
        broker = validate_broker(environ[BROKER_ENV], BROKER_ENV)
    else:
        broker = top.get("broker", validate_broker, DEFAULT_BROKER)

    t = top.sub("topics", ("requests", "feedback", "labeled", "dead_letter", "windows",
                           "closed_time", "partitions", "replication_factor"))
    topic = pattern(_TOPIC_RE, "kafka topic names use 1-249 letters, digits, '.', '_', '-'")
    names = {k: t.get(k, topic) for k in ("requests", "feedback", "labeled", "dead_letter",
                                          "windows")}
    names["closed_time"] = t.get("closed_time", topic, default_closed_time_topic(names["labeled"]))
    for key, value in names.items():
        other = next((k for k, v in names.items() if v == value and k != key), None)
        if other:
            raise fail(f"topics.{key}", f"{value!r} is also topics.{other}; give each topic "
                                         "its own name")
    topics = TopicsSpec(**names, partitions=t.get("partitions", positive_int, 4),
                        replication_factor=t.get("replication_factor", positive_int, 1))

    j = top.sub("join", ("key", "label_window", "allowed_lateness", "idle_timeout",
                         "correction_window", "dedupe_retention"))
    join = JoinSpec(key=j.get("key", pattern(NAME_RE, "write e.g. request_id"), "request_id"),
                    label_window_ms=j.get("label_window", duration(True)),
                    allowed_lateness_ms=j.get("allowed_lateness", duration(False), 0),
                    idle_timeout_ms=j.get("idle_timeout", duration(True), 30_000),
                    correction_window_ms=j.get("correction_window", duration(False), 0),
                    dedupe_retention_ms=j.get("dedupe_retention", duration(False),
                                              DEFAULT_DEDUPE_RETENTION_MS))

    label = _label(top.sub("label", ("kind", "positive", "feedback", "value",
                                     "negative_sample_rate")), join.key)

    features = feature_specs(top)

    slices = top.get("slices", name_list, ())
    kept = kept_feature_names(features)
    for i, s in enumerate(slices):
        if s not in kept:
            raise fail(f"slices[{i}]", f"{s!r} is not a declared feature (or is dropped PII); "
                                        f"slice by one of {', '.join(sorted(kept))}")

    d = top.sub("dataset", ("path", "window", "flush_rows", "flush_interval",
                            "target_file_size", "iceberg"))
    dataset = DatasetSpec(d.get("path", non_empty_str), d.get("window", duration(True)),
                          flush_rows=d.get("flush_rows", positive_int, 50_000),
                          flush_interval_ms=d.get("flush_interval", duration(True), 30_000),
                          target_file_size=d.get("target_file_size", byte_size, 256 << 20),
                          iceberg=iceberg_spec(d))

    model = model_spec(top, label.kind, features)
    return PipelineConfig(pipeline=pipeline, broker=broker, topics=topics, join=join,
                          label=label, features=features, slices=slices, dataset=dataset,
                          model=model,
                          store=top.get("store", choice(STORES), "memory"),
                          state_dir=top.get("state_dir", non_empty_str, ".dlabel-state"),
                          kafka=kafka_security(top, environ),
                          inputs=inputs_spec(top, join.key, label.value_field),
                          jobs=jobs_spec(top))


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
