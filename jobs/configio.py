"""A validated PipelineConfig to JSON and back, to hand it to a job subprocess as is."""
from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from schemas import config as C


def config_to_json(config: C.PipelineConfig) -> str:
    """The config as JSON (every field, nested dataclasses as objects)."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def _dataclass_of(hint: Any) -> Any:
    """The dataclass ``hint`` names, itself or inside ``Optional[...]``; else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is not typing.Union:
        return None
    found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
    return found[0] if len(found) == 1 else None


def _build(cls: type, data: Any) -> Any:
    hints = typing.get_type_hints(cls)  # each class's own module resolves its names
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if value is not None and _dataclass_of(hint) is not None:
            value = _build(_dataclass_of(hint), value)
        elif f.name == "features":
            value = tuple(C.FeatureSpec(**v) for v in value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_json(text: str) -> C.PipelineConfig:
    """The config ``config_to_json`` wrote (no re-validation: it was valid when written)."""
    return _build(C.PipelineConfig, json.loads(text))
