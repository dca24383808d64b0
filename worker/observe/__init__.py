"""worker.observe: what is measured: metrics, the queue exporter, spend."""

__all__ = [
    "exporter",
    "metrics",
    "spend",
]
