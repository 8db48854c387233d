"""Create the Kafka topics of a pipeline, explicitly and idempotently.

Create topics before any client looks them up: a broker with auto-creation enabled
(Tansu always, Apache Kafka by default) creates an unknown topic on the first metadata
request that names it, with the broker's default partition count (4 on Tansu) and no
configs. Every topic here is created with explicit configs, because topics created
without them describe with an empty config on Tansu, which breaks some clients; the
input topics' retention is the operator's, except on Tansu (see ``tansu_quirks``).

Uses kafka-python 3.0's ``KafkaAdminClient``, whose metadata requests set
``allow_auto_topic_creation=False`` (so looking a topic up here never creates it).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient
import kafka.errors as kerr

from schemas.errors import BrokerError
from streams.kafka import clients as kafka_clients
from streams.kafka import tansu_quirks

if TYPE_CHECKING:
    from schemas.config import PipelineConfig

__all__ = ["ensure_topics", "partition_count", "topic_plan", "TOPIC_CONFIGS", "INPUT_TOPIC_CONFIGS",
           "WINDOWS_TOPIC_CONFIGS", "DEAD_LETTER_TOPIC_CONFIGS", "DEAD_LETTER_MAX_MESSAGE_BYTES"]

_WEEK_MS = 7 * 24 * 3600 * 1000
_HOUR_MS = 3600 * 1000
# inputs: the model server's and the world's topics; their retention is the operator's
# (the broker's default applies when dlabel creates them; on Tansu, which keeps every
# record, they say so: ``tansu_quirks.TANSU_INPUT_TOPIC_CONFIGS``)
INPUT_TOPIC_CONFIGS: dict[str, str] = {"cleanup.policy": "delete"}
# outputs: a week of history, like Kafka's default, but stated explicitly
TOPIC_CONFIGS: dict[str, str] = {"retention.ms": str(_WEEK_MS), "cleanup.policy": "delete"}
# a dead letter carries its input record as base64 (4/3 the size, up to
# DEAD_LETTER_ORIGINAL_MAX_BYTES of it): an invalid input under Kafka's default 1 MiB
# limit may make a dead letter over it, which the broker would refuse (the worker
# stopping on the same record at every restart). 3 MiB takes the largest; the join's
# producers send requests of up to 4 MiB.
DEAD_LETTER_MAX_MESSAGE_BYTES = 3 << 20
DEAD_LETTER_TOPIC_CONFIGS: dict[str, str] = {
    **TOPIC_CONFIGS, "max.message.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES)}
# the repartition topics carry input records of up to MAX_EVENT_BYTES (1 MiB) plus the
# key and the hop's header: room above the broker's default for those few bytes
REPARTITION_TOPIC_CONFIGS: dict[str, str] = {**TOPIC_CONFIGS, "max.message.bytes": str(2 << 20)}
# the windows topic is tiny and replayed by the jobs runner: keep it forever
WINDOWS_TOPIC_CONFIGS: dict[str, str] = {"retention.ms": "-1", "cleanup.policy": "delete"}
# the join's state changelogs and its closed-time reports: compacted, never deleted by
# age (recovery reads them whole). Hourly segments let compaction run within hours
# instead of once a week; a minute of compaction lag keeps the newest records whole
# while a worker restarts; deletes (tombstones) stay a day, longer than any recovery.
CHANGELOG_TOPIC_CONFIGS: dict[str, str] = {
    "cleanup.policy": "compact", "retention.ms": "-1", "segment.ms": str(_HOUR_MS),
    "min.compaction.lag.ms": "60000", "delete.retention.ms": str(24 * _HOUR_MS)}
_UNKNOWN_TOPIC = kerr.UnknownTopicOrPartitionError.errno


def topic_plan(config: "PipelineConfig", extra: Iterable[str] = (),
               compacted: Iterable[str] = ()) -> dict[str, tuple[int, dict[str, str]]]:
    """``{topic: (partitions, configs)}`` for every topic of ``config`` plus ``extra``.

    requests, feedback, labeled, dead_letter and the ``extra`` topics get
    ``config.topics.partitions`` partitions; the windows topic gets 1 (its events are
    ordered), and so does the compacted topic of closed-time reports. Unless
    ``inputs.copartitioned``, the repartition topics are planned too (the join's tasks),
    and existing input topics may have any partition count (see ``any_count``).
    """
    t = config.topics
    plan: dict[str, tuple[int, dict[str, str]]] = {}
    for name in (t.requests, t.feedback):
        plan[name] = (t.partitions, dict(INPUT_TOPIC_CONFIGS))
    repartition = tuple(config.join_inputs.values()) if config.repartitions else ()
    for name in (t.labeled, *extra):
        plan[name] = (t.partitions, dict(TOPIC_CONFIGS))
    for name in repartition:
        plan[name] = (t.partitions, dict(REPARTITION_TOPIC_CONFIGS))
    plan[t.dead_letter] = (t.partitions, dict(DEAD_LETTER_TOPIC_CONFIGS))
    for name in compacted:
        plan[name] = (t.partitions, dict(CHANGELOG_TOPIC_CONFIGS))
    plan[t.windows] = (1, dict(WINDOWS_TOPIC_CONFIGS))
    if t.closed_time:  # the join's closed-time reports: latest per input partition matters
        plan[t.closed_time] = (1, dict(CHANGELOG_TOPIC_CONFIGS))
    return plan


def _admin(bootstrap: str, timeout: float) -> KafkaAdminClient:
    ms = max(1000, int(timeout * 1000))
    try:
        return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="dlabel-admin",
                                bootstrap_timeout_ms=ms, request_timeout_ms=min(ms, 30000),
                                **kafka_clients.kafka_python())
    except kerr.KafkaError as e:
        raise BrokerError(f"cannot reach the Kafka broker at {bootstrap} ({e}); start one "
                          "with `dlabel broker` or fix --broker / DLABEL_BROKER") from None


def _describe(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """``{topic: partition count}`` for the topics that exist (never creates any)."""
    found: dict[str, int] = {}
    for info in admin.describe_topics(topics):
        code = info.get("error_code", 0)
        if code == _UNKNOWN_TOPIC:
            continue
        if code:
            raise BrokerError(f"cannot describe topic {info.get('name')!r}: "
                              f"{kerr.for_code(code).__name__}")
        found[info["name"]] = len(info.get("partitions") or [])
    return found


def any_count(config: "PipelineConfig") -> frozenset[str]:
    """Topics whose existing partition count is fine whatever it is: the inputs, when
    the worker repartitions them (the join's tasks are the repartition topics')."""
    t = config.topics
    return frozenset((t.requests, t.feedback)) if config.repartitions else frozenset()


def _check_counts(plan: dict[str, tuple[int, Any]], existing: dict[str, int],
                  flexible: frozenset[str] = frozenset()) -> None:
    for name, have in existing.items():
        want = plan[name][0]
        if have != want and name not in flexible:
            raise BrokerError(
                f"topic {name!r} exists with {have} partitions but the pipeline needs {want}; "
                f"delete and recreate it with {want} partitions (its data is lost), or "
                + (f"set topics.partitions: {have} in the config" if want != 1 else
                   "use a fresh topic name for topics.windows")
                + ". (A topic looked up before it was created is auto-created with the "
                "broker's default partition count.)")


def ensure_topics(bootstrap: str, config: "PipelineConfig", extra: Iterable[str] = (),
                  compacted: Iterable[str] = (),
                  timeout: float = 30) -> None:
    """Create every topic of ``config`` (and ``extra``) that does not exist yet.

    Existing topics are fine if their partition count matches and, for the compacted
    ones (join state, closed-time reports), their cleanup policy keeps every key's last
    record; otherwise BrokerError names the topic, what is wrong and the fix. Returns
    once all topics have a leader for every partition. Raises BrokerError if the broker
    cannot be reached.
    """
    plan = topic_plan(config, extra, compacted)
    names = list(plan)
    admin = _admin(bootstrap, timeout)
    try:
        if tansu_quirks.admin_is_tansu(admin):
            for name in (config.topics.requests, config.topics.feedback):
                plan[name][1].update(tansu_quirks.TANSU_INPUT_TOPIC_CONFIGS)
        existing = _describe(admin, names)
        _check_counts(plan, existing, any_count(config))
        _check_configs(admin, plan, existing)
        missing = {n: {"num_partitions": plan[n][0],
                       "replication_factor": config.topics.replication_factor,
                       "configs": plan[n][1]}
                   for n in names if n not in existing}
        if missing:
            result = admin.create_topics(missing, timeout_ms=int(timeout * 1000),
                                         raise_errors=False)
            raced = []
            for topic in result.get("topics", []):
                code = topic.get("error_code", 0)
                if code == kerr.TopicAlreadyExistsError.errno:
                    raced.append(topic["name"])  # created concurrently by someone else
                elif code:
                    msg = topic.get("error_message") or kerr.for_code(code).__name__
                    raise BrokerError(f"cannot create topic {topic['name']!r}: {msg}")
            if raced:
                _check_counts(plan, _describe(admin, raced), any_count(config))
        admin.wait_for_topics(names, timeout_ms=int(timeout * 1000))
    except kerr.KafkaError as e:
        raise BrokerError(f"topic setup on {bootstrap} failed ({e})") from None
    finally:
        admin.close()


def _check_configs(admin: KafkaAdminClient, plan: dict[str, tuple[int, dict]],
                   existing: dict[str, int]) -> None:
    """Refuse an existing compacted topic whose cleanup policy would delete state, and
    an existing topic whose ``max.message.bytes`` is below what the pipeline writes.

    A broker that describes no configs (Tansu) has nothing to check.
    """
    names = [n for n in existing if plan[n][1].get("cleanup.policy") == "compact"
             or "max.message.bytes" in plan[n][1]]
    if not names:
        return
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, n) for n in names],
        config_filter="all").get("topic", {})
    for name in names:
        configs = {k: (v.get("value") if isinstance(v, dict) else v)
                   for k, v in (described.get(name) or {}).items()}
        _check_max_message_bytes(name, plan[name][1], configs)
        if plan[name][1].get("cleanup.policy") != "compact":
            continue
        policy = configs.get("cleanup.policy")
        if policy is None:
            continue
        policies = {p.strip() for p in str(policy).split(",")}
        retention = str(configs.get("retention.ms") or "-1")
        if "compact" in policies and ("delete" not in policies or retention == "-1"):
            continue
        raise BrokerError(
            f"topic {name!r} exists with cleanup.policy={policy} and retention.ms="
            f"{retention}: Kafka would delete records the join needs to recover its state "
            f"(or the sink its closed time); fix it with `kafka-configs.sh --bootstrap-server "
            f"<broker> --alter --entity-type topics --entity-name {name} --add-config "
            f"cleanup.policy=compact,retention.ms=-1`, or delete the topic to have dlabel "
            f"create it")


def _check_max_message_bytes(name: str, planned: dict[str, str],
                             configs: dict[str, Any]) -> None:
    want, have = planned.get("max.message.bytes"), configs.get("max.message.bytes")
    if want is None or have is None or int(have) >= int(want):
        return
    raise BrokerError(
        f"topic {name!r} exists with max.message.bytes={have}, below the {want} the "
        f"pipeline may write to it (a dead letter carries its input record as base64; a "
        f"repartition topic carries whole input records): the broker would refuse such a "
        f"record and the worker would stop on it at every restart; fix it with "
        f"`kafka-configs.sh --bootstrap-server <broker> --alter --entity-type topics "
        f"--entity-name {name} --add-config max.message.bytes={want}`")


def partition_count(bootstrap: str, topic: str, timeout: float = 30) -> int:
    """The number of partitions of ``topic``; BrokerError if it does not exist.

    Does not auto-create the topic.
    """
    admin = _admin(bootstrap, timeout)
    try:
        counts = _describe(admin, [topic])
    except kerr.KafkaError as e:
        raise BrokerError(f"cannot describe topic {topic!r} on {bootstrap} ({e})") from None
    finally:
        admin.close()
    if topic not in counts:
        raise BrokerError(f"topic {topic!r} does not exist on {bootstrap}; "
                          "create the pipeline's topics first (ensure_topics)")
    return counts[topic]
