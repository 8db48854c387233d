"""PII handling: keyed hashing (HMAC-SHA256) of ``pii: hash`` features.

The key comes from the environment (``DLABEL_PII_KEY``), never from the config file,
and is never shown by ``repr`` or error messages.
"""
from __future__ import annotations

import hashlib
import os
from typing import Mapping

from schemas.config import PipelineConfig
from schemas.errors import ConfigError

PII_KEY_ENV = "DLABEL_PII_KEY"


class PiiHasher:
    """Replaces a PII value by the hex HMAC-SHA256 of its UTF-8 bytes under a secret key.

    On the join's hot path (one hash per hashed feature of every request): the key's
    inner and outer SHA-256 states are computed once (RFC 2104) and copied per value,
    and the hashes of the last ``CACHE_SIZE`` distinct values are remembered (the same
    users come back), emptied when full. The remembered values are the plaintexts the
    worker reads anyway; they are never persisted or shown.
    """

    __slots__ = ("_key", "_inner", "_outer", "_cache")

    #: distinct values whose hash is remembered (about 200 bytes each)
    CACHE_SIZE = 32_768

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, (bytes, bytearray)) or not key:
            raise ConfigError(f"the pii key must be non-empty bytes; set {PII_KEY_ENV}")
        self._key = bytes(key)
        block = self._key if len(self._key) <= _BLOCK else hashlib.sha256(self._key).digest()
        block = block.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._cache: dict[str, str] = {}

    def hash(self, value: str) -> str:
        """Return the hex HMAC-SHA256(key, value encoded as UTF-8): 64 lowercase hex chars."""
        digest = self._cache.get(value)
        if digest is None:
            inner = self._inner.copy()
            inner.update(value.encode("utf-8"))
            outer = self._outer.copy()
            outer.update(inner.digest())
            digest = outer.hexdigest()
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[value] = digest
        return digest

    @property
    def cached(self) -> int:
        """How many distinct values' hashes are remembered now (at most ``CACHE_SIZE``)."""
        return len(self._cache)

    def __repr__(self) -> str:
        return "PiiHasher(key=<redacted>)"


#: SHA-256's block size: HMAC pads (or first hashes) the key to it
_BLOCK = 64


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
