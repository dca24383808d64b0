"""The value types of the settings (worker.contract.settings): prices, rate limits, budgets, source
quotas, token grants, the models' defaults, the check of AISA_BASE_URL, and ConfigError. Apart from
the settings model, so what only needs a type (worker.contract.pricing, worker.contract.routes) does
not import the settings."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from .models import SOURCE_NAME, ModelName
from .strict import StrictModel


class Price(StrictModel):
    """USD per 1,000 tokens, used only when the gateway's reply has no `usage.cost`."""

    input: float = Field(ge=0, allow_inf_nan=False)
    output: float = Field(ge=0, allow_inf_nan=False)


# The AIsa models the skill documentation names: the default set of model label values.
AISA_MODELS = (
    "gpt-4.1",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-3.5-turbo",
    "o1",
    "o1-mini",
    "o3-mini",
    "claude-3-5-sonnet",
    "claude-3-opus",
    "claude-3-sonnet",
    "gemini-2.0-flash",
    "gemini-1.5-pro",
    "gemini-1.5-flash",
    "qwen-max",
    "qwen-plus",
    "qwen2.5-72b-instruct",
    "deepseek-chat",
    "deepseek-coder",
    "deepseek-v3",
    "deepseek-r1",
    "grok-2",
    "grok-beta",
)


# Context windows (tokens) of the skill's models, as their vendors publish them.
MODEL_CONTEXT = {
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o3-mini": 200_000,
    "claude-3-5-sonnet": 200_000,
    "claude-3-opus": 200_000,
    "claude-3-sonnet": 200_000,
    "gemini-2.0-flash": 1_048_576,
    "gemini-1.5-pro": 2_097_152,
    "gemini-1.5-flash": 1_048_576,
    "qwen-max": 32_768,
    "qwen-plus": 131_072,
    "qwen2.5-72b-instruct": 131_072,
    "deepseek-chat": 64_000,
    "deepseek-coder": 64_000,
    "deepseek-v3": 64_000,
    "deepseek-r1": 64_000,
    "grok-2": 131_072,
    "grok-beta": 131_072,
}


NonNegativeUSD = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class RateLimit(StrictModel):
    """A shared limit: requests and/or tokens (prompt + max output) per minute."""

    rpm: float | None = Field(None, gt=0, allow_inf_nan=False)
    tpm: float | None = Field(None, gt=0, allow_inf_nan=False)


def _limits_something(limit: RateLimit) -> RateLimit:
    if limit.rpm is None and limit.tpm is None:
        raise ValueError('limits nothing: give "rpm" and/or "tpm", e.g. {"rpm": 600}, or leave the model out')
    return limit


# a model's entry in RATE_LIMITS ({} there was a model with no limit; GLOBAL_RATE_LIMIT={} is "none")
ModelLimit = Annotated[RateLimit, AfterValidator(_limits_something)]
# a context window in tokens (MODEL_CONTEXT)
Tokens = Annotated[int, Field(gt=0, le=100_000_000)]


def _source_name(v: str) -> str:
    if not SOURCE_NAME.match(v):
        raise ValueError(f"source {v!r} must be 1-64 characters of letters, digits and _ . : -")
    return v


def _token(v: str) -> str:
    # (never shown: a token is a secret)
    if not v or any(c.isspace() or not c.isprintable() for c in v):
        raise ValueError("a token must be non-empty printable characters without spaces (a Bearer header carries it)")
    return v


SourceName = Annotated[str, AfterValidator(_source_name)]
Token = Annotated[str, AfterValidator(_token)]


class BudgetConfig(StrictModel):
    """BUDGETS: daily USD budgets (days in BUDGET_TZ) over all calls, per source, per model
    (worker.limits.budgets). A batch's own budget is set when it is submitted."""

    daily_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    sources: dict[SourceName, NonNegativeUSD] = {}
    models: dict[ModelName, NonNegativeUSD] = {}

    @property
    def configured(self) -> bool:
        return self.daily_usd is not None or bool(self.sources) or bool(self.models)


# a weight is a share, not a priority: 1,000 to 1 already starves nothing worth having
SourceWeight = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]


class SourceLimit(StrictModel):
    """SOURCE_LIMITS: one source's quota (worker.limits.fair), shared by every worker like the model limits."""

    rpm: float | None = Field(None, gt=0, allow_inf_nan=False)
    tpm: float | None = Field(None, gt=0, allow_inf_nan=False)
    concurrency: int | None = Field(None, ge=1)


def _quotas_something(limit: SourceLimit) -> SourceLimit:
    if limit.rpm is None and limit.tpm is None and limit.concurrency is None:
        raise ValueError(
            'limits nothing: give "rpm", "tpm" and/or "concurrency", e.g. {"rpm": 600}, or leave the source out'
        )
    return limit


SourceQuota = Annotated[SourceLimit, AfterValidator(_quotas_something)]


class TokenGrant(StrictModel):
    """INGRESS_TOKENS' object form: `{"source": "ops", "role": "operator"}`. A source token (the
    plain `"<token>": "billing"` form is one) reads and writes only its source's objects; an
    operator token sees every source's in the console and acts on dead letters, quarantine and
    schedules. An operator token with a `source` also works on `/v1` as that source; without one
    it is for the console only."""

    source: SourceName | None = None
    role: Literal["source", "operator"] = "source"

    @model_validator(mode="after")
    def _source_needed(self) -> TokenGrant:
        if self.role == "source" and self.source is None:
            raise ValueError('a token of role "source" needs a "source" (or give role "operator")')
        return self


def base_url_problem(url: str) -> str | None:
    """Why the client (httpx) cannot call AISA_BASE_URL, or None. httpx is imported only for a URL
    that is not plainly fine (`plain_http_url`): its import is ~40 ms (httpcore, and rich and click
    through httpx._main), the largest part of a producer's start-up, which has no other use for it."""
    if plain_http_url(url):
        return _port_problem(url, _PLAIN_URL.fullmatch(url)["port"])  # type: ignore[index]  # (plain: it matches)
    import httpx

    try:
        parsed = httpx.URL(url)
        scheme, host = parsed.scheme, parsed.host
    except (httpx.InvalidURL, UnicodeError) as exc:  # (UnicodeError: an A-label host that idna refuses)
        return f"{url!r} is not a URL ({exc}): use e.g. https://api.aisa.one/v1"
    if scheme not in ("http", "https") or not host:
        return f"{url!r} needs http:// or https:// and a host: use e.g. https://api.aisa.one/v1"
    return _port_problem(url, parsed.port)


def _port_problem(url: str, port: str | int | None) -> str | None:
    """A port no connection can use (httpx reads any number, and every call would then fail)."""
    if port is None or 0 < int(port) <= 65535:
        return None
    return f"{url!r} has port {int(port)}, outside 1-65535: use e.g. https://api.aisa.one/v1"


# A URL plainly one httpx calls: http(s)://, a host of ASCII letters, digits and hyphens in
# dot-separated labels, an optional port, a path of URL characters; no user, query or fragment.
# Any other (an IPv6 literal, IDNA, an upper-case scheme...) is left to httpx itself.
_PLAIN_URL = re.compile(
    r"https?://(?P<host>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::(?P<port>[0-9]{1,5}))?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
)
_DOTTED_QUAD = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+")  # httpx reads such a host as IPv4 only


def plain_http_url(url: str) -> bool:
    """Whether `url` is a plain http(s) URL with a host, which httpx takes as it is: a subset of
    what it takes (tests/unit/test_setting_types.py checks it against httpx.URL)."""
    match = _PLAIN_URL.fullmatch(url) if len(url) <= 2048 else None
    if match is None or "xn--" in match["host"].lower():  # (httpx decodes an A-label host: it may refuse it)
        return False
    if _DOTTED_QUAD.fullmatch(match["host"]):
        try:
            ipaddress.IPv4Address(match["host"])
        except ValueError:
            return False
    return True


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and how to fix it."""
