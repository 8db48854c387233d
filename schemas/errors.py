"""The dlabel exception tree: one base class, a few specific subclasses."""
from __future__ import annotations

from typing import Any


class DlabelError(Exception):
    """Base class of every error dlabel raises on purpose."""


class ConfigError(DlabelError):
    """The pipeline config (or an environment setting) is invalid.

    Messages name the field, quote the bad value and say how to fix it.
    """


class EventError(DlabelError):
    """An input event is invalid; it goes to the dead-letter topic.

    ``reason`` is a reason code of DESIGN.md (``malformed_json``, ``missing_field``,
    ``bad_type``, ``bad_timestamp``, ...); ``detail`` says what was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(DlabelError):
    """The Kafka broker could not be started, reached or configured."""


class CommitError(DlabelError):
    """Output could not be committed; offsets were not committed either."""


class DatasetError(DlabelError):
    """A dataset window cannot be read: missing or invalid manifest, missing files."""


class RegistryError(DlabelError):
    """The model registry is inconsistent, or a model failed its checksum or type check."""


class JobError(DlabelError):
    """A retraining job could not run or failed."""


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 80 characters: how an error detail quotes a bad value."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
