"""The simulator's RPM/TPM enforcement: a sliding-window log per model, like a strict gateway."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

# Sent when a model has no configured limit; then nothing is enforced, so the headers must
# not claim a budget that runs out (clients rightly hold a model whose remaining hits 0).
NOMINAL_RPM = 1_000_000
NOMINAL_TPM = 1_000_000_000


@dataclass
class Decision:
    allowed: bool
    headers: dict[str, str]
    retry_after: float = 0.0


@dataclass
class Window:
    log: deque[tuple[float, int]] = field(default_factory=deque)  # (arrival time, tokens)

    def check(self, now: float, tokens: int, rpm: int | None, tpm: int | None, window: float) -> Decision:
        while self.log and self.log[0][0] <= now - window:
            self.log.popleft()
        used_tokens = sum(t for _, t in self.log)
        wait = 0.0
        if rpm is not None and len(self.log) >= rpm:
            wait = self.log[len(self.log) - rpm][0] + window - now
        if tpm is not None and used_tokens + tokens > tpm:
            wait = max(wait, self._token_wait(now, tokens, tpm, window))
        allowed = wait <= 0
        if allowed:
            self.log.append((now, tokens))
            used_tokens += tokens
        # A UNIX timestamp, as AIsa sends it; `now` is monotonic.
        reset_in = (self.log[0][0] + window - now) if self.log else 0.0
        reset = math.ceil(time.time() + reset_in)
        limit_r, limit_t = rpm or NOMINAL_RPM, tpm or NOMINAL_TPM
        headers = {
            "x-ratelimit-limit-requests": str(limit_r),
            "x-ratelimit-remaining-requests": str(max(limit_r - len(self.log), 0)),
            "x-ratelimit-limit-tokens": str(limit_t),
            "x-ratelimit-remaining-tokens": str(max(limit_t - used_tokens, 0)),
            "x-ratelimit-reset-requests": str(reset),
            "x-ratelimit-reset-tokens": str(reset),
        }
        if not allowed:
            headers.update(
                {
                    "retry-after": str(max(1, math.ceil(wait))) if window >= 1 else f"{wait:.3f}",
                    "x-ratelimit-limit": str(limit_r),
                    "x-ratelimit-remaining": "0",
                    "x-ratelimit-reset": str(reset),
                }
            )
        return Decision(allowed, headers, max(wait, 0.0))

    def _token_wait(self, now: float, tokens: int, tpm: int, window: float) -> float:
        """Time until enough old entries leave the window for `tokens` more to fit."""
        excess = sum(t for _, t in self.log) + tokens - tpm
        for arrived, spent in self.log:
            excess -= spent
            if excess <= 0:
                return arrived + window - now
        return window  # larger than the whole budget: the client must shrink the request
