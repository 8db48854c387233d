"""WatermarkTracker: per-partition event time, idleness and a monotonic watermark.

Every test drives an injected fake clock, so idleness is exact and nothing sleeps.
"""
from __future__ import annotations

import pytest

from streams.join.watermark import WatermarkTracker

IDLE = 1_000  # idle_timeout_ms of every tracker here
R0, R1, F0, F1 = ("requests", 0), ("requests", 1), ("feedback", 0), ("feedback", 1)


class FakeClock:
    """A clock in ms that only moves when told to."""

    def __init__(self, now: int = 1_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def tracker(clock: FakeClock, *parts: tuple[str, int], idle: int = IDLE) -> WatermarkTracker:
    wm = WatermarkTracker(idle_timeout_ms=idle, clock=clock)
    wm.assign(parts)
    return wm


def observe_all(wm: WatermarkTracker, events) -> None:
    for (role, partition), ts in events:
        wm.observe(role, partition, ts)


# --------------------------------------------------------------- min of max
@pytest.mark.parametrize("events, expected", [
    pytest.param([(R0, 100), (F0, 50)], 50, id="min over two inputs"),
    pytest.param([(R0, 100), (R0, 40), (F0, 70)], 70, id="an input's max, not its last"),
    pytest.param([(R0, 10), (R0, 300), (F0, 200), (F0, 250)], 250, id="max per input then min"),
    pytest.param([(R0, 5), (F0, 5)], 5, id="equal"),
    pytest.param([(R0, 0), (F0, 1_795_000_000_000)], 0, id="epoch zero counts as a time"),
])
def test_watermark_is_min_over_inputs_of_max_event_time(clock, events, expected) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, events)
    assert wm.current() == expected


def test_four_inputs_slowest_bounds_the_watermark(clock) -> None:
    wm = tracker(clock, R0, R1, F0, F1)
    observe_all(wm, [(R0, 900), (R1, 700), (F0, 800), (F1, 300)])
    assert wm.current() == 300
    wm.observe("feedback", 1, 1_000)
    assert wm.current() == 700


def test_max_ts_per_input(clock) -> None:
    wm = tracker(clock, R0, F0)
    assert wm.max_ts("requests", 0) is None
    observe_all(wm, [(R0, 100), (R0, 40)])
    assert wm.max_ts("requests", 0) == 100
    assert wm.max_ts("feedback", 0) is None
    assert wm.max_ts("requests", 9) is None  # never seen


# --------------------------------------------------------------- None at start
def test_none_until_every_assigned_input_has_an_event(clock) -> None:
    wm = tracker(clock, R0, R1, F0)
    assert wm.current() is None
    wm.observe("requests", 0, 100)
    wm.observe("requests", 1, 200)
    clock.advance(IDLE - 1)  # still short of the idle timeout
    assert wm.current() is None
    wm.observe("feedback", 0, 150)
    assert wm.current() == 100


def test_none_with_nothing_assigned_and_nothing_seen(clock) -> None:
    wm = WatermarkTracker(idle_timeout_ms=IDLE, clock=clock)
    assert wm.current() is None
    clock.advance(10 * IDLE)
    assert wm.current() is None


def test_all_inputs_idle_without_any_event_stays_none(clock) -> None:
    wm = tracker(clock, R0, F0)
    clock.advance(10 * IDLE)
    assert wm.current() is None


# --------------------------------------------------------------- monotonic
def test_never_goes_back_when_a_slower_input_is_assigned(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 500), (F0, 400)])
    assert wm.current() == 400
    wm.assign([R1])  # a new input without events: unbounded, but the watermark holds
    assert wm.current() == 400
    wm.observe("requests", 1, 100)  # far behind: min would be 100
    assert wm.current() == 400


def test_never_goes_back_when_an_idle_input_wakes_up_behind(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 1_000), (F0, 100)])
    assert wm.current() == 100
    clock.advance(IDLE // 2)
    wm.observe("requests", 0, 2_000)  # R0 stays active, F0 goes quiet
    clock.advance(IDLE // 2)
    assert wm.current() == 2_000  # F0 idle: only R0 counts
    wm.observe("feedback", 0, 150)  # F0 wakes up far behind
    assert wm.current() == 2_000


@pytest.mark.parametrize("steps", [
    [(R0, 10), (F0, 20), (R0, 5), (F0, 1), (R0, 30), (F0, 25), (R0, 24)],
    [(F0, 100), (R0, 1), (R0, 2), (F0, 50), (R0, 3), (R0, 200), (F0, 60), (F0, 300)],
])
def test_watermark_sequence_is_non_decreasing(clock, steps) -> None:
    wm = tracker(clock, R0, F0)
    seen = []
    for (role, partition), ts in steps:
        wm.observe(role, partition, ts)
        clock.advance(10)
        seen.append(wm.current())
    values = [v for v in seen if v is not None]
    assert values == sorted(values)
    assert seen[-1] is not None


# --------------------------------------------------------------- idleness
def test_caught_up_input_quiet_for_idle_timeout_stops_counting(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    clock.advance(IDLE - 1)
    wm.observe("feedback", 0, 600)
    assert wm.current() == 100  # R0 quiet for IDLE - 1: still counts
    clock.advance(1)
    assert wm.current() == 600  # R0 quiet for exactly IDLE: idle


def test_an_assigned_input_that_never_gets_an_event_goes_idle(clock) -> None:
    wm = tracker(clock, R0, F0)  # assigned at t0
    clock.advance(IDLE // 2)
    wm.observe("requests", 0, 100)
    assert wm.current() is None  # F0 unbounded and not idle yet
    clock.advance(IDLE // 2)  # F0 quiet for IDLE since its assignment
    assert wm.current() == 100


def test_touch_counts_as_activity(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    clock.advance(IDLE - 1)
    wm.touch("requests", 0)  # an invalid record on R0: activity without an event time
    wm.observe("feedback", 0, 600)
    clock.advance(1)
    assert wm.current() == 100  # R0 was active 1 ms ago


def test_input_not_caught_up_never_idles(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    wm.set_caught_up("requests", 0, False)
    for _ in range(5):
        clock.advance(10 * IDLE)
        wm.observe("feedback", 0, wm.max_ts("feedback", 0) + 1_000)
        assert wm.current() == 100
    wm.set_caught_up("requests", 0, True)  # reached its end, quiet for long: idle at once
    assert wm.current() == wm.max_ts("feedback", 0)


def test_one_input_behind_its_end_stops_the_clock_advance(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    wm.set_caught_up("requests", 0, False)
    clock.advance(100 * IDLE)
    assert wm.current() == 100


# --------------------------------------------------------------- all idle
@pytest.mark.parametrize("after_idle, expected", [
    (0, 500),      # the moment the last one goes idle: the largest event time seen
    (1, 501),
    (250, 750),
    (60_000, 60_500),
])
def test_all_idle_advances_with_the_clock(clock, after_idle, expected) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    clock.advance(IDLE - 1)
    assert wm.current() == 100
    clock.advance(1 + after_idle)
    assert wm.current() == expected


def test_all_idle_clock_runs_from_the_last_activity(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    clock.advance(300)
    wm.touch("requests", 0)  # the last input to go quiet, 300 ms later
    clock.advance(IDLE)
    assert wm.current() == 500
    clock.advance(200)
    assert wm.current() == 700


def test_all_idle_then_activity_resumes_without_going_back(clock) -> None:
    wm = tracker(clock, R0, F0)
    observe_all(wm, [(R0, 100), (F0, 500)])
    clock.advance(IDLE + 5_000)
    assert wm.current() == 5_500
    wm.observe("requests", 0, 1_000)  # R0 active again, F0 still idle
    assert wm.current() == 5_500
    wm.observe("requests", 0, 9_000)
    assert wm.current() == 9_000  # event time passes the clock-driven value: follows it


# --------------------------------------------------------------- all_caught_up
@pytest.mark.parametrize("caught_up, quiet_since, quiet_ms, expected", [
    ((True, True), (0, 0), 500, True),
    ((True, True), (0, 0), 1_000, True),       # exactly quiet_ms
    ((True, True), (0, 0), 1_001, False),
    ((True, False), (0, 0), 500, False),       # one input behind its end
    ((False, False), (0, 0), 0, False),
    ((True, True), (0, 600), 500, False),      # one input active 400 ms ago
    ((True, True), (0, 600), 400, True),
])
def test_all_caught_up(clock, caught_up, quiet_since, quiet_ms, expected) -> None:
    wm = tracker(clock, R0, F0)
    start = clock.now
    for part, since in zip((R0, F0), quiet_since):
        clock.now = start + since
        wm.observe(*part, 100)
    for part, flag in zip((R0, F0), caught_up):
        wm.set_caught_up(*part, flag)
    clock.now = start + 1_000
    assert wm.all_caught_up(quiet_ms) is expected


def test_all_caught_up_counts_touches(clock) -> None:
    wm = tracker(clock, R0, F0)
    clock.advance(2_000)
    assert wm.all_caught_up(1_500)
    wm.touch("feedback", 0)
    assert not wm.all_caught_up(1_500)
    clock.advance(1_500)
    assert wm.all_caught_up(1_500)
