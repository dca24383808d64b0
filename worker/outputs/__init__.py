"""worker.outputs: what a job sends on: dead letters, webhooks and their outbox, live events."""

__all__ = [
    "callbacks",
    "dlq",
    "events",
    "outbox",
    "webhooks",
]
