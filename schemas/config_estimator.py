"""``model.estimator``, ``model.training``, ``model.refit_windows``, ``model.trusted_types``,
``model.update_every`` and ``model.update_guard``.

``model.estimator`` is one of the built-in names (``ESTIMATORS``) or a factory path
``package.module:factory`` (bring your own model): a callable that returns a fresh
scikit-learn-compatible estimator (a ``Pipeline`` too). The factory is called with
``seed=model.seed`` when its signature has a ``seed`` parameter, with no arguments
otherwise. It is imported, called and checked when the config is loaded, so a typo, a
missing module or an estimator that cannot train the chosen way fails at start:

- ``training: incremental`` (the default) needs ``partial_fit`` (a ``Pipeline``: its last
  step has ``partial_fit`` and every other step has ``partial_fit`` or needs no fit);
- ``training: refit`` needs ``fit``; it fits a fresh estimator on the last
  ``refit_windows`` windows at every job;
- a binary label needs ``predict_proba`` or ``decision_function``, a regression ``predict``.

``trusted_types`` lists the fully qualified type names, beyond skops' trusted defaults,
that the registry may load (e.g. ``river.linear_model.log_reg.LogisticRegression``).

``update_every`` turns on in-window updates of the serving model (jobs.online): the
champion's line learns the labeled examples as they are published, and a refreshed
serving model is published every ``5m`` of event time or every ``500 rows``; off by
default. Only an estimator that learns incrementally can (every built-in; a factory's
estimator as for ``training: incremental``). ``update_guard`` (``tolerance``, ``rows``)
rolls the serving model back to the frozen champion when its rolling prequential loss
over the last ``rows`` labeled rows exceeds the champion's by more than ``tolerance``
(a fraction).
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from schemas.config_checks import Section, choice, fail, number, parse_duration_ms, positive_int
from schemas.errors import ConfigError

# estimator -> the label kind it fits; the first one of a kind is that kind's default
ESTIMATORS = {"sgd_classifier": "binary", "sgd_regressor": "regression",
              "passive_aggressive_classifier": "binary",
              "passive_aggressive_regressor": "regression", "multinomial_nb": "binary"}
TRAINING_MODES = ("incremental", "refit")
DEFAULT_REFIT_WINDOWS = 6

_FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_TYPE_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$")
_EXAMPLE = "mypackage.models:make_model"


def is_factory_path(estimator: str) -> bool:
    """True for ``package.module:factory`` (a bring-your-own estimator), False for a
    built-in name."""
    return ":" in estimator


def load_factory(path: str, field: str = "model.estimator") -> Callable[..., Any]:
    """The callable ``package.module:factory`` names (ConfigError naming ``field``, the
    value and the fix when the module cannot be imported or has no such callable)."""
    if not _FACTORY_RE.match(path):
        raise fail(field, f"{path!r} is not a factory path; write package.module:factory "
                          f"(e.g. {_EXAMPLE}) or a built-in name: {', '.join(ESTIMATORS)}")
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # an import error, or the module itself raised while importing
        raise fail(field, f"{path!r}: module {module_name!r} cannot be imported "
                          f"({type(e).__name__}: {e}); install it in the environment "
                          "dlabel runs in (or fix PYTHONPATH), or fix the module path") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise fail(field, f"{path!r}: module {module_name!r} has no attribute {attr!r}; "
                              "name a function (or class) defined in that module")
        obj = getattr(obj, part)
    if not callable(obj):
        raise fail(field, f"{path!r}: {attr!r} is not callable; name a function that "
                          "returns a new estimator")
    return obj


def build_estimator(factory: Callable[..., Any], seed: int) -> Any:
    """Call ``factory``: with ``seed=seed`` when it takes a ``seed`` parameter, else bare."""
    try:
        takes_seed = "seed" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes_seed = False
    return factory(seed=seed) if takes_seed else factory()


def needs_no_fit(step: Any) -> bool:
    """True for a transformer that is stateless (sklearn's ``requires_fit`` tag False, e.g.
    FunctionTransformer, FeatureHasher) or a ``"passthrough"``/None pipeline step."""
    if step is None or step == "passthrough":
        return True
    try:
        return not step.__sklearn_tags__().requires_fit
    except AttributeError:
        return False


def learns_incrementally(estimator: Any) -> bool:
    """Whether ``estimator`` can learn one window at a time: it has ``partial_fit``, or it
    is a Pipeline whose last step has it and whose other steps have it or need no fit."""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list) and steps:
        *head, (_, last) = steps
        return hasattr(last, "partial_fit") and all(
            hasattr(s, "partial_fit") or needs_no_fit(s) for _, s in head)
    return hasattr(estimator, "partial_fit")


def _check_custom(path: str, kind: str, training: str, seed: int) -> Any:
    """Import and call the factory; check the estimator fits the label kind and training.
    Returns the estimator it built."""
    factory = load_factory(path)
    try:
        est = build_estimator(factory, seed)
    except TypeError as e:
        raise fail("model.estimator", f"{path!r} cannot be called with no arguments or with "
                                      f"seed= ({e}); give its parameters defaults") from None
    except Exception as e:  # the factory's own code failed (e.g. a missing dependency)
        raise fail("model.estimator", f"{path!r} raised {type(e).__name__}: {e} when called; "
                                      "fix the factory or install what it imports") from None
    name = type(est).__name__
    if kind == "binary" and not (hasattr(est, "predict_proba")
                                 or hasattr(est, "decision_function")):
        raise fail("model.estimator", f"{path!r} returns a {name}, which has neither "
                                      "predict_proba nor decision_function; a binary label "
                                      "needs a classifier that scores")
    if kind == "regression" and not hasattr(est, "predict"):
        raise fail("model.estimator", f"{path!r} returns a {name} without predict; a "
                                      "regression label needs a regressor")
    if training == "incremental" and not learns_incrementally(est):
        raise fail("model.training", f"'incremental' (the default) needs partial_fit, and "
                                     f"{path!r} returns a {name} that cannot learn one window "
                                     "at a time; write training: refit (a fresh fit on the "
                                     "last model.refit_windows windows at every job)")
    if training == "refit" and not hasattr(est, "fit"):
        raise fail("model.training", f"'refit' needs fit, and {path!r} returns a {name} "
                                     "without it; write training: incremental (it has "
                                     "partial_fit) or return an estimator with fit")
    return est


def _trusted_type(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _TYPE_RE.match(value):
        raise fail(field, f"{value!r} is not a fully qualified type name; write e.g. "
                          "river.linear_model.log_reg.LogisticRegression (as the registry's "
                          "error lists it)")
    return value


def estimator_settings(m: Section, kind: str, seed: int) -> dict[str, Any]:
    """``estimator``, ``training``, ``refit_windows`` and ``trusted_types`` of ``model:``,
    validated together (a factory is imported and called once, here)."""
    default_est = next(e for e, k in ESTIMATORS.items() if k == kind)
    estimator = m.get("estimator", _estimator_value, default_est)
    training = m.get("training", choice(TRAINING_MODES), "incremental")
    refit_windows = m.get("refit_windows", positive_int, DEFAULT_REFIT_WINDOWS)
    raw_types = m.data.get("trusted_types") or []
    if not isinstance(raw_types, list):
        raise fail("model.trusted_types", f"{raw_types!r} is not a list; write e.g. "
                                          "[river.optim.sgd.SGD]")
    trusted = tuple(_trusted_type(t, f"model.trusted_types[{i}]")
                    for i, t in enumerate(raw_types))
    updates = update_settings(m)
    if is_factory_path(estimator):
        est = _check_custom(estimator, kind, training, seed)
        if updates.enabled and not learns_incrementally(est):
            raise fail("model.update_every", f"{m.data.get('update_every')!r}: in-window "
                                             f"updates continue the champion with partial_fit, "
                                             f"and {estimator!r} returns a {type(est).__name__} "
                                             "that cannot learn a few rows at a time; remove "
                                             "model.update_every (the champion then changes "
                                             "only at window close)")
    elif ESTIMATORS[estimator] != kind:
        fits = ", ".join(e for e, k in ESTIMATORS.items() if k == kind)
        raise fail("model.estimator", f"{estimator!r} does not fit label kind {kind!r}; "
                                      f"write {default_est}" + (f" (or one of {fits})"
                                                                if "," in fits else ""))
    return dict(estimator=estimator, training=training, refit_windows=refit_windows,
                trusted_types=trusted, updates=updates)


def _estimator_value(value: Any, field: str) -> str:
    """A built-in name, or something shaped like a factory path (imported later)."""
    if isinstance(value, str) and is_factory_path(value):
        return value
    try:
        return choice(tuple(ESTIMATORS))(value, field)
    except ConfigError as e:
        raise ConfigError(f"{e} (or a factory path package.module:factory, e.g. "
                          f"{_EXAMPLE})") from None


@dataclass(frozen=True)
class UpdateSpec:
    """In-window updates of the serving model (``model.update_every``, jobs.online).

    Off unless ``every_ms`` (event time between two published updates) or
    ``every_rows`` (labeled rows between them) is set. The guard compares the updated
    model's prequential loss with the frozen champion's over the last ``guard_rows``
    labeled rows and rolls back when it is worse by more than ``tolerance`` (relative).
    """
    every_ms: Optional[int] = None
    every_rows: Optional[int] = None
    tolerance: float = 0.05
    guard_rows: int = 1000

    @property
    def enabled(self) -> bool:
        """Whether in-window updates are on."""
        return self.every_ms is not None or self.every_rows is not None


_UPDATE_EXAMPLE = "write e.g. 5m (event time between updates) or '500 rows'"


def _every(value: Any, field: str) -> tuple[Optional[int], Optional[int]]:
    """``model.update_every``: (ms, None) for a duration, (None, rows) for 'N rows',
    (None, None) for off (YAML reads ``off`` as false)."""
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None, None
    if isinstance(value, str) and value.strip().lower().endswith("rows"):
        n = value.strip()[:-4].strip()
        if not n.isdigit() or int(n) <= 0:
            raise fail(field, f"{value!r} is not a positive row count; {_UPDATE_EXAMPLE}")
        return None, int(n)
    if not isinstance(value, str):
        raise fail(field, f"{value!r} is neither a duration nor a row count; {_UPDATE_EXAMPLE}"
                          " (a bare number is ambiguous)")
    try:
        ms = parse_duration_ms(value, field)
    except ConfigError:
        raise fail(field, f"{value!r} is neither a duration nor a row count; "
                          f"{_UPDATE_EXAMPLE}") from None
    if ms <= 0:
        raise fail(field, f"{value!r} is zero; {_UPDATE_EXAMPLE}, or off")
    return ms, None


def update_settings(m: Section) -> UpdateSpec:
    """``model.update_every`` and ``model.update_guard`` (the guard only with updates on)."""
    raw = m.data.get("update_every")
    every_ms, every_rows = (None, None) if raw is None else _every(raw, "model.update_every")
    if m.data.get("update_guard") is None:
        return UpdateSpec(every_ms, every_rows)
    if every_ms is None and every_rows is None:
        raise fail("model.update_guard", "is set but in-window updates are off; set "
                                         "model.update_every (e.g. 5m) or remove update_guard")
    g = m.sub("update_guard", ("tolerance", "rows"))
    tolerance = g.get("tolerance", number(0, 1e9, "0.05"), 0.05)
    rows = g.get("rows", positive_int, 1000)
    if rows < 10:
        raise fail("model.update_guard.rows", f"{rows!r} rows cannot judge a loss; write at "
                                              "least 10, e.g. 1000")
    return UpdateSpec(every_ms, every_rows, tolerance, rows)
