"""dlabel's partitioner: murmur2 of the key, as the Java clients' default partitioner.

One partitioner for every record dlabel routes by its join key: the repartition hop
uses it, and ``inputs.copartitioned: true`` promises that the producers used it (the
default of the Java clients, aiokafka and kafka-python; librdkafka's default is crc32).

``partitions_for`` hashes a whole batch of keys at once with numpy (uint32 arithmetic
wraps modulo 2**32 as Java's int does): keys are grouped by length and each group's
4-byte words are mixed column by column, so the Python work is per distinct key length
and per word, not per key. ``murmur2`` is the per-key reference it is tested against.
"""
from __future__ import annotations

import struct
from typing import Sequence

import numpy as np

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``)."""
    length = len(data)
    h = _SEED ^ length
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= data[whole + 2] << 16
        if extra >= 2:
            h ^= data[whole + 1] << 8
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions`` (Java: ``toPositive(murmur2) % n``)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


#: below this many keys the per-key hash is cheaper than numpy's per-call overhead
_VECTOR_MIN = 16


def _murmur2_same_length(joined: bytes, n: int, length: int) -> np.ndarray:
    """Unsigned murmur2 of ``n`` keys of ``length`` bytes each, concatenated in ``joined``."""
    m = np.uint32(_M)
    rows = np.frombuffer(joined, dtype=np.uint8).reshape(n, length)
    h = np.full(n, (_SEED ^ length) & _MASK, dtype=np.uint32)
    whole = length & ~3
    if whole:
        words = np.ascontiguousarray(rows[:, :whole]).view("<u4")
        for j in range(whole >> 2):
            k = words[:, j] * m
            k ^= k >> np.uint32(24)
            k *= m
            h *= m
            h ^= k
    extra = length & 3
    if extra:
        if extra == 3:
            h ^= rows[:, whole + 2].astype(np.uint32) << np.uint32(16)
        if extra >= 2:
            h ^= rows[:, whole + 1].astype(np.uint32) << np.uint32(8)
        h ^= rows[:, whole].astype(np.uint32)
        h *= m
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h


def partitions_for(keys: Sequence[bytes], partitions: int) -> list[int]:
    """``[partition_for(key, partitions) for key in keys]``, hashed as one batch."""
    n = len(keys)
    if n < _VECTOR_MIN:
        return [partition_for(key, partitions) for key in keys]
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    if len(by_length) == 1:  # the usual case: ids of one format
        (length, _), = by_length.items()
        h = _murmur2_same_length(b"".join(keys), n, length)
        return ((h & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()
    out = np.empty(n, dtype=np.uint32)
    for length, index in by_length.items():
        group = [keys[i] for i in index]
        out[index] = _murmur2_same_length(b"".join(group), len(group), length)
    return ((out & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()
