"""The ``features:`` section of the pipeline config: each feature's name, type and PII
handling (``FeatureSpec``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from schemas.config_checks import NAME_RE, Section, choice, fail

FEATURE_TYPES = ("int", "float", "str", "bool")
PII_ACTIONS = ("hash", "drop")
# columns of a labeled example before the features (mirrored in schemas.records)
RESERVED_COLUMNS = ("request_id", "request_ts", "window_start", "label", "label_ts",
                    "prediction", "model_version", "label_delay_ms", "label_version",
                    "sample_weight")


@dataclass(frozen=True)
class FeatureSpec:
    """A declared feature: its name, type and PII handling (None, 'hash' or 'drop')."""
    name: str
    type: str
    pii: str | None = None


def kept_feature_names(features: Iterable[FeatureSpec]) -> set[str]:
    """The names of the features that appear in output (all but ``pii: drop``)."""
    return {f.name for f in features if f.pii != "drop"}


def feature_spec(name: Any, spec: Any) -> FeatureSpec:
    """One ``features:`` entry: ``name: type`` or ``name: {type: ..., pii: ...}``."""
    field = f"features.{name}"
    if isinstance(name, bool):
        raise fail(field, f"{name!r} is not a feature name (yaml reads yes/no/on/off as "
                          "booleans); quote it, e.g. 'no': int")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise fail(field, f"{name!r} is not a valid feature name; use letters, digits, "
                          "'_', '.' or '-', starting with a letter or '_'")
    if name in RESERVED_COLUMNS:
        raise fail(field, f"{name!r} clashes with a labeled-example column; rename the feature "
                          f"(reserved: {', '.join(RESERVED_COLUMNS)})")
    if isinstance(spec, str):
        return FeatureSpec(name, choice(FEATURE_TYPES)(spec, f"{field}.type"))
    sec = Section(spec, field, ("type", "pii"))
    ftype = sec.get("type", choice(FEATURE_TYPES))
    pii = sec.get("pii", choice(PII_ACTIONS), None)
    if pii == "hash" and ftype != "str":
        raise fail(f"{field}.type", f"{ftype!r} cannot be hashed (hashes are hex strings); "
                                    "declare type: str")
    return FeatureSpec(name, ftype, pii)


def feature_specs(top: Section) -> tuple[FeatureSpec, ...]:
    """The required ``features:`` mapping of the top-level section, in config order."""
    raw_features = top.get("features", lambda v, f: v)
    if not isinstance(raw_features, dict) or not raw_features:
        raise fail("features", f"{raw_features!r} is not a non-empty mapping; write e.g. "
                               "'hour: int' lines (types int, float, str, bool)")
    return tuple(feature_spec(n, s) for n, s in raw_features.items())
