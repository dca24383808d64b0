"""producers.http.app: the HTTP ingress (`llm-router api`): the app, its dependencies and errors, the routes."""

__all__ = [
    "app",
    "batches",
    "conns",
    "deps",
    "errors",
    "events",
    "fastpath",
    "jobs",
    "models",
]
