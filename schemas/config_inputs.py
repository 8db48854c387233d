"""The ``inputs:`` section: how producers write and partition the two input topics.

Field paths (DESIGN.md, "Inputs as real producers write them"): dots walk into nested
JSON objects, ``\\.`` is a literal dot and ``\\\\`` a literal backslash inside a name.
A path that can never match (empty, an empty segment, another escape) fails here, at
start, instead of dead-lettering every event later.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.config_checks import Section, boolean, choice, fail

TS_UNITS = ("s", "ms", "us")
REQUEST_FIELDS = ("ts", "features", "prediction", "model_version")
FEEDBACK_FIELDS = ("ts", "type", "value")


@dataclass(frozen=True)
class FieldPath:
    """Where one event field is found: its segments, and the path as the config wrote it."""
    segments: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class RoleInputs:
    """The field mapping and numeric time unit of one input (requests or feedback)."""
    fields: tuple[tuple[str, FieldPath], ...] = ()   # (event field, its path)
    ts_unit: str = "ms"

    def path(self, name: str) -> FieldPath:
        """The path of event field ``name`` (the field itself when it is not mapped)."""
        return dict(self.fields).get(name) or FieldPath((name,), name)


@dataclass(frozen=True)
class InputsSpec:
    """Both inputs' mappings, and whether producers already key by the join key.

    ``copartitioned``: every record is keyed by its join key and partitioned with
    murmur2 (the Java clients' default, also aiokafka's and kafka-python's), so the
    join can read the topics as they are; otherwise the worker repartitions first.
    """
    requests: RoleInputs = RoleInputs()
    feedback: RoleInputs = RoleInputs()
    copartitioned: bool = False


def parse_field_path(value: Any, where: str) -> FieldPath:
    """Split a config path into segments (``a.b\\.c`` -> ``a``, ``b.c``), or fail."""
    hint = ("write dot-separated names like payload.features; escape a dot inside a name "
            "as \\. and a backslash as \\\\")
    if not isinstance(value, str) or not value:
        raise fail(where, f"{value!r} is not a field path; {hint}")
    segments, current, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            nxt = value[i + 1] if i + 1 < len(value) else ""
            if nxt not in (".", "\\"):
                raise fail(where, f"{value!r} has the escape \\{nxt} at position {i}; only "
                                  f"\\. and \\\\ exist; {hint}")
            current.append(nxt)
            i += 2
            continue
        if ch == ".":
            if not current:
                raise fail(where, f"{value!r} has an empty name at position {i}; {hint}")
            segments.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    if not current:
        raise fail(where, f"{value!r} ends with an empty name; {hint}")
    segments.append("".join(current))
    return FieldPath(tuple(segments), value)


def _role(top: Section, role: str, allowed: tuple[str, ...]) -> RoleInputs:
    if top.data.get(role) is None:
        return RoleInputs()
    sec = top.sub(role, ("fields", "ts_unit"))
    fields: tuple[tuple[str, FieldPath], ...] = ()
    if sec.data.get("fields") is not None:
        mapping = sec.sub("fields", allowed)
        fields = tuple((name, parse_field_path(path, mapping.name(name)))
                       for name, path in mapping.data.items())
    return RoleInputs(fields, sec.get("ts_unit", choice(TS_UNITS), "ms"))


def inputs_spec(top: Section, join_key: str, outcome_field: str | None) -> InputsSpec:
    """Validate the ``inputs:`` section (absent: the formats of DESIGN.md, unmapped)."""
    if top.data.get("inputs") is None:
        return InputsSpec()
    sec = top.sub("inputs", ("copartitioned", "requests", "feedback"))
    feedback = (join_key,) + FEEDBACK_FIELDS + ((outcome_field,) if outcome_field else ())
    return InputsSpec(requests=_role(sec, "requests", (join_key,) + REQUEST_FIELDS),
                      feedback=_role(sec, "feedback", feedback),
                      copartitioned=sec.get("copartitioned", boolean, False))
