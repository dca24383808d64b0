"""worker.limits: shared limits: the rate limiter and circuit breaker, budgets, the gate, fair share, token bounds."""

__all__ = [
    "budgets",
    "fair",
    "gate",
    "limiter",
    "tokens",
]
