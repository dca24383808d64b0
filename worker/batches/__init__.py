"""worker.batches.record: batches: the record, the lines' format, the store, the schedules."""

__all__ = [
    "format",
    "record",
    "schedules",
    "store",
]
