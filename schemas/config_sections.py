"""The ``model:`` and ``kafka:`` sections of the pipeline config.

``model:`` says how retraining jobs run (estimator, holdout, timeouts and retries,
promotion rule, drift thresholds); ``kafka:`` how every client authenticates.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Mapping

from schemas.config_checks import (Section, boolean, choice, duration, fail, name_list,
                                   non_empty_str, non_negative_int, number, positive_int)
from schemas.config_estimator import ESTIMATORS, UpdateSpec, estimator_settings
from schemas.config_features import FeatureSpec, kept_feature_names

__all__ = ["ESTIMATORS", "KAFKA_PASSWORD_ENV", "KAFKA_PROTOCOLS", "PROMOTION_METRICS",
           "SASL_MECHANISMS", "DriftSpec", "KafkaSecurity", "ModelSpec", "PromotionSpec",
           "UpdateSpec", "kafka_security", "model_spec"]

# promotion metric -> (label kind, True when higher is better)
PROMOTION_METRICS = {"roc_auc": ("binary", True), "log_loss": ("binary", False),
                     "accuracy": ("binary", True), "mae": ("regression", False),
                     "rmse": ("regression", False)}


@dataclass(frozen=True)
class PromotionSpec:
    """When a challenger replaces the champion (see jobs.promotion, jobs.evaluation).

    ``evaluate`` says on which rows both models are scored: ``shadow`` (the challenger
    trained on window N is judged against the champion on window N + 1, unseen by both)
    or ``holdout`` (the time-later ``holdout_fraction`` of the window itself). The lower
    bound of the ``confidence`` interval of the gain in ``metric`` must exceed
    ``min_gain``, and no slice value with at least ``min_slice_rows`` rows may regress
    significantly (the lower bound of its interval) by more than
    ``max_slice_regression`` (both in the metric's own units). ``confidence`` 0 compares
    point estimates.
    """
    metric: str = "roc_auc"
    min_gain: float = 0.0
    max_slice_regression: float = 0.05
    min_slice_rows: int = 200
    confidence: float = 0.95
    evaluate: str = "shadow"


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
    ``estimator`` is a built-in name or a factory path ``package.module:factory``;
    ``training`` is ``incremental`` (``partial_fit`` on the champion's copy) or ``refit``
    (a fresh fit on the last ``refit_windows`` windows); ``trusted_types`` are the type
    names beyond skops' defaults the registry may load (see schemas.config_estimator).
    ``on_drift`` is how a job whose window shows drift adapts (see jobs.adapt): ``none``,
    ``recency`` (the window's rows weigh more, the drifted slices' most) or ``refit``
    (a new model on the recent windows, the latest weighing most). ``updates``: in-window
    updates of the serving model (``update_every``, ``update_guard``; jobs.online).
    """
    path: str
    estimator: str = "sgd_classifier"
    training: str = "incremental"
    refit_windows: int = 6
    trusted_types: tuple[str, ...] = ()
    holdout_fraction: float = 0.2
    job_timeout_ms: int = 600_000
    retries: int = 2
    retry_backoff_ms: int = 1_000
    seed: int = 0
    exclude: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    promotion: PromotionSpec = PromotionSpec()
    drift: DriftSpec = DriftSpec()
    on_drift: str = "recency"
    updates: UpdateSpec = UpdateSpec()


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
        """True for SASL_PLAINTEXT and SASL_SSL."""
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        """True for SSL and SASL_SSL."""
        return self.security_protocol.endswith("SSL")


def kafka_security(top: Section, environ: Mapping[str, str]) -> KafkaSecurity:
    """The optional ``kafka:`` section; the SASL password is read from ``environ`` or a file."""
    if top.data.get("kafka") is None:
        return KafkaSecurity()
    k = top.sub("kafka", ("security_protocol", "sasl_mechanism", "sasl_username",
                          "sasl_password_env", "sasl_password_file", "ssl_cafile",
                          "ssl_certfile", "ssl_keyfile", "ssl_check_hostname"))
    protocol = k.get("security_protocol", choice(KAFKA_PROTOCOLS), "PLAINTEXT")
    sec = _ssl_settings(k)
    if not protocol.startswith("SASL_"):
        return KafkaSecurity(security_protocol=protocol, **sec)
    mechanism = k.get("sasl_mechanism", choice(SASL_MECHANISMS))
    username = k.get("sasl_username", non_empty_str)
    return KafkaSecurity(security_protocol=protocol, **sec, sasl_mechanism=mechanism,
                         sasl_username=username, sasl_password=_sasl_password(k, environ))


def _ssl_settings(k: Section) -> dict[str, Any]:
    """The ``ssl_*`` keys of ``kafka:``: PEM files that exist, certificate and key together."""
    sec = dict(ssl_cafile=k.get("ssl_cafile", non_empty_str, None),
               ssl_certfile=k.get("ssl_certfile", non_empty_str, None),
               ssl_keyfile=k.get("ssl_keyfile", non_empty_str, None),
               ssl_check_hostname=k.get("ssl_check_hostname", boolean, True))
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if sec[key] is not None and not Path(sec[key]).is_file():
            raise fail(f"kafka.{key}", f"{sec[key]!r} is not a readable file; give the path "
                                       "of a PEM file")
    if (sec["ssl_certfile"] is None) != (sec["ssl_keyfile"] is None):
        raise fail("kafka.ssl_keyfile", "ssl_certfile and ssl_keyfile go together (client "
                                        "certificate authentication); set both or neither")
    return sec


def _sasl_password(k: Section, environ: Mapping[str, str]) -> str:
    """The SASL password: from ``sasl_password_file`` if set, else from the environment
    variable ``sasl_password_env`` (default ``DLABEL_KAFKA_PASSWORD``)."""
    pw_file = k.get("sasl_password_file", non_empty_str, None)
    pw_env = k.get("sasl_password_env", non_empty_str, KAFKA_PASSWORD_ENV)
    if pw_file is not None:
        try:
            return Path(pw_file).read_text().strip()
        except OSError as e:
            raise fail("kafka.sasl_password_file", f"{pw_file!r} cannot be read ({e.strerror}); "
                                                   "mount the secret there") from None
    password = environ.get(pw_env)
    if not password:
        raise fail("kafka.sasl_password_env", f"environment variable {pw_env} is not set; "
                                              "export the SASL password there or set "
                                              "kafka.sasl_password_file")
    return password


_MODEL_KEYS = ("path", "estimator", "training", "refit_windows", "trusted_types",
               "holdout_fraction", "job_timeout", "retries", "retry_backoff", "seed",
               "exclude", "categorical", "promotion", "drift", "on_drift", "update_every",
               "update_guard")
ON_DRIFT = ("none", "recency", "refit")
EVALUATE = ("shadow", "holdout")


def model_spec(top: Section, kind: str, features: tuple[FeatureSpec, ...]) -> ModelSpec:
    """The ``model:`` section: registry path, estimator, job settings, promotion, drift.

    ``kind`` is the label kind (estimator and promotion metric must fit it); ``features``
    the declared features (``exclude``/``categorical`` must name kept ones).
    """
    m = top.sub("model", _MODEL_KEYS)
    kept = kept_feature_names(features)
    estimator = estimator_settings(m, kind, m.get("seed", non_negative_int, 0))
    exclude, categorical = _model_features(m, features, kept)
    promotion = _promotion(m, kind)
    drift = _drift(m, kept)
    holdout = _holdout_fraction(m)
    return ModelSpec(path=m.get("path", non_empty_str), **estimator,
                     holdout_fraction=holdout, **_job_settings(m), exclude=exclude,
                     categorical=categorical, promotion=promotion, drift=drift,
                     on_drift=m.get("on_drift", choice(ON_DRIFT), "recency"))


def _model_features(m: Section, features: tuple[FeatureSpec, ...],
                    kept: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(``model.exclude``, ``model.categorical``): kept features the model leaves out (not
    all of them), and kept int/bool features it treats as categories."""
    exclude = m.get("exclude", name_list, ())
    for i, name in enumerate(exclude):
        if name not in kept:
            raise fail(f"model.exclude[{i}]", f"{name!r} is not a kept feature; exclude one of "
                                              f"{', '.join(sorted(kept))}")
    types = {f.name: f.type for f in features}
    categorical = m.get("categorical", name_list, ())
    for i, name in enumerate(categorical):
        if name not in kept or types[name] not in ("int", "bool"):
            ints = sorted(n for n in kept if types[n] in ("int", "bool"))
            raise fail(f"model.categorical[{i}]", f"{name!r} is not a kept int or bool feature "
                                                  "(str features are categories already); "
                                                  f"name one of {', '.join(ints) or 'none'}")
    if set(exclude) == kept:
        raise fail("model.exclude", f"{list(exclude)!r} excludes every feature; keep at least one")
    return exclude, categorical


def _promotion(m: Section, kind: str) -> PromotionSpec:
    """``model.promotion`` (optional): the rule, with a metric of the label kind."""
    p = Section(m.data.get("promotion") or {}, "model.promotion",
                ("metric", "min_gain", "max_slice_regression", "min_slice_rows",
                 "confidence", "evaluate"))
    metrics = tuple(k for k, (mk, _) in PROMOTION_METRICS.items() if mk == kind)
    return PromotionSpec(
        metric=p.get("metric", choice(metrics), metrics[0]),
        min_gain=p.get("min_gain", number(-1e9, 1e9, "0.002"), 0.0),
        max_slice_regression=p.get("max_slice_regression", number(0, 1e9, "0.05"), 0.05),
        min_slice_rows=p.get("min_slice_rows", positive_int, 200),
        confidence=_confidence(p), evaluate=p.get("evaluate", choice(EVALUATE), "shadow"))


def _confidence(p: Section) -> float:
    """``model.promotion.confidence``: in [0, 1); 0 compares point estimates."""
    c = p.get("confidence", number(0, 1, "0.95"), 0.95)
    if not 0.0 <= c < 1.0:
        raise fail("model.promotion.confidence", f"{c!r} is not a confidence level below 1; "
                                                 "write e.g. 0.95 (or 0 to compare point "
                                                 "estimates)")
    return c


def _drift(m: Section, kept: set[str]) -> DriftSpec:
    """``model.drift`` (optional): thresholds, and kept features left out of the comparison."""
    d = Section(m.data.get("drift") or {}, "model.drift", ("psi", "linf", "label_rate",
                                                            "min_rows", "exclude"))
    drift_exclude = d.get("exclude", name_list, ())
    for i, name in enumerate(drift_exclude):
        if name not in kept:
            raise fail(f"model.drift.exclude[{i}]", f"{name!r} is not a kept feature; exclude "
                                                    f"one of {', '.join(sorted(kept))}")
    return DriftSpec(psi=d.get("psi", number(0, 1e9, "0.2"), 0.2),
                     linf=d.get("linf", number(0, 1, "0.1"), 0.1),
                     label_rate=d.get("label_rate", number(0, 1e9, "0.05"), 0.05),
                     min_rows=d.get("min_rows", positive_int, 100), exclude=drift_exclude)


def _holdout_fraction(m: Section) -> float:
    """``model.holdout_fraction``: strictly between 0 and 1, so both parts get rows."""
    holdout = m.get("holdout_fraction", number(0, 1, "0.2"), 0.2)
    if not 0.0 < holdout < 1.0:
        raise fail("model.holdout_fraction", f"{holdout!r} leaves nothing to train or to "
                                             "evaluate; write a fraction such as 0.2")
    return holdout


def _job_settings(m: Section) -> dict[str, int]:
    """How a job runs: ``job_timeout``, ``retries``, ``retry_backoff`` (ms) and ``seed``."""
    return dict(job_timeout_ms=m.get("job_timeout", duration(True), 600_000),
                retries=m.get("retries", non_negative_int, 2),
                retry_backoff_ms=m.get("retry_backoff", duration(False), 1_000),
                seed=m.get("seed", non_negative_int, 0))
