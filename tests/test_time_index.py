"""``TimeIndex`` takes entries out exactly as a heap of (time, id) tuples pops them."""
from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.join.join_store import TimeIndex

ops = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(-3_000, 3_000), st.sampled_from("abcdefg")),
    st.tuples(st.just("take"), st.integers(-3_500, 3_500), st.just(""))), max_size=120)


@settings(max_examples=400, deadline=None)
@given(ops=ops, bucket_ms=st.sampled_from([1, 7, 1000]))
def test_take_matches_popping_a_heap(ops, bucket_ms):
    index, heap = TimeIndex(bucket_ms), []
    for op, t, rid in ops:
        if op == "push":
            index.push(t, rid)
            heapq.heappush(heap, (t, rid))
        else:
            expected = []
            while heap and heap[0][0] <= t:
                expected.append(heapq.heappop(heap))
            assert index.take(t) == expected
        assert bool(index) == bool(heap) and len(index) == len(heap)
    assert index.take(10 ** 9) == sorted(heap)
