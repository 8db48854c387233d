"""Writing join state into a Faust table's store from a batch (outside any Faust event)."""
from __future__ import annotations


def store_writer(store):
    """``write(partition, key, value_or_None)`` into a Faust store outside an event.

    Faust's own ``store[key] = value`` takes the partition from the current event,
    which a batch does not have. The memory store is a plain mapping plus a
    key -> partition index that its ``on_recovery_completed`` uses to drop the keys of
    partitions this worker lost in a rebalance; the index is kept here too, or keys
    written by the worker itself would outlive the loss of their partition. The
    RocksDB store keeps one database per partition.
    """
    db_for_partition = getattr(store, "_db_for_partition", None)
    if db_for_partition is None:
        data = getattr(store, "data", store)
        key_partition = getattr(store, "_key_partition", None)

        def write(partition: int, key: str, value) -> None:
            if value is None:
                data.pop(key, None)
                if key_partition is not None:
                    key_partition.pop(key, None)
            else:
                data[key] = value
                if key_partition is not None:
                    key_partition[key] = partition
        return write

    def write_rocksdb(partition: int, key: str, value) -> None:
        db = db_for_partition(partition)
        raw_key = store._encode_key(key)
        if value is None:
            db.delete(raw_key)
        else:
            db.put(raw_key, store._encode_value(value))
    return write_rocksdb
