"""``model.estimator``, ``model.training``, ``model.refit_windows``, ``model.trusted_types``.

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
"""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any, Callable

from schemas.config_checks import Section, choice, fail, positive_int
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


def _check_custom(path: str, kind: str, training: str, seed: int) -> None:
    """Import and call the factory; check the estimator fits the label kind and training."""
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
    if is_factory_path(estimator):
        _check_custom(estimator, kind, training, seed)
    elif ESTIMATORS[estimator] != kind:
        fits = ", ".join(e for e, k in ESTIMATORS.items() if k == kind)
        raise fail("model.estimator", f"{estimator!r} does not fit label kind {kind!r}; "
                                      f"write {default_est}" + (f" (or one of {fits})"
                                                                if "," in fits else ""))
    return dict(estimator=estimator, training=training, refit_windows=refit_windows,
                trusted_types=trusted)


def _estimator_value(value: Any, field: str) -> str:
    """A built-in name, or something shaped like a factory path (imported later)."""
    if isinstance(value, str) and is_factory_path(value):
        return value
    try:
        return choice(tuple(ESTIMATORS))(value, field)
    except ConfigError as e:
        raise ConfigError(f"{e} (or a factory path package.module:factory, e.g. "
                          f"{_EXAMPLE})") from None
