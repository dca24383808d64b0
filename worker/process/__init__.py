"""worker.process: a worker process: arq's wiring, the runner, leases, shared resources, health, the fleet."""

__all__ = [
    "fleet",
    "health",
    "held",
    "lease",
    "logs",
    "preflight",
    "quarantine",
    "resources",
    "runner",
    "scripts",
    "service",
    "wake",
]
