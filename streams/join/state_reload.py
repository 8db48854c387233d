"""The join state reloaded after a rebalance: which state moves, and from where.

After every assignment the worker builds a fresh in-memory join and loads into it the
state of the join tasks it now holds. The table's keys are a ``KIND_PREFIX`` and the
request id.

- With the memory store (``HeldTasks``) the worker reads the changelog itself, in bulk,
  and only for the tasks it gained: the state of a task it held in the last
  assignment, and in every assignment since, is moved over from the old join in
  memory (no Kafka read); a task missing from any assignment in between may have been
  worked on by another worker, so it is read again. The state of tasks it lost is
  dropped with the old join.
- With RocksDB, Faust's recovered table holds it all (``restore_from_table``).

``StateReload`` puts it together for the worker's loop. No Kafka here: the loop passes
in how to read the changelog.
"""
from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Iterable, Optional

import orjson

from streams.join.join_state import EARLY, REQUEST
from streams.join.hop_tasks import HopTasks
from streams.join.join_store import JoinStore

log = logging.getLogger("dlabel.worker")

#: Table key prefixes per kind of join state.
KIND_PREFIX = {REQUEST: "r:", EARLY: "e:"}

#: ``restore(kind, key, value)``: loads one entry into the new join
Restore = Callable[[str, str, object], None]
#: ``read(tasks)`` -> (latest ``{raw key: (partition, raw value)}``, records read per
#: changelog partition): the changelog partitions of ``tasks`` read to their end
ReadChangelog = Callable[[set], Awaitable[tuple[dict, dict]]]


def restore_from_table(items: Iterable[tuple[str, object]], restore: Restore) -> int:
    """RocksDB store: load every live entry of Faust's recovered table; the count."""
    kinds = {v: k for k, v in KIND_PREFIX.items()}
    n = 0
    for key, value in items:
        kind = kinds.get(key[:2])
        if kind is not None and value is not None:  # None: a deleted key
            restore(kind, key[2:], value)
            n += 1
    return n


def move_kept(old: JoinStore, restore: Restore, kept: set[int]) -> int:
    """Load the entries of the tasks ``kept`` from the old join's state ``old``; the count."""
    n = 0
    for key, p in old.pending.items():
        if p.partition in kept:
            restore(REQUEST, key, p.to_json())
            n += 1
    for key, m in old.done.items():
        if m.partition in kept:
            restore(REQUEST, key, m.to_json())
            n += 1
    for key, entries in old.early.items():
        if entries and entries[0].partition in kept:
            restore(EARLY, key, [e.to_json() for e in entries])
            n += 1
    return n


def restore_latest(latest: dict, restore: Restore) -> int:
    """Load the changelog's latest value per key (``{raw key: (partition, raw value)}``,
    emptied as it goes); the count."""
    kinds = {v.encode(): k for k, v in KIND_PREFIX.items()}
    loads = orjson.loads
    n = 0
    for raw_key in list(latest):
        _, value = latest.pop(raw_key)
        key = loads(raw_key)
        kind = kinds.get(key[:2].encode())
        if kind is not None:
            restore(kind, key[2:], loads(value))
            n += 1
    return n


class HeldTasks:
    """Memory store: the join tasks whose state the in-memory join holds and that every
    assignment since kept (see the module docstring)."""

    def __init__(self) -> None:
        self.tasks: set[int] = set()

    def on_assigned(self, tasks: Optional[set[int]]) -> None:
        """A new assignment with the join tasks ``tasks`` (None: not known, keep none)."""
        if tasks is None:
            self.tasks.clear()
        else:
            self.tasks &= tasks

    async def restore(self, old: JoinStore, restore: Restore, tasks: set[int],
                      read: ReadChangelog, current: Callable[[], bool]) -> int:
        """Load the state of ``tasks``: of those kept from ``old``, of the others from the
        changelog (``read``); the entries loaded. ``current()``: no rebalance since
        (else what was read may be stale by the next assignment: keep none)."""
        kept, gained = self.tasks & tasks, tasks - self.tasks
        n = 0
        t0 = time.perf_counter()
        if kept:
            n += move_kept(old, restore, kept)
        moved = n
        t1 = time.perf_counter()
        read_counts: dict = {}
        if gained:
            latest, read_counts = await read(gained)
            n += restore_latest(latest, restore)
        self.tasks = set(tasks) if current() else set()
        log.info("join state of tasks %s kept in memory (%d entries, %.3f s); tasks %s read "
                 "from the changelog (%d records, %d live keys, %.3f s)", sorted(kept), moved,
                 t1 - t0, sorted(gained), sum(read_counts.values()), n - moved,
                 time.perf_counter() - t1)
        return n


class StateReload:
    """Loads the join state of the current assignment into a new ``JoinProcessor``.

    ``group``: the worker's ``FaustGroup`` (its assignment, its table); ``join_roles``:
    topic -> role of the topics the join reads; ``reads_changelog``: the memory store
    (else RocksDB); ``read``: reads changelog partitions (``ReadChangelog``)."""

    def __init__(self, group, join_roles: dict, hop: HopTasks, reads_changelog: bool,
                 read: ReadChangelog) -> None:
        self.group, self.join_roles, self.hop = group, join_roles, hop
        self.reads_changelog, self.read = reads_changelog, read
        self.held = HeldTasks()

    def on_assigned(self, assigned: Optional[Iterable]) -> None:
        """A new assignment (``assigned``: all its partitions; None: not known)."""
        self.held.on_assigned(None if assigned is None else
                              {tp.partition for tp in assigned if tp.topic in self.join_roles})

    async def load(self, old, proc, current: Callable[[], bool]) -> tuple[int, set]:
        """Assign the watermark of ``proc`` its inputs, load its join state (from ``old``,
        the processor of the last assignment, and the changelog, or from the table);
        the entries loaded and the watermark's inputs. ``current()``: no rebalance
        since this began."""
        assigned = {(self.join_roles[tp.topic], tp.partition)
                    for tp in self.group.assigned(self.join_roles)}
        tasks = {task for _, task in assigned}
        assigned = self.hop.watermark_inputs(assigned)  # see repartition
        proc.watermark.assign(assigned)
        if self.reads_changelog:
            n = await self.held.restore(old.join, proc.join.restore, tasks, self.read, current)
        else:
            n = restore_from_table(self.group.table_items(), proc.join.restore)
        return n, assigned
