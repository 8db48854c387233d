"""The pipeline config: YAML file -> validated, frozen ``PipelineConfig``.

Every invalid field raises ``ConfigError`` naming the dotted field, quoting the bad
value and saying how to fix it. Unknown keys are errors, so typos cannot pass silently.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from schemas.errors import ConfigError

BROKER_ENV = "DLABEL_BROKER"
DEFAULT_BROKER = "kafka://localhost:9092"
FEATURE_TYPES = ("int", "float", "str", "bool")
PII_ACTIONS = ("hash", "drop")
STORES = ("memory", "rocksdb")
# estimator -> the label kind it fits; the first one of a kind is that kind's default
ESTIMATORS = {"sgd_classifier": "binary", "sgd_regressor": "regression",
              "passive_aggressive_classifier": "binary",
              "passive_aggressive_regressor": "regression", "multinomial_nb": "binary"}
# promotion metric -> (label kind, True when higher is better)
PROMOTION_METRICS = {"roc_auc": ("binary", True), "log_loss": ("binary", False),
                     "accuracy": ("binary", True), "mae": ("regression", False),
                     "rmse": ("regression", False)}
# columns of a labeled example before the features (mirrored in schemas.records)
RESERVED_COLUMNS = ("request_id", "request_ts", "window_start", "label", "label_ts",
                    "prediction", "model_version")

_PIPELINE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_HOST_PORT = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}"
_BROKER_RE = re.compile(rf"^kafka://({_HOST_PORT}(?:,{_HOST_PORT})*)$")
_DURATION_PART_RE = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


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
    watermarks: str = ""        # the join's watermark reports for the dataset sink


def default_watermarks_topic(labeled: str) -> str:
    """Name of the watermark-report topic when ``topics.watermarks`` is not set."""
    return f"{labeled}.watermarks"


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
class PromotionSpec:
    """When a challenger replaces the champion (see jobs.promotion).

    ``metric`` on the holdout must improve by at least ``min_gain``, and no slice value
    with at least ``min_slice_rows`` holdout rows may get worse by more than
    ``max_slice_regression`` (both in the metric's own units).
    """
    metric: str = "roc_auc"
    min_gain: float = 0.0
    max_slice_regression: float = 0.05
    min_slice_rows: int = 200


@dataclass(frozen=True)
class DriftSpec:
    """Drift thresholds: PSI for numeric features, L-infinity for categorical ones, and
    the absolute change of the label rate (overall and per slice value with at least
    ``min_rows`` rows in both windows). Features in ``exclude`` are not compared (an hour
    of day always drifts between hourly windows)."""
    psi: float = 0.2
    linf: float = 0.1
    label_rate: float = 0.05
    min_rows: int = 100
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """Where the model registry lives, which estimator is trained and how jobs run.

    Durations in milliseconds. ``exclude`` lists kept features the model does not use;
    ``categorical`` int/bool features it treats as categories instead of quantities.
    """
    path: str
    estimator: str = "sgd_classifier"
    holdout_fraction: float = 0.2
    job_timeout_ms: int = 600_000
    retries: int = 2
    retry_backoff_ms: int = 1_000
    seed: int = 0
    exclude: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    promotion: PromotionSpec = PromotionSpec()
    drift: DriftSpec = DriftSpec()


KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
KAFKA_PASSWORD_ENV = "DLABEL_KAFKA_PASSWORD"


@dataclass(frozen=True)
class KafkaSecurity:
    """How clients authenticate to the cluster (``kafka:`` section); PLAINTEXT by default.

    The SASL password comes from an environment variable or a file, never from the
    config itself, and is left out of ``repr`` so that it is never logged.
    """
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = dc_field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol.endswith("SSL")


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


def _fail(field: str, message: str) -> ConfigError:
    return ConfigError(f"{field}: {message}")


def parse_duration_ms(text: str | int, field: str) -> int:
    """Parse a duration ('500ms', '90s', '30m', '2h', '1d', '1h30m'; plain int = ms) to ms.

    Returns a non-negative int; callers check positivity where required.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise _fail(field, f"{text!r} is negative; write a positive duration, e.g. 30m")
        return text
    if isinstance(text, str):
        compact = text.strip().replace(" ", "")
        parts = _DURATION_PART_RE.findall(compact)
        if parts and "".join(n + u for n, u in parts) == compact:
            return sum(int(n) * _UNIT_MS[u] for n, u in parts)
    raise _fail(field, f"{text!r} is not a duration; write e.g. 30m or 2h "
                       "(units ms, s, m, h, d; whole numbers only)")


def validate_broker(value: Any, field: str = "broker") -> str:
    """Check a broker URL ``kafka://host:port[,host:port...]`` and return it."""
    m = _BROKER_RE.match(value) if isinstance(value, str) else None
    if m is None or not all(0 < int(hp.rsplit(":", 1)[1]) < 65536 for hp in m.group(1).split(",")):
        raise _fail(field, f"{value!r} is not a broker url; write e.g. kafka://localhost:9092 "
                           "or kafka://host1:9092,host2:9092")
    return value


class _Section:
    """A mapping being validated: tracks the dotted prefix and rejects unknown keys."""

    def __init__(self, data: Any, prefix: str, allowed: tuple[str, ...]) -> None:
        where = prefix or "config"
        if not isinstance(data, dict):
            raise _fail(where, f"{data!r} is not a mapping; write {where} as 'key: value' lines")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise _fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; "
                               f"allowed keys are {', '.join(allowed)}")
        self.data, self.prefix = data, prefix

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def get(self, key: str, check: Callable[[Any, str], Any], default: Any = ...) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is ...:
                raise _fail(self.name(key), "is required but missing; add it to the config")
            return default
        return check(value, self.name(key))

    def sub(self, key: str, allowed: tuple[str, ...]) -> _Section:
        """The required sub-section ``key``, itself validated."""
        return _Section(self.get(key, lambda v, f: v), self.name(key), allowed)


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _fail(field, f"{value!r} is not a non-empty string; write a name or path")
    return value


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, f"{value!r} is not a boolean; write true or false")
    return value


def _pattern(regex: re.Pattern[str], hint: str) -> Callable[[Any, str], str]:
    def check(value: Any, field: str) -> str:
        if not isinstance(value, str) or not regex.match(value):
            raise _fail(field, f"{value!r} is not a valid name; {hint}")
        return value
    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, field: str) -> str:
        if value not in options:
            raise _fail(field, f"{value!r} is not allowed; write one of {', '.join(options)}")
        return value
    return check


def _positive_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(field, f"{value!r} is not a positive integer; write e.g. 4")
    return value


def _non_negative_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(field, f"{value!r} is not a whole number >= 0; write e.g. 2")
    return value


def _number(lo: float, hi: float, example: str) -> Callable[[Any, str], float]:
    def check(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not lo <= value <= hi:
            raise _fail(field, f"{value!r} is not a number in [{lo:g}, {hi:g}]; write e.g. "
                               f"{example}")
        return float(value)
    return check


def _duration(positive: bool) -> Callable[[Any, str], int]:
    def check(value: Any, field: str) -> int:
        ms = parse_duration_ms(value, field)
        if positive and ms == 0:
            raise _fail(field, f"{value!r} is zero; write a positive duration, e.g. 30m")
        return ms
    return check


def _names(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(field, f"{value!r} is not a non-empty list; write e.g. [click]")
    for i, item in enumerate(value):
        _str(item, f"{field}[{i}]")
    if len(set(value)) != len(value):
        raise _fail(field, f"{value!r} has duplicates; list each name once")
    return tuple(value)


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
                           "watermarks", "partitions", "replication_factor"))
    topic = _pattern(_TOPIC_RE, "kafka topic names use 1-249 letters, digits, '.', '_', '-'")
    names = {k: t.get(k, topic) for k in ("requests", "feedback", "labeled", "dead_letter",
                                          "windows")}
    names["watermarks"] = t.get("watermarks", topic, default_watermarks_topic(names["labeled"]))
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


def _kafka_security(top: "_Section", environ: Mapping[str, str]) -> KafkaSecurity:
    if top.data.get("kafka") is None:
        return KafkaSecurity()
    k = top.sub("kafka", ("security_protocol", "sasl_mechanism", "sasl_username",
                          "sasl_password_env", "sasl_password_file", "ssl_cafile",
                          "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"))
    protocol = k.get("security_protocol", _choice(KAFKA_PROTOCOLS), "PLAINTEXT")
    sec = dict(security_protocol=protocol,
               ssl_cafile=k.get("ssl_cafile", _str, None),
               ssl_certfile=k.get("ssl_certfile", _str, None),
               ssl_keyfile=k.get("ssl_keyfile", _str, None),
               ssl_check_hostname=k.get("ssl_check_hostname", _bool, True))
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if sec[key] is not None and not Path(sec[key]).is_file():
            raise _fail(f"kafka.{key}", f"{sec[key]!r} is not a readable file; give the path "
                                        "of a PEM file")
    if (sec["ssl_certfile"] is None) != (sec["ssl_keyfile"] is None):
        raise _fail("kafka.ssl_keyfile", "ssl_certfile and ssl_keyfile go together (client "
                                         "certificate authentication); set both or neither")
    if not protocol.startswith("SASL_"):
        return KafkaSecurity(**sec)
    mechanism = k.get("sasl_mechanism", _choice(SASL_MECHANISMS))
    username = k.get("sasl_username", _str)
    pw_file = k.get("sasl_password_file", _str, None)
    pw_env = k.get("sasl_password_env", _str, KAFKA_PASSWORD_ENV)
    if pw_file is not None:
        try:
            password = Path(pw_file).read_text().strip()
        except OSError as e:
            raise _fail("kafka.sasl_password_file", f"{pw_file!r} cannot be read ({e.strerror}); "
                                                    "mount the secret there") from None
    else:
        password = environ.get(pw_env)
        if not password:
            raise _fail("kafka.sasl_password_env", f"environment variable {pw_env} is not set; "
                                                   "export the SASL password there or set "
                                                   "kafka.sasl_password_file")
    return KafkaSecurity(**sec, sasl_mechanism=mechanism, sasl_username=username,
                         sasl_password=password)


_MODEL_KEYS = ("path", "estimator", "holdout_fraction", "job_timeout", "retries",
               "retry_backoff", "seed", "exclude", "categorical", "promotion", "drift")


def _model(top: _Section, kind: str, features: tuple[FeatureSpec, ...]) -> ModelSpec:
    """The ``model:`` section: registry path, estimator, job settings, promotion, drift."""
    m = top.sub("model", _MODEL_KEYS)
    default_est = next(e for e, k in ESTIMATORS.items() if k == kind)
    estimator = m.get("estimator", _choice(tuple(ESTIMATORS)), default_est)
    if ESTIMATORS[estimator] != kind:
        fits = ", ".join(e for e, k in ESTIMATORS.items() if k == kind)
        raise _fail("model.estimator", f"{estimator!r} does not fit label kind {kind!r}; "
                                       f"write {default_est}" + (f" (or one of {fits})"
                                                                 if "," in fits else ""))
    kept = {f.name for f in features if f.pii != "drop"}
    exclude = m.get("exclude", _names, ())
    for i, name in enumerate(exclude):
        if name not in kept:
            raise _fail(f"model.exclude[{i}]", f"{name!r} is not a kept feature; exclude one of "
                                               f"{', '.join(sorted(kept))}")
    types = {f.name: f.type for f in features}
    categorical = m.get("categorical", _names, ())
    for i, name in enumerate(categorical):
        if name not in kept or types[name] not in ("int", "bool"):
            ints = sorted(n for n in kept if types[n] in ("int", "bool"))
            raise _fail(f"model.categorical[{i}]", f"{name!r} is not a kept int or bool feature "
                                                   "(str features are categories already); "
                                                   f"name one of {', '.join(ints) or 'none'}")
    if set(exclude) == kept:
        raise _fail("model.exclude", f"{list(exclude)!r} excludes every feature; keep at least one")
    p = _Section(m.data.get("promotion") or {}, "model.promotion",
                 ("metric", "min_gain", "max_slice_regression", "min_slice_rows"))
    metrics = tuple(k for k, (mk, _) in PROMOTION_METRICS.items() if mk == kind)
    promotion = PromotionSpec(
        metric=p.get("metric", _choice(metrics), metrics[0]),
        min_gain=p.get("min_gain", _number(-1e9, 1e9, "0.002"), 0.0),
        max_slice_regression=p.get("max_slice_regression", _number(0, 1e9, "0.05"), 0.05),
        min_slice_rows=p.get("min_slice_rows", _positive_int, 200))
    d = _Section(m.data.get("drift") or {}, "model.drift", ("psi", "linf", "label_rate",
                                                             "min_rows", "exclude"))
    drift_exclude = d.get("exclude", _names, ())
    for i, name in enumerate(drift_exclude):
        if name not in kept:
            raise _fail(f"model.drift.exclude[{i}]", f"{name!r} is not a kept feature; exclude "
                                                     f"one of {', '.join(sorted(kept))}")
    drift = DriftSpec(psi=d.get("psi", _number(0, 1e9, "0.2"), 0.2),
                      linf=d.get("linf", _number(0, 1, "0.1"), 0.1),
                      label_rate=d.get("label_rate", _number(0, 1e9, "0.05"), 0.05),
                      min_rows=d.get("min_rows", _positive_int, 100), exclude=drift_exclude)
    holdout = m.get("holdout_fraction", _number(0, 1, "0.2"), 0.2)
    if not 0.0 < holdout < 1.0:
        raise _fail("model.holdout_fraction", f"{holdout!r} leaves nothing to train or to "
                                              "evaluate; write a fraction such as 0.2")
    return ModelSpec(path=m.get("path", _str), estimator=estimator, holdout_fraction=holdout,
                     job_timeout_ms=m.get("job_timeout", _duration(True), 600_000),
                     retries=m.get("retries", _non_negative_int, 2),
                     retry_backoff_ms=m.get("retry_backoff", _duration(False), 1_000),
                     seed=m.get("seed", _non_negative_int, 0), exclude=exclude,
                     categorical=categorical,
                     promotion=promotion, drift=drift)


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
