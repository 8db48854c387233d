"""A model as a verified skops file: encoded with its checks, decoded only after them.

One definition for every model file dlabel writes: the registry's versions and the
serving model's in-window updates (jobs.serving). Encoding refuses a model that holds
types outside skops' trusted defaults (sklearn, numpy, scipy) and ``trusted_types``, or
that skops cannot load back; decoding checks the sha256 first, then the types the file
holds, so nothing is ever unpickled blind.
"""
from __future__ import annotations

import hashlib
from typing import Any

import skops.io as sio

from schemas.errors import RegistryError
from jobs.models import AnyModel, model_from_state

MODEL_FILE = "model.skops"
DIGEST_FILE = "model.sha256"


def check_types(data: bytes, trusted_types: tuple[str, ...], where: str) -> list[str]:
    """The untrusted types ``data`` holds, all of them in ``trusted_types`` (else
    RegistryError naming the others and the fix)."""
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as e:  # skops raises assorted errors on malformed files
        raise RegistryError(f"{where}: not a readable skops file ({e})") from None
    refused = [t for t in untrusted if t not in trusted_types]
    if refused:
        listed = "\n".join(f"    - {t}" for t in refused)
        raise RegistryError(
            f"{where}: holds types skops does not trust: {', '.join(refused)}; if you "
            "trust the code that defines them, add them to model.trusted_types:\n"
            f"  trusted_types:\n{listed}")
    return untrusted


def encode(model: AnyModel, trusted_types: tuple[str, ...]) -> tuple[bytes, str]:
    """(skops bytes, sha256 hex) of ``model``; RegistryError when it holds untrusted types
    or skops cannot load it back (a model no job could use)."""
    data = sio.dumps(model.to_state())
    where = f"the new model ({model.estimator_name})"
    untrusted = check_types(data, trusted_types, where)
    try:
        sio.loads(data, trusted=untrusted)
    except Exception as e:  # skops cannot rebuild some objects (e.g. odd dict keys)
        raise RegistryError(f"{where}: skops cannot load it back ({type(e).__name__}: "
                            f"{e}); the registry would hold a model no job can use; "
                            "build the estimator from parts skops can persist") from None
    return data, hashlib.sha256(data).hexdigest()


def digest_line(digest: str) -> str:
    """The content of a ``model.sha256`` file."""
    return f"{digest}  {MODEL_FILE}\n"


def decode(data: bytes, expected: str, trusted_types: tuple[str, ...], where: str) -> AnyModel:
    """The model in ``data`` after its sha256 matches ``expected`` and its types are trusted."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise RegistryError(f"{where}: checksum mismatch (sha256 {actual}, expected "
                            f"{expected}); the file was changed or corrupted, refusing to "
                            "load it")
    untrusted = check_types(data, trusted_types, where)
    try:
        state: Any = sio.loads(data, trusted=untrusted)
        return model_from_state(state)
    except Exception as e:
        raise RegistryError(f"{where}: cannot be loaded ({type(e).__name__}: {e})") from None
