"""PII handling: keyed hashing (HMAC-SHA256) of ``pii: hash`` features.

The key comes from the environment (``DLABEL_PII_KEY``), never from the config file,
and is never shown by ``repr`` or error messages.
"""
from __future__ import annotations

import hmac
import os
from typing import Mapping

from schemas.config import PipelineConfig
from schemas.errors import ConfigError

PII_KEY_ENV = "DLABEL_PII_KEY"


class PiiHasher:
    """Replaces a PII value by the hex HMAC-SHA256 of its UTF-8 bytes under a secret key."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ConfigError(f"the pii key must be non-empty bytes; set {PII_KEY_ENV}")
        self._key = bytes(key)

    def hash(self, value: str) -> str:
        """Return the hex HMAC-SHA256(key, value encoded as UTF-8): 64 lowercase hex chars."""
        return hmac.digest(self._key, value.encode("utf-8"), "sha256").hex()

    def __repr__(self) -> str:
        return "PiiHasher(key=<redacted>)"


def load_pii_key(config: PipelineConfig,
                 environ: Mapping[str, str] = os.environ) -> bytes | None:
    """Return the PII key (UTF-8 bytes of ``DLABEL_PII_KEY``), or None if no feature needs it.

    Raises ``ConfigError`` when a feature has ``pii: hash`` and the variable is missing or
    empty (whitespace only counts as empty).
    """
    hashed = [f.name for f in config.features if f.pii == "hash"]
    if not hashed:
        return None
    value = environ.get(PII_KEY_ENV, "")
    if not value.strip():
        raise ConfigError(
            f"{PII_KEY_ENV}: is not set but feature(s) {', '.join(hashed)} of pipeline "
            f"{config.pipeline!r} have pii: hash; set a secret key, e.g. "
            f"export {PII_KEY_ENV}=$(openssl rand -hex 32), and keep it stable "
            "(changing it changes every hash)")
    return value.encode("utf-8")
