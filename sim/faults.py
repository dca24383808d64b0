"""Fault switches, per model, all off by default; set by flags at start-up or `POST /_sim/config`."""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(0, ge=0, description="fixed delay before the answer")
    latency_per_token_ms: float = Field(0, ge=0, description="extra delay per output token (paces stream chunks)")
    rpm: int | None = Field(None, ge=1, description="requests per window, enforced with 429 + Retry-After")
    tpm: int | None = Field(None, ge=1, description="tokens (prompt + completion) per window")
    rate_window_s: float = Field(60, gt=0, description="the RPM/TPM window; shorter windows make fast tests")
    error_rates: dict[int, float] = Field({}, description="status -> probability, e.g. {500: 0.1, 503: 0.05}")
    fail_next: list[int] = Field([], description="the next calls fail with these statuses, in order")
    retry_after_s: float = Field(1, ge=0, description="Retry-After sent with an injected 429")
    down: bool = Field(False, description="every call gets 503 upstream_unavailable")
    hang_s: float = Field(0, ge=0, description="sleep this long before answering (past the client timeout)")
    cut_stream_after: int | None = Field(None, ge=0, description="drop the connection after N stream chunks")
    stream_rate_limit_after: int | None = Field(
        None, ge=0, description="streams: after N chunks, an error event (rate_limit_error) instead of the rest"
    )
    malformed: bool = Field(False, description="answer 200 with a body that is not JSON")
    bill_then: Literal["drop", "hang"] | None = Field(
        None,
        description="bill the call (credits and the charged ledger count it), then drop the connection "
        "(a stream: after its first chunk) or hang until the client gives up: a call billed but never answered",
    )
    bill_at_bound: bool = Field(
        False,
        description="bill every call the most a budget's worst case allows: each byte of the request body a "
        "prompt token (an image the catalogue's most instead of its URL or data), each choice its "
        "max_tokens (none: the context window)",
    )


class FaultBook:
    """Default faults plus per-model overrides; `fail_next` is consumed as calls arrive."""

    def __init__(self, default: Faults | None = None, seed: int = 0) -> None:
        # the switches it was started with (CLI flags): what a reset goes back to
        self.initial = default or Faults()
        self.default = self.initial.model_copy(deep=True)
        self.per_model: dict[str, Faults] = {}
        self.rng = random.Random(seed)

    def for_model(self, model: str) -> Faults:
        return self.per_model.get(model, self.default)

    def update(self, model: str | None, changes: dict[str, Any]) -> Faults:
        """Merge `changes` into the faults of `model` (None or "*": the default for all)."""
        if model in (None, "*"):
            self.default = Faults.model_validate({**self.default.model_dump(), **changes})
            return self.default
        base = self.per_model.get(model, self.default).model_dump()
        self.per_model[model] = Faults.model_validate({**base, **changes})
        return self.per_model[model]

    def reset(self) -> None:
        """Forget the switches set at run time; those it was started with stay."""
        self.default = self.initial.model_copy(deep=True)
        self.per_model.clear()

    def injected_status(self, model: str) -> int | None:
        """The error status this call must get from fail_next / down / error_rates, if any."""
        faults = self.for_model(model)
        if faults.fail_next:
            return faults.fail_next.pop(0)
        if faults.down:
            return 503
        for status, rate in faults.error_rates.items():
            if self.rng.random() < rate:
                return int(status)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"default": self.default.model_dump(), "models": {m: f.model_dump() for m, f in self.per_model.items()}}
