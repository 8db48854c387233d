"""A realistic, deterministic event generator for the two example scenarios.

``generate`` builds the byte-exact messages a model server and "the world" would
produce: ``ctr`` (ad clicks, binary label) and ``airport`` (security-line waits,
regression label), with the messiness the join must survive: feedback that arrives
before its request, duplicated requests, malformed events, orphan feedback, clicks
after the label window, mixed timestamp formats. The result is in arrival order;
``produce`` writes it to the pipeline's topics, keyed by request id (an event with key
None goes round-robin). ``streams.dev.event_shapes.reshape`` rewrites the events as log
shippers write them (ECS, Fluentd: unkeyed).

Out-of-order arrivals (early feedback, delayed requests, duplicates) lag their own
topic by at most ``max(1s, min(60s, allowed_lateness / 2))``, so with a non-zero
``allowed_lateness`` nothing generated here is ``late`` - unless ``late_click_fraction``
asks for clicks that a mobile client buffered (see ``generate``).
"""
from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import math
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Callable, Iterable

from schemas.errors import BrokerError, ConfigError
from streams.kafka import clients as kafka_clients

if TYPE_CHECKING:
    from schemas.config import PipelineConfig

__all__ = ["SimEvent", "ConceptDrift", "generate", "produce", "SCENARIOS", "DEFAULT_START_MS"]

DEFAULT_START_MS = 1_794_999_600_000  # 2026-11-18T11:00:00Z, a whole UTC hour
SCENARIOS = ("ctr", "airport")
CATEGORIES = ("mens_dress_shoes", "womens_running_shoes", "electronics", "books", "toys",
              "kitchen", "garden", "beauty", "sports", "jewelry")
CATEGORY_WEIGHTS = (8, 12, 15, 14, 9, 10, 6, 10, 9, 7)
CATEGORY_CTR = (0.14, 0.10, 0.05, 0.04, 0.08, 0.06, 0.03, 0.09, 0.07, 0.02)
CATEGORY_PRICE = (95.0, 80.0, 250.0, 15.0, 25.0, 40.0, 35.0, 22.0, 60.0, 300.0)
_CHECKPOINTS = ("A", "B", "C", "D")
_CP_WEIGHTS = (35, 30, 20, 15)
_CP_SERVICE_S = (9.0, 12.0, 7.0, 15.0)  # seconds per passenger ahead
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_PLUS1 = timezone(timedelta(hours=1))
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=True).encode

Feedback = tuple[int, str, dict]  # (delay ms after the request, type, extra fields)
_CAT_CUM = tuple(itertools.accumulate(CATEGORY_WEIGHTS))
_CP_CUM = tuple(itertools.accumulate(_CP_WEIGHTS))


def _ri(rng: random.Random, lo: int, hi: int) -> int:
    """A uniform int in [lo, hi] (cheaper than ``randint``)."""
    return lo + int(rng.random() * (hi - lo + 1))


def _pick(rng: random.Random, cum: tuple[int, ...]) -> int:
    """A weighted index for cumulative weights ``cum``."""
    return bisect.bisect_right(cum, rng.random() * cum[-1])


def _rid(rng: random.Random) -> str:
    """A random UUID-shaped request id."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


@dataclass(slots=True)
class SimEvent:
    """One message: ``role`` 'requests' or 'feedback', Kafka key and value bytes.

    ``ts`` is the event time in epoch ms (the intended one, for malformed events);
    ``arrival_ms`` is when it reaches the broker (the list is sorted by it and it is
    the record timestamp); ``kind`` says what it is: request, duplicate, feedback,
    early_feedback (arrives before its request), late_feedback (buffered by a client until
    its request's label was final: ``late_click_fraction``), orphan, or malformed:<how>.
    """
    role: str
    key: bytes | None
    value: bytes
    ts: int
    kind: str = "request"
    arrival_ms: int = 0


@dataclass(frozen=True)
class ConceptDrift:
    """From event time ``at_ms`` on, ``category`` is clicked ``factor`` times as often
    (0.0: it stops being clicked). Only the ctr scenario has categories."""
    at_ms: int
    category: str = "mens_dress_shoes"
    factor: float = 0.0

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"drift category {self.category!r} is not a ctr category; "
                             f"choose one of {', '.join(CATEGORIES)}")
        if not 0.0 <= self.factor:
            raise ValueError(f"drift factor {self.factor!r} is negative; write e.g. 0.0")


_SECONDS: dict[int, tuple[str, str]] = {}  # epoch second -> (UTC, +01:00) ISO prefixes


def fmt_ts(ms: int, r: float) -> Any:
    """Event time ``ms`` as ISO-8601 with Z (r < .4), with +01:00 (r < .7), else int ms."""
    if r >= 0.7:
        return ms
    sec, milli = divmod(ms, 1000)
    pre = _SECONDS.get(sec)
    if pre is None:
        if len(_SECONDS) > 200_000:
            _SECONDS.clear()
        dt = _EPOCH + timedelta(seconds=sec)
        pre = _SECONDS[sec] = (dt.strftime("%Y-%m-%dT%H:%M:%S"),
                               dt.astimezone(_PLUS1).strftime("%Y-%m-%dT%H:%M:%S"))
    if r < 0.4:
        return f"{pre[0]}.{milli:03d}Z"
    return f"{pre[1]}.{milli:03d}+01:00"


def _hour(ms: int) -> int:
    return (ms // 3_600_000) % 24


def _ctr(rng: random.Random, ts: int, window: int, cfg: "PipelineConfig",
         drift: ConceptDrift | None = None) -> tuple[dict, Any, list[Feedback]]:
    """Features, prediction and feedback of one ad impression."""
    c = _pick(rng, _CAT_CUM)
    hour = _hour(ts)
    price = round(rng.lognormvariate(math.log(CATEGORY_PRICE[c]), 0.6), 2)
    p = CATEGORY_CTR[c] * min(2.5, max(0.3, math.sqrt(CATEGORY_PRICE[c] / price)))
    p *= 1.3 if 18 <= hour <= 22 else 0.8 if 1 <= hour <= 6 else 1.0
    p = min(p, 0.9)
    feats: dict[str, Any] = {"hour": hour, "category": CATEGORIES[c],
                             "user_email": f"user{_ri(rng, 1, 20000)}@example.com"}
    r = rng.random()
    if r >= 0.08:
        feats["price"] = price
    elif r < 0.03:
        feats["price"] = ""
    elif r < 0.05:
        feats["price"] = f"{price:.2f}"  # numeric string: still a number
    elif r < 0.06:
        feats["price"] = None
    # else: missing key
    if rng.random() < 0.05:
        feats["referrer"] = "search"  # undeclared feature: ignored and counted
    pred = None if rng.random() < 0.01 else round(min(1.0, p * rng.lognormvariate(0, 0.3)), 4)
    if drift is not None and ts >= drift.at_ms and CATEGORIES[c] == drift.category:
        p *= drift.factor  # the world changed; the logged prediction did not
    positive = cfg.label.positive[0] if cfg.label.positive else "click"
    fbs: list[Feedback] = []
    if rng.random() < 0.7:
        fbs.append((_ri(rng, 50, 3000), "view", {}))
    if rng.random() < p:
        r = rng.random()
        if r < 0.003:
            d = 0  # at the request time: counts
        elif r < 0.006:
            d = window  # exactly at the window end: excluded
        elif r < 0.009:
            d = -_ri(rng, 1, 500)  # clock skew, before the request: excluded
        elif r < 0.08:
            d = window + _ri(rng, 1, window)  # too late for the label
        else:
            d = min(window - 1, 200 + int(rng.expovariate(10.0 / window)))
        fbs.append((d, positive, {}))
        if rng.random() < 0.1:
            fbs.append((d + _ri(rng, 1000, 600_000), positive, {}))
    fbs.sort(key=lambda f: f[0])
    return feats, pred, fbs


def _airport(rng: random.Random, ts: int, window: int, cfg: "PipelineConfig",
             drift: ConceptDrift | None = None) -> tuple[dict, Any, list[Feedback]]:
    """Features, prediction and feedback of one passenger entering a security line."""
    c = _pick(rng, _CP_CUM)
    hour = _hour(ts)
    peak = 6 <= hour <= 9 or 16 <= hour <= 19
    line = max(0, int(rng.gauss(45 if peak else 15, 12 if peak else 7) * (1.3 if c == 3 else 1)))
    fast = rng.random() < 0.15
    feats = {"checkpoint": _CHECKPOINTS[c], "hour": hour, "passengers_in_line": line,
             "fast_track": fast, "passport_id": f"P{rng.randrange(10 ** 8):08d}"}
    speed = 0.35 if fast else 1.0
    pred = round(20 + line * 10 * (0.4 if fast else 1.0), 1)
    exit_type = cfg.label.feedback[0] if cfg.label.feedback else "exit"
    field = cfg.label.value_field
    fbs: list[Feedback] = []
    if rng.random() < 0.02:
        return feats, pred, fbs  # never exits (left the line, data loss)
    elapsed_ms = int((20 + line * _CP_SERVICE_S[c] * speed) * rng.lognormvariate(0, 0.25) * 1000)
    if rng.random() < 0.5:
        fbs.append((int(elapsed_ms * 0.4), "scan", {}))
    extra = {field: round(elapsed_ms / 1000, 3)} if field else {}
    fbs.append((elapsed_ms, exit_type, extra))
    if rng.random() < 0.03:  # a second exit scan: the first one gives the value
        later = elapsed_ms + _ri(rng, 5_000, 120_000)
        fbs.append((later, exit_type, {field: round(later / 1000, 3)} if field else {}))
    fbs.sort(key=lambda f: f[0])
    return feats, pred, fbs


_SCENARIO_FNS: dict[str, tuple[str, Callable[..., tuple[dict, Any, list[Feedback]]]]] = {
    "ctr": ("binary", _ctr), "airport": ("regression", _airport)}
_BAD_REQUEST = ("broken_json", "zoneless_ts", "nan_feature", "bad_type", "missing_id", "garbage")
_BAD_FEEDBACK = ("broken_json", "zoneless_ts", "missing_type", "missing_id", "garbage")


def _malformed(rng: random.Random, role: str, record: dict, key: str, ts: int) -> tuple[str, bytes | None, bytes]:
    """Spoil a fresh copy of ``record`` (a request or feedback dict); (how, key, value)."""
    how = rng.choice(_BAD_REQUEST if role == "requests" else _BAD_FEEDBACK)
    rec = dict(record, **{key: _rid(rng)})
    k: bytes | None = rec[key].encode()
    if how == "garbage":
        return how, None, b"\xff\xfe" + rng.randbytes(_ri(rng, 1, 64))
    if how == "zoneless_ts":
        rec["ts"] = (_EPOCH + timedelta(milliseconds=ts)).replace(tzinfo=None).isoformat(
            timespec="milliseconds")
    elif how in ("nan_feature", "bad_type"):
        feats = dict(rec["features"])
        name = "price" if "category" in feats else "passengers_in_line"
        feats[name] = rng.choice((math.nan, math.inf)) if how == "nan_feature" else "many"
        rec["features"] = feats
    elif how == "missing_id":
        del rec[key]
        k = None
    elif how == "missing_type":
        del rec["type"]
    text = _encode(rec)
    if how == "broken_json":
        text = text[: _ri(rng, 1, len(text) - 2)]
    return how, k, text.encode()


class _LateClicks:
    """Which label-deciding feedback a buffering client sends late, and how late
    (``generate``'s ``late_click_fraction``): its own seeded random stream."""

    def __init__(self, config: "PipelineConfig", scenario: str, seed: int,
                 fraction: float, max_delay_ms: int) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"late_click_fraction {fraction!r} is not in [0, 1]")
        if max_delay_ms <= 300_000:
            raise ValueError(f"late_click_max_delay_ms {max_delay_ms!r} must exceed 5 min")
        self.fraction, self.max_delay = fraction, max_delay_ms
        self.rng = random.Random(f"dlabel-sim-late:{scenario}:{seed}")
        self.window = config.join.label_window_ms
        self.final_after = config.join.allowed_lateness_ms + self.window
        self.types = frozenset(config.label.positive if config.label.kind == "binary"
                               else config.label.feedback)

    def delay(self, ftype: str, delay_ms: int) -> int:
        """Extra arrival delay (ms) of one feedback event, 0 when it is not buffered."""
        if ftype not in self.types or not 0 <= delay_ms < self.window:
            return 0
        if self.rng.random() >= self.fraction:
            return 0
        return self.final_after + _ri(self.rng, 300_000, self.max_delay)


def generate(config: "PipelineConfig", scenario: str, n_requests: int, seed: int,
             start_ms: int = DEFAULT_START_MS, rate_per_s: float = 20.0,
             bad_fraction: float = 0.01, early_fraction: float = 0.02,
             duplicate_fraction: float = 0.005, orphan_fraction: float = 0.005,
             drift: ConceptDrift | None = None,
             late_click_fraction: float = 0.0,
             late_click_max_delay_ms: int = 7_200_000) -> list[SimEvent]:
    """Generate ``n_requests`` requests of ``scenario`` with their feedback, in arrival order.

    Deterministic for (config, scenario, n_requests, seed, ...). Requests arrive as a
    Poisson process of ``rate_per_s`` from ``start_ms``. Per request: with
    ``early_fraction`` its first feedback arrives before it; ``duplicate_fraction``
    a later copy with the same id; ``orphan_fraction`` a feedback for an id that never
    exists. Per valid event, ``bad_fraction`` a malformed event of the same role.
    ``drift`` (ctr only) changes how often one category is clicked from a given time on;
    without it the output is exactly what it was before drift existed.

    ``late_click_fraction``: that share of the feedback events that decide a label
    (ctr's clicks, airport's exits) inside their request's label window by event time
    arrive as a buffering mobile client sends them: ``allowed_lateness + label_window``
    plus 5 min to ``late_click_max_delay_ms`` (2 h) after their event time, when the
    request's label is already final (kind ``late_feedback``; with
    ``join.correction_window`` they become corrections).
    Drawn from a random stream of their own, so the default 0.0 leaves every other
    event exactly as without the option.
    """
    if scenario not in _SCENARIO_FNS:
        raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    kind, make = _SCENARIO_FNS[scenario]
    if drift is not None and scenario != "ctr":
        raise ValueError(f"concept drift is only simulated for the ctr scenario, not {scenario!r}")
    if config.label.kind != kind:
        raise ConfigError(f"label.kind: scenario {scenario!r} needs kind {kind!r}, the config "
                          f"has {config.label.kind!r}; use the {scenario} example config")
    rng = random.Random(f"dlabel-sim:{scenario}:{seed}")
    late = _LateClicks(config, scenario, seed, late_click_fraction, late_click_max_delay_ms)
    key, window = config.join.key, config.join.label_window_ms
    cap = max(1000, min(60_000, config.join.allowed_lateness_ms // 2))
    jit = min(200, config.join.allowed_lateness_ms // 4)
    out: list[SimEvent] = []
    add = out.append
    rand = rng.random
    type_json: dict[str, str] = {}
    t = float(start_ms)
    for _ in range(n_requests):
        t += rng.expovariate(rate_per_s) * 1000.0
        ts = int(t)
        rid = _rid(rng)
        kb = rid.encode()
        feats, pred, fbs = make(rng, ts, window, config, drift)
        req = {key: rid, "ts": fmt_ts(ts, rand()), "features": feats,
               "prediction": pred, "model_version": "v1"}
        arrival = ts + (_ri(rng, 0, jit) if jit else 0)
        if fbs and rand() < early_fraction:
            # the request is uploaded late, after its first (quick) feedback
            d0, ftype, extra = fbs[0]
            if not 0 <= d0 <= cap // 2:
                d0 = _ri(rng, 20, cap // 2)
                fbs[0] = (d0, ftype, {k: round(d0 / 1000, 3) for k in extra})
                fbs.sort(key=lambda f: f[0])
            arrival = ts + d0 + jit + _ri(rng, 1, cap // 2 - jit)
        add(SimEvent("requests", kb, _encode(req).encode(), ts, "request", arrival))
        if rand() < duplicate_fraction:
            dup = req if rand() < 0.5 else dict(req, prediction=0.5)
            at = max(arrival + 1, ts + _ri(rng, 1000, cap))  # lags its topic <= cap
            add(SimEvent("requests", kb, _encode(dup).encode(), ts, "duplicate", at))
        if rand() < bad_fraction:
            how, k, v = _malformed(rng, "requests", req, key, ts)
            add(SimEvent("requests", k, v, ts, "malformed:" + how, arrival))
        for delay, ftype, extra in fbs:
            fts = ts + delay
            tsv = fmt_ts(fts, rand())
            tj = type_json.get(ftype) or type_json.setdefault(ftype, json.dumps(ftype))
            tail = "," + _encode(extra)[1:-1] if extra else ""
            # small fixed shape: formatted directly (ids are hex, times have no escapes)
            text = (f'{{"{key}":"{rid}","ts":{tsv if type(tsv) is int else chr(34) + tsv + chr(34)}'
                    f',"type":{tj},"value":null{tail}}}')
            fa = fts + (_ri(rng, 0, jit) if jit else 0)
            buffered = late.delay(ftype, delay) if late.fraction else 0
            add(SimEvent("feedback", kb, text.encode(), fts, "late_feedback" if buffered else
                         "early_feedback" if fa < arrival else "feedback", fa + buffered))
            if rand() < bad_fraction:
                fb = {key: rid, "ts": tsv, "type": ftype, "value": None, **extra}
                how, k, v = _malformed(rng, "feedback", fb, key, fts)
                add(SimEvent("feedback", k, v, fts, "malformed:" + how, fa))
        if rand() < orphan_fraction:
            oid = _rid(rng)
            fts = ts + _ri(rng, 100, 60_000)
            ftype = (config.label.positive or config.label.feedback or ("click",))[0]
            fb = {key: oid, "ts": fmt_ts(fts, rand()), "type": ftype, "value": None}
            if config.label.value_field:  # a valid orphan carries its outcome (no rng draw)
                fb[config.label.value_field] = round((fts - ts) / 1000, 3)
            add(SimEvent("feedback", oid.encode(), _encode(fb).encode(), fts, "orphan", fts))
    out.sort(key=attrgetter("arrival_ms"))  # stable: ties keep generation order
    return out


async def produce_async(bootstrap: str, config: "PipelineConfig", events: Iterable[SimEvent],
                        batch_size: int = 16384, linger_ms: int = 5) -> int:
    """Async ``produce`` (without topic creation): aiokafka, hand-built batches, acks=all."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from aiokafka.partitioner import DefaultPartitioner

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, linger_ms=linger_ms,
                                max_batch_size=batch_size, client_id="dlabel-simulate",
                                **kafka_clients.aiokafka())
    try:
        await producer.start()
    except KafkaError as e:
        await producer.stop()
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap} ({e}); start one "
                          "with `dlabel broker`") from None
    try:
        topics = {"requests": config.topics.requests, "feedback": config.topics.feedback}
        parts = {role: sorted(await producer.partitions_for(t)) for role, t in topics.items()}
        hash_partition = DefaultPartitioner()
        hashed: dict[tuple[bytes, int], int] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        pending = []
        n = rr = 0
        for ev in events:
            topic, ps = topics[ev.role], parts[ev.role]
            if ev.key is None:
                p, rr = ps[rr % len(ps)], rr + 1
            else:  # murmur2 is pure Python in aiokafka: remember it per (key, count)
                p = hashed.get((ev.key, len(ps)))
                if p is None:
                    p = hashed[(ev.key, len(ps))] = hash_partition(ev.key, ps, ps)
            batch = open_batches.get((topic, p))
            stamp = ev.arrival_ms or ev.ts
            if batch is None or batch.append(key=ev.key, value=ev.value, timestamp=stamp) is None:
                if batch is not None:
                    pending.append(await producer.send_batch(batch, topic, partition=p))
                batch = open_batches[(topic, p)] = producer.create_batch()
                if batch.append(key=ev.key, value=ev.value, timestamp=stamp) is None:
                    raise BrokerError(f"an event of {len(ev.value)} bytes does not fit in a "
                                      f"producer batch of batch_size={batch_size} bytes; "
                                      "pass a larger batch_size")
            n += 1
        for (topic, p), batch in open_batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=p))
        await asyncio.gather(*pending)
        return n
    except KafkaError as e:
        raise BrokerError(f"producing to {bootstrap} failed ({e})") from None
    finally:
        await producer.stop()


def produce(bootstrap: str, config: "PipelineConfig", events: Iterable[SimEvent],
            batch_size: int = 16384, linger_ms: int = 5, ensure: bool = True) -> int:
    """Write ``events`` to the requests/feedback topics in list order; return the count.

    Keys are the events' keys (the request id; murmur2 partitioning like Java clients,
    round-robin for key-less events). acks=all, idempotence off (the embedded broker
    lacks InitProducerId). With ``ensure`` the pipeline's topics are created first, so
    they never get auto-created with the wrong partition count. Everything is
    acknowledged when this returns. Works inside a running event loop too (uses a
    worker thread).
    """
    if ensure:
        from streams.kafka.topics import ensure_topics
        ensure_topics(bootstrap, config)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(produce_async(bootstrap, config, events, batch_size, linger_ms))
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(
            produce_async(bootstrap, config, events, batch_size, linger_ms))).result()
