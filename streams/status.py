"""`dlabel status`: one screen for an operator, or JSON for scripts.

Everything is read from where it already lives - consumer-group offsets and topic ends
on the broker, the join's closed-time reports, the dataset's manifests, the model
registry - so status works whether or not the pipeline is running.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

from kafka import KafkaAdminClient
from kafka.structs import TopicPartition

from schemas.config import PipelineConfig
from schemas.dataset_schema import iso_utc
from schemas.records import decode_dead_letter
from streams.kafka import clients as kafka_clients
from streams.dataset.sink import sink_group
from streams.common.storage import open_storage
from streams.kafka.tansu_quirks import fetch_end_offsets
from schemas.closed_time_report import DRAINED, decode_report, input_names
from streams.dataset.manifest import list_windows


def join_group(config: PipelineConfig) -> str:
    """The join workers' consumer group (the Faust app id)."""
    from streams.join.faust_adapter import app_id
    return app_id(config)


def consumer_lag(config: PipelineConfig) -> list[dict[str, Any]]:
    """Committed offset, end offset and lag per partition for the join and the sink.

    The join group reads the input topics (whatever their partition count: with the
    repartition hop the producers' topics may have any) and, with the hop, the
    repartition topics too; the sink group reads the labeled topic. Partition counts
    are described on the broker; a topic that does not exist yet has no rows (and is
    not looked up in a way that would auto-create it with the broker's default count).
    """
    t = config.topics
    join_topics = [t.requests, t.feedback]
    if config.repartitions:
        join_topics += [x for x in config.join_inputs.values() if x not in join_topics]
    wanted = {join_group(config): join_topics, sink_group(config): [t.labeled]}
    admin = KafkaAdminClient(bootstrap_servers=config.bootstrap_servers,
                             client_id="dlabel-status", **kafka_clients.kafka_python())
    rows = []
    try:
        counts = _partition_counts(admin, [x for topics in wanted.values() for x in topics])
        tps = [TopicPartition(topic, p) for topics in wanted.values() for topic in topics
               for p in range(counts.get(topic, 0))]
        ends = asyncio.run(fetch_end_offsets(config.bootstrap_servers, tps))
        for group, topics in wanted.items():
            committed = admin.list_group_offsets(group).get(group, {}) or {}
            for topic in topics:
                for p in range(counts.get(topic, 0)):
                    tp = TopicPartition(topic, p)
                    meta = committed.get(tp)
                    offset = meta.offset if meta is not None and meta.offset >= 0 else None
                    end = ends.get(tp)
                    rows.append({"group": group, "topic": topic, "partition": p,
                                 "committed": offset, "end": end,
                                 "lag": None if end is None else end - (offset or 0)})
    finally:
        admin.close()
    return rows


def _partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """``{topic: partition count}`` of the ``topics`` that exist (never creates one)."""
    found: dict[str, int] = {}
    for info in admin.describe_topics(list(dict.fromkeys(topics))):
        if info.get("error_code", 0) == 0 and info.get("partitions"):
            found[info["name"]] = len(info["partitions"])
    return found


#: at most this many dead letters are read per status (the newest of each partition)
DEAD_LETTER_SCAN = 20_000
#: a read_committed consumer that makes no progress this long is held by an open
#: transaction at the end of the topic: what is before it has been read
_STALL_S = 5.0


def misrouted_hint(n: int, config: Optional[PipelineConfig] = None) -> str:
    """What an operator should do about ``n`` misrouted dead letters."""
    key = config.join.key if config is not None else "the join key"
    return (f"{n} records were on the wrong partition for inputs.copartitioned: true; "
            f"key them by the join key ({key}) with murmur2 or turn copartitioned off")


def dead_letters(config: PipelineConfig, scan: int = DEAD_LETTER_SCAN,
                 timeout_s: float = 30.0) -> dict[str, Any]:
    """Dead letters by reason, read from the dead-letter topic up to its end as of now.

    Reads at most ``scan`` records, the newest of each partition: ``counted`` says how
    many were read, ``total`` how many the topic holds (from its offsets; ``capped``
    when older ones were left out). Records that are not dead-letter envelopes are
    counted as ``undecodable``. A non-zero ``misrouted`` comes with a ``hint``.
    """
    from kafka import KafkaConsumer
    topic = config.topics.dead_letter
    out: dict[str, Any] = {"topic": topic, "total": 0, "counted": 0, "reasons": {},
                           "undecodable": 0, "capped": False, "complete": True, "hint": None}
    bootstrap = config.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="dlabel-status",
                             **kafka_clients.kafka_python())
    try:
        n = _partition_counts(admin, [topic]).get(topic, 0)
    finally:
        admin.close()
    if not n:
        return out
    tps = [TopicPartition(topic, p) for p in range(n)]
    ends = asyncio.run(fetch_end_offsets(bootstrap, tps))
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             allow_auto_create_topics=False, **kafka_clients.kafka_python())
    reasons: dict[str, int] = {}
    try:
        begins = consumer.beginning_offsets(tps)
        per_partition = max(1, -(-scan // n))
        todo = {}
        for tp in tps:
            begin, end = begins.get(tp, 0) or 0, ends.get(tp, 0) or 0
            out["total"] += max(0, end - begin)
            start = max(begin, end - per_partition)
            out["capped"] |= start > begin
            if end > start:
                todo[tp] = (start, end)
        if todo:
            consumer.assign(list(todo))
            for tp, (start, _) in todo.items():
                consumer.seek(tp, start)
            deadline = time.monotonic() + timeout_s
            last_progress, last_positions = time.monotonic(), None
            while todo and time.monotonic() < deadline:
                for tp, records in consumer.poll(timeout_ms=300).items():
                    end = todo.get(tp, (0, 0))[1]
                    for r in records:
                        if r.offset >= end:
                            continue
                        out["counted"] += 1
                        try:
                            reason = str(decode_dead_letter(r.value)["reason"])
                        except (ValueError, TypeError):
                            out["undecodable"] += 1
                            continue
                        reasons[reason] = reasons.get(reason, 0) + 1
                positions = {tp: consumer.position(tp) for tp in todo}
                for tp, pos in positions.items():
                    if pos is not None and pos >= todo[tp][1]:
                        del todo[tp]
                if positions != last_positions:
                    last_progress, last_positions = time.monotonic(), positions
                elif time.monotonic() - last_progress > _STALL_S:
                    break  # held at the last stable offset: an open transaction
            out["complete"] = not todo or time.monotonic() < deadline
    finally:
        consumer.close()
    out["reasons"] = dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    if reasons.get("misrouted"):
        out["hint"] = misrouted_hint(reasons["misrouted"], config)
    return out


def join_closed_time(config: PipelineConfig) -> dict[str, Any]:
    """The join's closed time as reported to the sink: per input and the minimum."""
    latest: dict[str, int] = {}
    for rec in _read_to_end(config.bootstrap_servers, config.topics.closed_time):
        try:
            name, closed, _ = decode_report(rec.value)
        except ValueError:
            continue
        latest[name] = max(closed, latest.get(name, closed))
    missing = [n for n in input_names(config) if n not in latest]
    low = None if missing else min(latest.values())
    return {"closed_ms": low, "closed": _time(low), "inputs": {k: _time(v) for k, v in
                                                               sorted(latest.items())},
            "unreported_inputs": missing}


def _read_to_end(bootstrap: str, topic: str):
    """The records of a one-partition topic up to its end as of now (it may keep growing)."""
    from kafka import KafkaConsumer
    tp = TopicPartition(topic, 0)
    end = asyncio.run(fetch_end_offsets(bootstrap, [tp])).get(tp, 0)
    if not end:
        return
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, isolation_level="read_committed",
                             **kafka_clients.kafka_python())
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + 60
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                yield from (r for r in records if r.offset < end)
    finally:
        consumer.close()


def _time(ms: Optional[int]) -> Optional[str]:
    if ms is None:
        return None
    return "drained" if ms >= DRAINED else iso_utc(ms)


def models_status(config: PipelineConfig) -> dict[str, Any]:
    """Champion version, the last job and the champion's latest prequential metrics."""
    from jobs.registry import Registry
    reg = Registry(config.model.path)
    records = reg.window_records()
    last = records[max(records)] if records else None
    failed = sorted(w for w, r in records.items() if r.get("status") == "failed")
    out: dict[str, Any] = {"champion": reg.champion(), "versions": len(reg.versions()),
                           "last_job": last, "failed_windows": failed, "latest_metrics": None}
    trained = [r for r in records.values() if r.get("status") == "trained" and r.get("version")]
    if trained:
        newest = max(trained, key=lambda r: r["window"])
        metrics = reg.metrics(newest["version"])
        out["latest_metrics"] = {"window": newest["window"],
                                 "champion_on_window": (metrics.get("prequential") or {}).get("overall")}
    return out


def collect_status(config: PipelineConfig, broker: bool = True) -> dict[str, Any]:
    """The whole status; ``broker=False`` leaves out what needs the broker."""
    windows = list_windows(open_storage(config.dataset.path))
    closed = [w for w in windows if w["status"] == "closed"]
    status: dict[str, Any] = {
        "pipeline": config.pipeline,
        "windows": {"open": sum(1 for w in windows if w["status"] == "open"),
                    "closed": len(closed),
                    "last_closed": closed[-1]["window_start"] if closed else None,
                    "rows_closed": sum(w["rows"] or 0 for w in closed)},
        "models": models_status(config),
    }
    if broker:
        status["lag"] = consumer_lag(config)
        status["closed_time"] = join_closed_time(config)
        status["dead_letters"] = dead_letters(config)
    return status


def format_status(s: dict[str, Any]) -> str:
    """The status as a few aligned blocks of text."""
    lines = [f"pipeline {s['pipeline']}"]
    if "closed_time" in s:
        wm = s["closed_time"]
        extra = f" (not yet reported: {', '.join(wm['unreported_inputs'])})" \
            if wm["unreported_inputs"] else ""
        lines.append(f"join closed time: {wm['closed'] or '-'}{extra}")
    if "lag" in s:
        lines.append("")
        tw = max([28, *(len(r["topic"]) for r in s["lag"])])  # repartition topics are long
        lines.append(f"{'group':<28} {'topic':<{tw}} {'part':>4} {'committed':>10} {'end':>10} "
                     f"{'lag':>8}")
        for r in s["lag"]:
            lines.append(f"{r['group']:<28} {r['topic']:<{tw}} {r['partition']:>4} "
                         f"{_n(r['committed']):>10} {_n(r['end']):>10} {_n(r['lag']):>8}")
    if "dead_letters" in s:
        lines += ["", *format_dead_letters(s["dead_letters"])]
    w = s["windows"]
    lines += ["", f"windows: {w['closed']} closed ({w['rows_closed']} rows), {w['open']} open; "
                  f"last closed {w['last_closed'] or '-'}"]
    m = s["models"]
    lines.append(f"champion: {m['champion'] or '-'} of {m['versions']} version(s)")
    if m["last_job"]:
        j = m["last_job"]
        lines.append(f"last job: window {j['window']} {j.get('status')} "
                     f"{j.get('version') or ''}{' (promoted)' if j.get('promoted') else ''}")
    if m["failed_windows"]:
        lines.append(f"failed windows: {', '.join(m['failed_windows'])}")
    if m["latest_metrics"] and m["latest_metrics"]["champion_on_window"]:
        o = m["latest_metrics"]["champion_on_window"]
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in o.items())
        lines.append(f"champion on {m['latest_metrics']['window']}: {shown}")
    return "\n".join(lines)


def format_dead_letters(d: dict[str, Any]) -> list[str]:
    """The dead-letter block: counts by reason, what was left out, the misrouted hint."""
    counted = d["counted"]
    by_reason = ", ".join(f"{r} {n}" for r, n in d["reasons"].items())
    if d["undecodable"]:
        by_reason += f"{', ' if by_reason else ''}undecodable {d['undecodable']}"
    lines = [f"dead letters: {counted}{f' ({by_reason})' if by_reason else ''}"]
    if d["capped"]:
        lines.append(f"  (the newest {d['counted']} of {d['total']} in {d['topic']})")
    if not d.get("complete", True):
        lines.append("  (stopped before the end of the topic: timed out)")
    if d.get("hint"):
        lines.append(f"!! misrouted: {d['hint']}")
    return lines


def _n(v: Optional[int]) -> str:
    return "-" if v is None else str(v)
