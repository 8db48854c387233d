"""Behaviour tables for schemas.pii."""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import load_config
from schemas.errors import ConfigError
from schemas.pii import PII_KEY_ENV, PiiHasher, load_pii_key

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_hash_is_hex_hmac_sha256():
    key = b"k" * 32
    expected = hmac.new(key, "ann@example.com".encode(), hashlib.sha256).hexdigest()
    assert PiiHasher(key).hash("ann@example.com") == expected


def test_known_vector():
    # RFC 4231 test case 2
    assert PiiHasher(b"Jefe").hash("what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")


@pytest.mark.parametrize("a, b", [("x", "y"), ("", " "), ("é", "e"), ("a@b.c", "A@b.c")])
def test_different_values_different_hashes(a, b):
    hasher = PiiHasher(b"secret-key")
    assert hasher.hash(a) != hasher.hash(b)


def test_key_changes_hash_and_hash_is_stable():
    assert PiiHasher(b"k1").hash("v") != PiiHasher(b"k2").hash("v")
    assert PiiHasher(b"k1").hash("v") == PiiHasher(b"k1").hash("v")
    assert len(PiiHasher(b"k1").hash("v")) == 64


def test_non_ascii_is_utf8():
    key = b"key"
    assert PiiHasher(key).hash("zoë") == hmac.new(key, "zoë".encode("utf-8"),
                                                 hashlib.sha256).hexdigest()


def test_repr_and_str_hide_key():
    hasher = PiiHasher(b"super-secret-key")
    for text in (repr(hasher), str(hasher), f"{hasher!r}"):
        assert "super-secret" not in text and "73757065" not in text
    assert "redacted" in repr(hasher)


@pytest.mark.parametrize("key", [b"", "string-key", None])
def test_bad_key_rejected(key):
    with pytest.raises(ConfigError):
        PiiHasher(key)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ctr():
    return load_config(EXAMPLES / "ctr.yaml", environ={})


@pytest.fixture(scope="module")
def airport():
    return load_config(EXAMPLES / "airport.yaml", environ={})


@pytest.mark.parametrize("environ, expected", [
    ({PII_KEY_ENV: "abc123"}, b"abc123"),
    ({PII_KEY_ENV: "zoë"}, "zoë".encode()),
    ({PII_KEY_ENV: " padded "}, b" padded "),
])
def test_load_pii_key(ctr, environ, expected):
    assert load_pii_key(ctr, environ) == expected


@pytest.mark.parametrize("environ", [{}, {PII_KEY_ENV: ""}, {PII_KEY_ENV: "   "},
                                     {"OTHER": "x"}])
def test_load_pii_key_missing(ctr, environ):
    with pytest.raises(ConfigError) as e:
        load_pii_key(ctr, environ)
    msg = str(e.value)
    assert PII_KEY_ENV in msg and "user_email" in msg and "export DLABEL_PII_KEY=" in msg


@pytest.mark.parametrize("environ", [{}, {PII_KEY_ENV: "abc"}])
def test_no_hashed_feature_no_key(airport, environ):
    # airport only drops PII: no key needed, even if one is set
    assert load_pii_key(airport, environ) is None


def test_load_pii_key_reads_os_environ(ctr, monkeypatch):
    monkeypatch.setenv(PII_KEY_ENV, "from-env")
    assert load_pii_key(ctr) == b"from-env"


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=1, max_size=200), values=st.lists(st.text(max_size=40), max_size=8))
def test_hash_is_the_standard_hmac_for_any_key_length(key, values):
    """The precomputed inner/outer states (keys shorter, equal to and longer than the
    64-byte block, which HMAC hashes first) and the cache give hmac's digest, also
    for a value hashed again and after the cache was emptied."""
    hasher = PiiHasher(key)
    for value in values + values:
        try:
            want = hmac.digest(key, value.encode("utf-8"), "sha256").hex()
        except UnicodeEncodeError:  # a lone surrogate: not text, as before
            with pytest.raises(UnicodeEncodeError):
                hasher.hash(value)
            continue
        assert hasher.hash(value) == want


def test_the_cache_is_bounded():
    hasher = PiiHasher(b"k")
    for i in range(PiiHasher.CACHE_SIZE + 10):
        hasher.hash(f"user{i}@example.com")
    assert hasher.hash("user1@example.com") == hmac.digest(
        b"k", b"user1@example.com", "sha256").hex()
    assert hasher.hash(f"user{PiiHasher.CACHE_SIZE + 5}@example.com") == hmac.digest(
        b"k", f"user{PiiHasher.CACHE_SIZE + 5}@example.com".encode(), "sha256").hex()
    assert 0 < hasher.cached <= PiiHasher.CACHE_SIZE


@pytest.mark.parametrize("length", [1, 32, 63, 64, 65, 131, 200])
def test_keys_around_the_block_size(length):
    key = bytes(range(length)) if length < 256 else b"k" * length
    assert PiiHasher(key).hash("ann@example.com") == hmac.digest(
        key, b"ann@example.com", "sha256").hex()
