"""dlabel's binary label as a Quix Streams application: ``join_interval`` (how="left") of
the requests with the positive feedback, keyed by request id (the record key, as the
producers wrote it: co-partitioned, murmur2), event time from each event's ``ts``.

Run by ``bench_peers.py`` from its own venv (see requirements.txt):

    .venv-quix/bin/python quix_label_join.py --bootstrap HOST:PORT --requests T \
        --feedback T --output T --group G --state-dir D --window-ms 1800000 \
        --grace-ms 120000 --dataset-window-ms 3600000 --guarantee at_least_once

Interval: feedback counts if ``r.ts <= f.ts < r.ts + window`` (``backward_ms=0``,
``forward_ms=window - 1``); ``grace_ms`` is how long Quix keeps records in its store
behind the newest time of the key (we give it the label window plus dlabel's
allowed_lateness, so that no request expires before its window closes). Quix's left
join emits each request when it arrives, with the positives already stored (early
clicks) or alone - a provisional negative that is never retracted - and then one more
output per click that arrives later: the final label of a request is the maximum of its
outputs. Invalid events (broken JSON, no zone in the time, NaN, a feature of the wrong
type, no key) are ignored by the deserializer (``IgnoreMessage``), as is the driver's
end-of-input marker. Output: the labeled example as JSON (dlabel's columns; user_email
as the hex HMAC-SHA256 with the PII key). Prints ``FIRST_RECORD_MS <epoch ms>`` when the
first input record is deserialized.
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import sys
import time
from datetime import datetime, timedelta, timezone

import orjson
from quixstreams import Application
from quixstreams.models.serializers import Deserializer
from quixstreams.models.serializers.exceptions import IgnoreMessage

FIRST = [0]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS = timedelta(milliseconds=1)


def event_time(ts) -> int:
    """Epoch ms of an ISO-8601 time with a zone or integer epoch ms; IgnoreMessage else."""
    if type(ts) is int:
        return ts
    if isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            raise IgnoreMessage() from None
        if dt.tzinfo is None:
            raise IgnoreMessage()
        return (dt - EPOCH) // MS
    raise IgnoreMessage()


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class EventDeserializer(Deserializer):
    """JSON -> dict with ``_ts`` (event time, ms); invalid events are ignored."""

    def __init__(self, request: bool):
        super().__init__()
        self.request = request

    def __call__(self, value: bytes, ctx):
        if not FIRST[0]:
            FIRST[0] = int(time.time() * 1000)
            print(f"FIRST_RECORD_MS {FIRST[0]}", flush=True)
        try:
            obj = orjson.loads(value)  # NaN and Infinity are not JSON: rejected
        except orjson.JSONDecodeError:
            raise IgnoreMessage() from None
        if type(obj) is not dict or type(obj.get("request_id")) is not str:
            raise IgnoreMessage()
        obj["_ts"] = event_time(obj.get("ts"))
        if self.request:
            f = obj.get("features")
            if type(f) is not dict:
                raise IgnoreMessage()
            hour, price = f.get("hour"), f.get("price")
            if hour is not None and type(hour) is not int:
                raise IgnoreMessage()
            if isinstance(price, str) and price:
                try:
                    f["price"] = float(price)
                except ValueError:
                    raise IgnoreMessage() from None
            elif price == "":
                f["price"] = None
            elif price is not None and not _number(price):
                raise IgnoreMessage()
        elif type(obj.get("type")) is not str:
            raise IgnoreMessage()
        return obj


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("bootstrap", "requests", "feedback", "output", "group", "state-dir"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--window-ms", type=int, required=True)
    ap.add_argument("--grace-ms", type=int, required=True)
    ap.add_argument("--dataset-window-ms", type=int, required=True)
    ap.add_argument("--positive", default="click")
    ap.add_argument("--guarantee", choices=["at_least_once", "exactly_once"],
                    default="at_least_once")
    ap.add_argument("--pii-key", default="")
    ap.add_argument("--store-grace-ms", type=int, default=None,
                    help="join_interval's grace_ms (default: window + --grace-ms)")
    args = ap.parse_args()
    window, dwin = args.window_ms, args.dataset_window_ms
    positive = set(args.positive.split(","))
    key = args.pii_key.encode()

    def hashed(v):
        return hmac.new(key, v.encode(), hashlib.sha256).hexdigest() if isinstance(v, str) \
            else None

    def label(r: dict, click) -> dict:
        ts, f = r["_ts"], r["features"]
        return {"request_id": r["request_id"], "request_ts": ts,
                "window_start": ts - ts % dwin,
                "label": 0 if click is None else 1,
                "label_ts": ts + window if click is None else click["_ts"],
                "prediction": r.get("prediction"), "model_version": r.get("model_version"),
                "hour": f.get("hour"), "category": f.get("category"),
                "price": f.get("price"), "user_email": hashed(f.get("user_email"))}

    app = Application(
        broker_address=args.bootstrap, consumer_group=args.group,
        auto_offset_reset="earliest", state_dir=args.state_dir,
        processing_guarantee=("exactly-once" if args.guarantee == "exactly_once"
                              else "at-least-once"),
        loglevel="WARNING")
    extract = (lambda value, headers, timestamp, ttype: value["_ts"])  # noqa: E731
    requests = app.topic(args.requests, key_deserializer="str",
                         value_deserializer=EventDeserializer(request=True),
                         timestamp_extractor=extract)
    feedback = app.topic(args.feedback, key_deserializer="str",
                         value_deserializer=EventDeserializer(request=False),
                         timestamp_extractor=extract)
    output = app.topic(args.output, key_serializer="str", value_serializer="json")
    clicks = app.dataframe(feedback).filter(lambda v: v["type"] in positive)
    labeled = app.dataframe(requests).join_interval(
        clicks, how="left", on_merge=label, backward_ms=0, forward_ms=window - 1,
        grace_ms=(window + args.grace_ms if args.store_grace_ms is None
                  else args.store_grace_ms))
    labeled.to_topic(output)
    print(f"STARTED_MS {int(time.time() * 1000)}", flush=True)
    app.run()


if __name__ == "__main__":
    sys.exit(main())
