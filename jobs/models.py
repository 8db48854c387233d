"""Which model a config or a saved state means: a built-in ``Model`` or a ``CustomModel``.

Both have one interface: ``partial_fit(df)``, ``fit(df)`` (on a new model), ``predict(df)``,
``copy()``, ``trained``, ``rows_seen``, ``to_state()`` and ``from_state(state)``.
"""
from __future__ import annotations

from typing import Any, Union

from schemas.config import PipelineConfig
from schemas.config_estimator import is_factory_path
from jobs.custom import CustomModel
from jobs.estimators import Model

AnyModel = Union[Model, CustomModel]


def new_model(config: PipelineConfig) -> AnyModel:
    """A new, untrained model of ``model.estimator``: built-in name or factory path."""
    if is_factory_path(config.model.estimator):
        return CustomModel.for_config(config)
    return Model.for_config(config)


def model_from_state(state: dict[str, Any]) -> AnyModel:
    """The model a registry file holds (``to_state`` output of either kind)."""
    if not isinstance(state, dict):
        raise ValueError(f"a model state is a dict, not {type(state).__name__}")
    if state.get("type") == "custom":
        return CustomModel.from_state(state)
    return Model.from_state(state)
