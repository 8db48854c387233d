"""Output records: labeled examples and dead-letter envelopes (JSON on Kafka)."""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from schemas.events import Request

LABELED_BASE_COLUMNS = ("request_id", "request_ts", "window_start", "label", "label_ts",
                        "prediction", "model_version")
#: Columns added after the base ones (DESIGN.md: "Columns may be added"), before features.
LABEL_QUALITY_COLUMNS = ("label_delay_ms", "label_version", "sample_weight")
DEAD_LETTER_KEYS = ("reason", "detail", "topic", "partition", "offset", "original")
#: A dead letter carries at most this many bytes of its original record (base64 makes
#: them 4/3 as many; the dead-letter topic is created to take that, see
#: ``streams.kafka.topics.DEAD_LETTER_MAX_MESSAGE_BYTES``). Only an input over twice
#: ``schemas.events.MAX_EVENT_BYTES`` is cut; its detail says so and where it is whole.
DEAD_LETTER_ORIGINAL_MAX_BYTES = 2 << 20


def labeled_example(req: Request, label: float | int, label_ts: int, window_ms: int,
                    label_delay_ms: Optional[int] = None, label_version: int = 1,
                    sample_weight: float = 1.0) -> dict[str, Any]:
    """Build a labeled example: the base columns in order, the label-quality columns
    (``LABEL_QUALITY_COLUMNS``), then ``req.features``.

    ``window_start`` is ``req.ts`` floored to a multiple of ``window_ms`` (also for
    negative times). A bool label becomes int 0/1; ints and floats are kept as given.
    ``label_delay_ms`` is the deciding feedback's time minus the request's (None for a
    negative), ``label_version`` 1 for the first label and one more per correction,
    ``sample_weight`` 1 / ``label.negative_sample_rate`` for a sampled negative, else 1.
    """
    if window_ms <= 0:
        raise ValueError(f"window_ms must be positive, got {window_ms!r}")
    if isinstance(label, bool):
        label = int(label)
    elif isinstance(label, float) and label - label != 0.0:
        raise ValueError(f"label must be finite, got {label!r}")
    example: dict[str, Any] = {
        "request_id": req.request_id,
        "request_ts": req.ts,
        "window_start": req.ts - req.ts % window_ms,
        "label": label,
        "label_ts": label_ts,
        "prediction": req.prediction,
        "model_version": req.model_version,
        "label_delay_ms": label_delay_ms,
        "label_version": label_version,
        "sample_weight": sample_weight,
    }
    example.update(req.features)
    return example


def negative_kept(request_id: str, rate: float) -> bool:
    """Whether negative sampling at ``rate`` keeps the negative of ``request_id``.

    Deterministic, so replays and restarts sample identically: the first 8 bytes of
    BLAKE2b-64 of the UTF-8 request id, as a big-endian integer, are below ``rate * 2**64``.
    """
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < rate * 2.0**64


def encode_labeled(example: dict[str, Any]) -> bytes:
    """Encode a labeled example as compact UTF-8 JSON (NaN/infinity raise ValueError).

    orjson writes the same bytes as ``json.dumps(..., separators=(",", ":"),
    ensure_ascii=False)`` except for floats Python writes with an exponent below 1e-4
    (``5e-05`` vs ``0.00005``), non-finite floats and ints beyond 64 bits; examples
    holding one of those take the ``json`` path, so every copy of a record is
    byte-identical whichever path wrote it.
    """
    for v in example.values():
        if type(v) is float and not (1e-4 <= abs(v) < 1e16) and v != 0.0:
            return _encode_labeled_json(example)
    try:
        return orjson.dumps(example)
    except TypeError:  # an int beyond 64 bits, a lone surrogate...
        return _encode_labeled_json(example)


def _encode_labeled_json(example: dict[str, Any]) -> bytes:
    return json.dumps(example, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event that goes to the dead-letter topic: why, and where it was read.

    The one dead-letter type of every stage: the join (invalid, duplicate, late and
    orphan events of its inputs) and the dataset sink (labeled records it cannot take).
    """

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    original: Optional[bytes]  # None for a tombstone
    #: the worker task whose output it is (routing only, not in the envelope);
    #: None: the task of ``partition``
    task: Any = field(default=None, compare=False)

    def encode(self) -> bytes:
        """The envelope as JSON; ``original`` goes as base64, its first
        ``DEAD_LETTER_ORIGINAL_MAX_BYTES`` bytes if it is longer (the detail says so)."""
        original, detail = bytes(self.original or b""), self.detail
        if len(original) > DEAD_LETTER_ORIGINAL_MAX_BYTES:
            detail += (f" (original cut to its first {DEAD_LETTER_ORIGINAL_MAX_BYTES} of "
                       f"{len(original)} bytes; the whole record is {self.topic} partition "
                       f"{self.partition} offset {self.offset})")
            original = original[:DEAD_LETTER_ORIGINAL_MAX_BYTES]
        return json.dumps({
            "reason": self.reason,
            "detail": detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "original": base64.b64encode(original).decode("ascii"),
        }, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def decode_dead_letter(raw: bytes) -> dict[str, Any]:
    """Decode a dead-letter envelope; ``original`` comes back as bytes.

    Raises ValueError when ``raw`` is not a dead-letter envelope.
    """
    obj = json.loads(raw)
    if not isinstance(obj, dict) or any(k not in obj for k in DEAD_LETTER_KEYS):
        raise ValueError(f"not a dead-letter envelope; expected keys {DEAD_LETTER_KEYS}")
    try:
        obj["original"] = base64.b64decode(obj["original"], validate=True)
    except (binascii.Error, TypeError) as e:
        raise ValueError(f"dead-letter original is not base64: {e}") from None
    return obj
