"""orjson on the hot path must not change what the parser reads or the bytes we write."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import EventError
from schemas.events import load_event_object
from schemas.records import encode_labeled

TRICKY = [b'{"a":1,"a":2}', b'\xef\xbb\xbf{"a":1}', b'{"a":NaN}', b'{"a":-Infinity}',
          b'{"a":1e400}', b'{"a":123456789012345678901234567890}',
          b'{"f":{"x":-9223372036854775809}}', b'{"a":"\\ud800"}', b' {"a":1} ',
          b'{"a":1}\x00', b'{"a":-0}', b'{"a":"\xc3\xa9"}', b'{"a":18446744073709551615}',
          b'{"a":0.1e-7}', b'{"a":"\xff"}', b'[1]', b'null', b'', b'{"a":[1e30]}']


def _json_way(raw: bytes):
    """json's reading, with our one deliberate difference: lone surrogates are invalid."""
    try:
        obj = json.loads(str(raw, "utf-8"))
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
        return "error"
    return obj if type(obj) is dict else "error"


def _ours(raw: bytes):
    try:
        return load_event_object(raw)
    except EventError:
        return "error"


@pytest.mark.parametrize("raw", TRICKY)
def test_load_reads_what_json_reads(raw):
    assert repr(_ours(raw)) == repr(_json_way(raw))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=6))
def test_load_equals_json_on_random_objects(obj):
    raw = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert repr(_ours(raw)) == repr(_json_way(raw))


scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), scalars, max_size=8))
def test_encode_labeled_writes_the_json_bytes(example):
    try:
        want = json.dumps(example, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(UnicodeEncodeError):
            encode_labeled(example)
        return
    assert encode_labeled(example) == want


def test_encode_labeled_still_refuses_nan():
    with pytest.raises(ValueError):
        encode_labeled({"label": float("nan")})


@pytest.mark.parametrize("depth", [500, 990, 1030, 5000])
def test_deep_nesting_is_read_like_json(depth):
    raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    assert repr(_ours(raw)) == repr(_json_way(raw))
