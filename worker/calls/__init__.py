"""worker.calls: a job's calls: the job functions, the chain, the gateway client, errors, policy, the cache."""

__all__ = [
    "cache",
    "call",
    "client",
    "egress",
    "errors",
    "gemini",
    "headers",
    "jobs",
    "pinned",
    "policy",
    "routing",
]
