"""Feature values coerced to their declared type (DESIGN.md: "Features are coerced").

One coercer per type (``COERCERS``): ``"0"``, ``"0.0"`` and ``0`` are the number zero for
a float; ``""`` and null are missing (None), never zero; NaN and infinities are invalid.
A value that cannot be coerced raises ``NotCoercible`` saying what was expected (the
event parser turns it into a ``bad_type`` EventError naming the feature).
"""
from __future__ import annotations

from typing import Any, Callable

from schemas.pii import PiiHasher

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MISSING = object()
_BOOL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


class NotCoercible(Exception):
    """A feature value cannot be coerced; args[0] says what was expected."""


def to_float(v: Any) -> float | None:
    """A float (finite), or None for ``""``."""
    kind = type(v)
    if kind is float:
        x = v
    elif kind is int:
        try:
            x = float(v)
        except OverflowError:
            raise NotCoercible("a float in range") from None
    elif kind is str:
        if v == "":
            return None
        if "_" in v:
            raise NotCoercible("a float")
        try:
            x = float(v)
        except ValueError:
            raise NotCoercible("a float") from None
    else:
        raise NotCoercible("a float")
    if x - x != 0.0:  # NaN or +-inf
        raise NotCoercible("a finite float")
    return x


def to_int(v: Any) -> int | None:
    """A 64-bit int (a whole float or numeric text too), or None for ``""``."""
    kind = type(v)
    if kind is int:
        x = v
    elif kind is float or kind is str:
        if kind is str:
            if v == "":
                return None
            if "_" in v:
                raise NotCoercible("an int")
            try:
                x = int(v)
            except ValueError:
                try:
                    v = float(v)
                except ValueError:
                    raise NotCoercible("an int") from None
        if type(v) is float:
            if v - v != 0.0 or not v.is_integer():
                raise NotCoercible("a whole, finite int")
            x = int(v)
    else:
        raise NotCoercible("an int")
    if not _INT64_MIN <= x <= _INT64_MAX:
        raise NotCoercible("an int in the 64-bit range")
    return x


def to_bool(v: Any) -> bool | None:
    """A bool from true/false/0/1 (as JSON or text), or None for ``""``."""
    if v is True or v is False:
        return v
    kind = type(v)
    if kind is int and (v == 0 or v == 1):
        return v == 1
    if kind is str:
        if v == "":
            return None
        b = _BOOL_STRINGS.get(v.strip().lower(), _MISSING)
        if b is not _MISSING:
            return b  # type: ignore[return-value]
    raise NotCoercible("a bool (true/false/0/1)")


def to_str(v: Any) -> str | None:
    """A string (numbers as their text), or None for ``""``."""
    kind = type(v)
    if kind is str:
        return v or None
    if kind is int:
        return str(v)
    if kind is float and v - v == 0.0:
        return str(v)
    raise NotCoercible("a string")


COERCERS: dict[str, Callable[[Any], Any]] = {
    "float": to_float, "int": to_int, "bool": to_bool, "str": to_str}


def hashing(hasher: PiiHasher) -> Callable[[Any], str | None]:
    """The coercer of a ``pii: hash`` feature: its text, hashed with ``hasher``."""
    def coerce(v: Any) -> str | None:
        s = to_str(v)
        return None if s is None else hasher.hash(s)
    return coerce
