"""The ``model:`` and ``kafka:`` sections of the pipeline config.

``model:`` says how retraining jobs run (estimator, holdout, timeouts and retries,
promotion rule, drift thresholds); ``kafka:`` how every client authenticates.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from schemas.config_checks import (_Section, _bool, _choice, _duration, _fail, _names,
                                   _non_negative_int, _number, _positive_int, _str)

if TYPE_CHECKING:
    from schemas.config import FeatureSpec

# estimator -> the label kind it fits; the first one of a kind is that kind's default
ESTIMATORS = {"sgd_classifier": "binary", "sgd_regressor": "regression",
              "passive_aggressive_classifier": "binary",
              "passive_aggressive_regressor": "regression", "multinomial_nb": "binary"}
# promotion metric -> (label kind, True when higher is better)
PROMOTION_METRICS = {"roc_auc": ("binary", True), "log_loss": ("binary", False),
                     "accuracy": ("binary", True), "mae": ("regression", False),
                     "rmse": ("regression", False)}


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
