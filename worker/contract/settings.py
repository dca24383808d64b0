"""Settings from the environment (and an optional `.env`), the one place they are read.

The longest module of the tree (issue 19 asks for ~600 lines at most, and why where one is
longer): it is one class, as arq's settings are, a field and its description a setting, with the
checks that tie fields together. Their value types live in setting_types; splitting the class
itself would give the fleet's configuration two homes.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from ..calls import egress
from .models import ModelName
from .routes import Route, RouteName
from .setting_types import (
    AISA_MODELS,
    MODEL_CONTEXT,
    BudgetConfig,
    ConfigError,
    ModelLimit,
    NonNegativeUSD,
    Price,
    RateLimit,
    SourceLimit,
    SourceName,
    SourceQuota,
    SourceWeight,
    Token,
    TokenGrant,
    Tokens,
    base_url_problem,
)

# the settings model, reading it, and its value types (worker.contract.setting_types), named here too
__all__ = [
    "AISA_MODELS",
    "MODEL_CONTEXT",
    "SECRET_SETTINGS",
    "BudgetConfig",
    "ConfigError",
    "ModelLimit",
    "NonNegativeUSD",
    "Price",
    "RateLimit",
    "Settings",
    "SourceLimit",
    "SourceName",
    "SourceQuota",
    "SourceWeight",
    "Token",
    "TokenGrant",
    "Tokens",
    "exit_on_config_error",
    "load_settings",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    aisa_api_key: SecretStr | None = Field(
        None, description="the gateway key, required by workers; never logged, stored or exported"
    )
    aisa_base_url: str = Field("https://api.aisa.one/v1", description="any OpenAI-compatible base URL")
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description=(
            "also `rediss://:password@host:6380/0` (TLS; `?ssl_ca_certs=/ca.pem`) and "
            "`redis+sentinel://host1:26379,host2:26379/mymaster/0` (Sentinel; see Past one machine)"
        ),
    )
    queue_name: str = Field("llm-router:queue", description="arq queue (a sorted set)")

    worker_concurrency: int = Field(50, ge=1, description="jobs one worker process runs at once")
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="how long results stay in Redis (7 days)")
    poll_delay_s: float = Field(
        0.05,
        gt=0,
        description="how often a worker polls the queue while it has no free slot (or cannot take what is due)",
    )
    # an idle worker blocks on the wake-up (worker.process.wake): this poll only covers a lost wake-up
    idle_poll_s: float = Field(
        1.0, gt=0, le=60, description="the longest an idle worker waits for a wake-up before it polls the queue anyway"
    )
    job_timeout_s: float = Field(
        600, gt=0, description="longest a job may run; then it fails with `timeout` (and is dead-lettered)"
    )
    request_timeout_s: float = Field(
        120, gt=0, description="upstream read timeout (idle time between bytes; streams stay open while tokens flow)"
    )
    connect_timeout_s: float = Field(10, gt=0, description="upstream connect timeout")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest image a producer accepts")
    # ---- bounds on a job (worker.contract.bounds): checked by producers, and by workers for records others wrote
    max_job_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="largest job record, its inline images left out (they have `MAX_IMAGE_BYTES`)",
    )
    max_output_tokens: int = Field(
        100_000, ge=1, description="largest `max_tokens` (or `max_completion_tokens`) a job may ask for"
    )
    # (at most 128: a job record is JSON written by orjson, whose limit is 254 levels in all)
    max_json_depth: int = Field(
        64,
        ge=4,
        le=128,
        description=(
            "deepest nesting of arrays and objects in one field of a job (`tools`' schemas, a message's extra "
            "keys...); at most 128 (a record's JSON stops at 254 levels)"
        ),
    )
    max_tools: int = Field(
        128,
        ge=1,
        description=(
            "`tools` (and `functions`) one job may declare: past it, the job is refused (422) naming the "
            "field and the setting"
        ),
    )
    max_stop: int = Field(
        16,
        ge=1,
        description=(
            "`stop` sequences one job may give: past it, the job is refused (422) naming the field and the setting"
        ),
    )
    max_messages: int = Field(
        10000,
        ge=1,
        description="`messages` one job may hold: past it, the job is refused (422) naming the field and the setting",
    )
    max_content_parts: int = Field(
        256,
        ge=1,
        description=(
            "content parts one message may hold: past it, the job is refused (422) naming the field and the setting"
        ),
    )
    # MODEL_CONTEXT='{"my-model": 32768}': context windows (tokens); max_tokens and
    # max_completion_tokens must fit the model's.
    model_context: dict[ModelName, Tokens] = Field(
        dict(MODEL_CONTEXT), description='JSON `{"model": tokens}`: `max_tokens` must fit the model\'s window'
    )

    # Priced locally only when the gateway does not send usage.cost (e.g. a plain
    # OpenAI-compatible server). JSON in the environment: {"gpt-4.1": {"input": 0.01, "output": 0.03}}
    prices: dict[ModelName, Price] = Field(
        {},
        description=(
            'JSON `{"model": {"input": usd_per_1k, "output": usd_per_1k}}`, used only when the gateway sends '
            "no `usage.cost`, and as budgets' worst-case price (see Budgets)"
        ),
    )

    # ---- resilience (worker.calls.policy, worker.limits.limiter) ----
    # FALLBACKS='{"gpt-4.1": ["claude-3-sonnet", "gemini-2.0-flash"]}': a model's own chain;
    # DEFAULT_FALLBACKS='["gemini-2.0-flash"]': tried after any model without one.
    fallbacks: dict[ModelName, list[ModelName]] = Field(
        {}, description='JSON `{"gpt-4.1": ["claude-3-sonnet", "gemini-2.0-flash"]}`: a model\'s own fallback chain'
    )
    default_fallbacks: list[ModelName] = Field([], description="JSON list tried after any model without its own chain")
    # CONTEXT_FALLBACKS='{"gpt-4.1": "gemini-1.5-pro"}': where a context-length error goes.
    context_fallbacks: dict[ModelName, ModelName] = Field(
        {}, description='JSON `{"gpt-4.1": "gemini-1.5-pro"}`: where a context-length error goes'
    )
    attempts_per_model: int = Field(
        3, ge=1, description="calls to one model (retries of 429/5xx/timeouts) before the next"
    )
    backoff_base_s: float = Field(
        1.0, gt=0, description="first retry delay: from it, doubling, ±25 % jitter (AIsa's advice)"
    )
    backoff_cap_s: float = Field(30.0, gt=0, description="longest retry delay (AIsa's advice: 30 s)")
    max_wait_s: float = Field(
        30.0,
        ge=0,
        description="longest a job waits in place for a rate-limited model; longer: next model, or back to the queue",
    )
    max_job_runs: int = Field(
        20,
        ge=1,
        description="runs of one job (re-queues on long waits or a paused queue, restarts) before it is dead-lettered",
    )
    # RATE_LIMITS='{"gpt-4.1": {"rpm": 600, "tpm": 600000}}'; GLOBAL_RATE_LIMIT='{"rpm": 3000}'.
    rate_limits: dict[ModelName, ModelLimit] = Field(
        {}, description='JSON `{"gpt-4.1": {"rpm": 600, "tpm": 600000}}`, shared by every worker through Redis'
    )
    global_rate_limit: RateLimit = Field(
        RateLimit(), description='JSON `{"rpm": 3000, "tpm": 3000000}` over all models'
    )
    rate_limit_headroom: float = Field(
        0.02, ge=0, lt=1, description="run this fraction under each limit, so network jitter never trips the gateway's"
    )
    rate_limit_window_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description=(
            "the gateway's rate-limit window in seconds, when known (e.g. 60 for a sliding minute): the limits "
            "are then run `RATE_LIMIT_JITTER_MS` under per window instead of `RATE_LIMIT_HEADROOM` under "
            "(0.998 of each limit at 60 s rather than 0.98)"
        ),
    )
    rate_limit_jitter_ms: float = Field(
        100,
        ge=0,
        le=60_000,
        description=(
            "with `RATE_LIMIT_WINDOW_S`: the most a request may reach the gateway later than its slot "
            "(event-loop lag plus network jitter); one window's requests are spread over the window plus this"
        ),
    )
    circuit_failures: int = Field(
        5,
        ge=1,
        description=(
            "failures (5xx, timeout, connection, malformed) within `CIRCUIT_WINDOW_S` that open a model's "
            "circuit, for all workers"
        ),
    )
    circuit_window_s: float = Field(30, gt=0, description="the window `CIRCUIT_FAILURES` are counted in")
    circuit_open_s: float = Field(
        30, gt=0, description="how long an open circuit skips its model (then one call probes it)"
    )
    probe_interval_s: float = Field(10, gt=0, description="how often a paused queue (401/402) probes the gateway")
    lease_s: float = Field(15, gt=0, description="heartbeat lease: a killed worker's job runs again within this")
    bulk_horizon_s: float = Field(
        0.5,
        gt=0,
        description=(
            "a bulk job (batch line) books a rate-limit slot only this close to now, so interactive jobs go first"
        ),
    )
    # ---- the response cache (worker.calls.cache) and routes (worker.contract.routes)
    cache_mode: Literal["off", "deterministic", "all"] = Field(
        "deterministic",
        description=(
            "which calls the response cache answers: `deterministic` (temperature 0, and jobs with `cache: "
            "true`), `all` (every call a job does not opt out of), `off` (none, whatever a job asks); see "
            "Response cache"
        ),
    )
    cache_ttl_s: int = Field(24 * 3600, ge=1, description="how long a cached answer is kept (1 day)")
    cache_across_sources: bool = Field(
        False,
        description=(
            "`true`: one response cache for every source; by default each source (a job's `source`, an "
            "ingress token's) has its own, so no source is answered from, or learns of, another's requests; "
            "see Response cache"
        ),
    )
    # ROUTES='{"cheap": {"models": ["gemini-2.0-flash", "gpt-4.1"], "order": "cost"}}': named routes
    # a job uses as its model (`route:cheap`), added to the built-in ones (or replacing one by name)
    routes: dict[RouteName, Route] = Field(
        {},
        description=(
            'JSON `{"cheap": {"models": ["gemini-2.0-flash", "gpt-4.1"], "order": "cost"}}`: named routes a '
            "job uses as its model (`route:cheap`), added to the built-in ones (see Routes)"
        ),
    )
    # ---- bounded storage (worker.outputs.dlq, worker.process.quarantine)
    dlq_max: int = Field(
        10_000,
        ge=1,
        description="dead letters kept; the oldest are dropped first (`llm_router_dead_letters_dropped_total`)",
    )
    dlq_ttl_s: int = Field(30 * 24 * 3600, ge=60, description="how long a dead letter is kept (30 days)")
    dlq_max_payload_bytes: int = Field(
        64 * 1024,
        ge=256,
        description=(
            "a larger payload is kept truncated in its dead letter (`truncated_from` says its size; it cannot "
            "be replayed)"
        ),
    )
    quarantine_max: int = Field(
        1000, ge=1, description="queue entries with no usable id kept for the operator (`llm-router quarantine list`)"
    )
    shutdown_grace_s: float = Field(
        30, ge=0, description="SIGTERM: time in-flight jobs get to finish before they go back to the queue"
    )
    # ---- batches (worker.batches.record, producers.batches): at least OpenAI's limits
    batch_max_lines: int = Field(50_000, ge=1, description="requests in one batch file (OpenAI's limit)")
    batch_max_bytes: int = Field(
        200 * 1024 * 1024, ge=1, description="size of one batch file (200 MiB, OpenAI's limit)"
    )
    batch_max_line_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="one line of a batch file (a job of `MAX_JOB_BYTES` and a base64 image of `MAX_IMAGE_BYTES` fit)",
    )
    batch_ttl_s: int = Field(
        30 * 24 * 3600,
        ge=60,
        description=(
            "a batch's record and its line results are kept this long after its completion window ends (30 days)"
        ),
    )
    batch_max_window_s: float = Field(
        7 * 24 * 3600,
        gt=0,
        le=366 * 24 * 3600,
        description=(
            "longest completion window of a batch (7 days; OpenAI's is 24 h; at most 366 days): a longer one "
            "is refused before anything is written (`invalid_completion_window`), a schedule's at start-up"
        ),
    )
    # ---- schedules (worker.batches.schedules): bulk batches on a cron schedule, fired by the workers
    schedules_file: str | None = Field(
        None,
        description="a TOML file of schedules: bulk batches on a cron schedule, fired by the workers (see Schedules)",
    )
    schedule_grace_s: float = Field(
        3600,
        ge=0,
        description="a schedule's tick missed while no worker ran is still run, once, up to this long after its time",
    )

    # ---- budgets (worker.limits.budgets): reserved before a call, settled to its cost after
    # BUDGETS='{"daily_usd": 50, "sources": {"billing": 10}, "models": {"gpt-4.1": 20}}'
    budgets: BudgetConfig = Field(
        BudgetConfig(),
        description=(
            'JSON `{"daily_usd": 50, "sources": {"billing": 10}, "models": {"gpt-4.1": 20}}`: daily USD '
            "budgets over every call, per `source`, per model (see Budgets); a bad value refuses the start, "
            "naming it"
        ),
    )
    budget_tz: str = Field("UTC", description="the time zone (IANA) whose days the daily budgets count")
    budget_default_max_tokens: int = Field(
        4096,
        ge=1,
        description=(
            "the completion cap of a job without `max_tokens` when a budget applies (less when the model's "
            "context window has less room after the prompt): reserved for (times `n`) and sent with the call, "
            "so the gateway holds it to it (see Budgets)"
        ),
    )
    # a model not in PRICES and not yet learned from the gateway's bills is priced at this (or its
    # family's published price, if higher): Claude 3 Opus's output price, the dearest of the skill's
    # models and of the simulator's catalogue
    budget_unknown_price: Price = Field(
        Price(input=0.075, output=0.075),
        description=(
            "USD per 1K tokens a budget reserves for a model not in `PRICES` until a bill teaches its price "
            "(or its family's published price, if higher): Claude 3 Opus's output price, the dearest of the "
            "skill's models and the simulator's catalogue (see Budgets)"
        ),
    )

    # ---- fair share between sources (worker.limits.fair)
    # off by default: workers of an older version read no sub-queue (turn it on once all run this one)
    fair_share: bool = Field(
        False,
        description=(
            "`true`: each source's jobs wait in a sub-queue of their own and workers take from them by weight "
            "(see Fair share); `false`: one queue, first come first served. Turn it on (producers, ingress and "
            "workers alike) once every worker runs a version that has it: an older worker reads no sub-queue"
        ),
    )
    source_weights: dict[SourceName, SourceWeight] = Field(
        {},
        description=(
            'JSON `{"billing": 3, "search": 1}`: a source\'s share of the workers when several wait (default 1, '
            "at most 1000; jobs without a source are the source `default`); a bad value refuses the start, "
            "naming it"
        ),
    )
    source_limits: dict[SourceName, SourceQuota] = Field(
        {},
        description=(
            'JSON `{"search": {"rpm": 600, "tpm": 200000, "concurrency": 100}}`: a source\'s quota, shared by '
            "every worker like `RATE_LIMITS` (see Fair share); a bad value or unknown key refuses the start, "
            "naming it"
        ),
    )
    fair_share_slot_waiters: int = Field(
        2,
        ge=1,
        le=1000,
        description=(
            "under fair share, jobs one worker lets wait in a model's slot line for a rate-limit slot; another job "
            "that would wait gives its worker slot back and waits its turn in its source's sub-queue, unless its "
            "turn in the line is next (see Fair share)"
        ),
    )
    fair_share_max_sources: int = Field(
        100,
        ge=1,
        le=10_000,
        description=(
            "sources the settings do not name that get a sub-queue of their own (the first seen, fleet-wide); "
            "past it they share the sub-queue `other`"
        ),
    )

    # ---- the HTTP ingress (`llm-router api`, producers/http/app.py)
    # INGRESS_TOKENS='{"<token>": "billing"}': bearer tokens and the source name each one stamps on its
    # jobs; or '{"<token>": {"source": "ops", "role": "operator"}}' (TokenGrant: the console's roles)
    ingress_tokens: dict[Token, SourceName | TokenGrant] = Field(
        {},
        description=(
            'JSON `{"<token>": "billing"}`: the HTTP ingress\'s bearer tokens and the source name each stamps '
            "on its jobs (`llm-router api` refuses to start without one); or a token's grant "
            '`{"<token>": {"source": "ops", "role": "operator"}}` (roles `source`, `operator`: see Roles)'
        ),
    )
    ingress_max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description=(
            "largest request body the ingress reads (413 past it, refused as it streams in); a file upload "
            "has `BATCH_MAX_BYTES`"
        ),
    )
    ingress_max_queue_depth: int = Field(
        100_000,
        ge=0,
        description=(
            "jobs waiting (queue and bulk lane) over which the ingress answers 429 to an enqueue (each "
            "process reads the depth once a second, or sooner when the jobs it admitted since could reach the "
            "limit); `0`: no limit"
        ),
    )
    ingress_wait_s: float = Field(
        60,
        gt=0,
        description=(
            "longest `POST /v1/chat/completions` waits for its answer (then 202 with the job id), and the "
            "largest `?wait=`"
        ),
    )
    file_ttl_s: int = Field(
        30 * 24 * 3600, ge=60, description="how long a file uploaded to the ingress is kept (30 days)"
    )
    # ---- the ingress under hostile clients (producers/http/conns.py, producers/http/app.py)
    ingress_max_connections: int = Field(
        1000,
        ge=1,
        description=(
            "connections one ingress holds; past it the oldest one with no request in flight is closed to "
            "make room, and when every one is busy the next are answered 503 with `Retry-After` (probes "
            "answered); `llm-router api` raises its open-file limit to fit (see Hostile clients)"
        ),
    )
    ingress_header_timeout_s: float = Field(
        10,
        gt=0,
        description=(
            "a request's line and headers must be complete this long after the connection was accepted (a "
            "next request on a kept-alive connection: after its first byte; uvicorn closes one idle for 5 s): "
            "a total, bytes trickling in do not extend it; else the connection is closed"
        ),
    )
    ingress_body_timeout_s: float = Field(
        300, gt=0, description="a request's body must be complete this long after its headers (else 408 and closed)"
    )
    ingress_max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="a request's line and headers (else 431 and closed)"
    )
    ingress_max_bodies_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024,
        description=(
            "request bodies one ingress holds in memory at once (128 MiB; an upload counts 2 MiB, the rest of "
            "it is spooled to disk); a body that would take it past answers 503 with `Retry-After`; at least "
            "`INGRESS_MAX_BODY_BYTES` (else the api refuses to start)"
        ),
    )
    ingress_send_timeout_s: float = Field(
        60,
        gt=0,
        description=(
            "a client that reads none of its answer for this long (the ingress's buffers full) is cut: its "
            "connection closed, its request ended (`send_timeout`)"
        ),
    )
    files_max_per_source: int = Field(
        100,
        ge=1,
        description=(
            "uploaded files a source (the tokens naming it) keeps at once, its uploads in progress included; "
            "an upload past it is refused (403 `file_quota_exceeded`) and nothing of it kept"
        ),
    )
    files_max_bytes_per_source: int = Field(
        1024 * 1024 * 1024,
        ge=1024,
        description=(
            "bytes of uploaded files a source keeps at once (1 GiB), its uploads in progress included (each "
            "reserves its room chunk by chunk, so concurrent uploads cannot pass it together); an upload past "
            "it is refused (403 `file_quota_exceeded`) and nothing of it kept"
        ),
    )
    # ---- the operator console (`/console/` of `llm-router api`, producers/console/pages.py)
    console_enabled: bool = Field(
        True,
        description="serve the operator console under `/console/` of `llm-router api` (see Operator console); "
        "`false`: not served",
    )
    console_secret: SecretStr | None = Field(
        None,
        description=(
            "the key that signs console sessions, the same on every ingress process (at least 16 characters; "
            "never stored); `llm-router api` refuses to start without it while the console is on, unless it "
            "listens on loopback only (then a key of its own, for one process)"
        ),
    )
    console_insecure_http: bool = Field(
        False,
        description="session cookies without `Secure`: the console served over plain HTTP (the demo on loopback)",
    )
    console_session_s: int = Field(
        12 * 3600, ge=60, le=30 * 24 * 3600, description="how long a console sign-in lasts (12 h; 60 s to 30 days)"
    )
    upload_lease_s: float = Field(
        300,
        gt=0,
        description=(
            "an upload reserves its source's file quota chunk by chunk; a reservation not renewed for this "
            "long lapses (the upload is answered 503 with `Retry-After`, its room returned)"
        ),
    )
    # ---- live streams of streaming jobs (worker.outputs.events; GET /v1/jobs/{id}/events)
    stream_events_ttl_s: int = Field(
        3600,
        ge=0,
        description=(
            "how long a streaming job's live events stay in Redis (its stream, see Live streams); `0`: "
            "workers publish none (readers get the result only)"
        ),
    )
    stream_events_maxlen: int = Field(
        20_000,
        ge=100,
        description=(
            "entries one job's event stream keeps at most (approximate trim, oldest first): at the default "
            "flush a run cannot reach it (`JOB_TIMEOUT_S` / 50 ms = 12,000)"
        ),
    )
    stream_events_flush_ms: float = Field(
        50,
        ge=0,
        description=(
            "a streaming job's deltas are merged and published at most this often (the first at once, 1,024 "
            "buffered characters at once); `0`: every chunk"
        ),
    )

    # ---- webhooks (worker.outputs.webhooks): a job's or batch's callback_url, POSTed signed when it ends
    webhook_secret: SecretStr | None = Field(
        None,
        description=(
            "the HMAC-SHA256 key of webhook signatures (see Webhooks); never logged, stored or exported; a "
            "worker with `WEBHOOK_ALLOWED_HOSTS` refuses to start without it"
        ),
    )
    # WEBHOOK_ALLOWED_HOSTS='["hooks.example.com", "*.example.org", "10.0.0.7:8443"]': the only hosts called
    webhook_allowed_hosts: list[str] = Field(
        [],
        description=(
            "JSON list: the only hosts a `callback_url` may name (`hooks.example.com` any port, "
            "`hooks.example.com:8443`, `*.example.com` its subdomains); empty: webhooks are off (a "
            "`callback_url` is refused)"
        ),
    )
    webhook_max_tries: int = Field(
        10, ge=1, description="tries of one delivery before it is recorded `failed` (the result stays as it is)"
    )
    webhook_timeout_s: float = Field(10, gt=0, description="one try, connect to answer; past it the try failed")
    webhook_backoff_base_s: float = Field(
        2, gt=0, description="wait before a delivery's second try, doubling after (±25 % jitter)"
    )
    webhook_backoff_cap_s: float = Field(3600, gt=0, description="longest wait between two tries of a delivery")
    # ---- outbound requests a client aims (worker.calls.egress): a callback_url, an image URL
    # WEBHOOK_ALLOWED_NETWORKS='["10.96.0.0/12", "fd00::/8"]': networks that are not public (private,
    # loopback, link-local...) a callback_url's host may resolve into all the same, e.g. a cluster's
    # service network; any other such address is refused
    webhook_allowed_networks: list[str] = Field(
        [],
        description=(
            'JSON list of networks (`["10.96.0.0/12", "fd00::/8"]`, a bare address is a /32 or /128) a '
            "`callback_url`'s host may resolve into although they are not public; any other loopback, "
            "private, link-local, multicast or otherwise non-public address is refused (see Webhooks)"
        ),
    )
    image_urls_allow_private: bool = Field(
        False,
        description=(
            "accept image URLs whose host is a name of the local network (`localhost`, `*.internal`, a single "
            "label...) or a non-public IP address (an upstream on your own network fetches them); refused by "
            "default (see Limits)"
        ),
    )

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        for entry in v:
            egress.host_entry(entry)
        return v

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=True)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not a network ({exc}): use e.g. 10.96.0.0/12 or fd00::/8") from None
        return v

    # ---- logs (worker.process.logs) ----
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description=(
            "`DEBUG`, `INFO`, `WARNING`, `ERROR`; a worker is quiet at `INFO` (start-up, failures, dead "
            "letters, paused queues, opened circuits): its per-job lines are at `DEBUG`"
        ),
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="`json`: one JSON object a line (`ts`, `level`, `logger`, `message`, `exc`), for a log pipeline",
    )

    # ---- metrics (worker.observe.metrics, worker.observe.exporter) ----
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description=(
            "a worker's `/metrics` (and its probes `/healthz`, `/readyz`); `0` turns it off; one port per "
            "process on a host (a busy port stops the worker's start, exit 2); `worker --port` overrides it, "
            "and a `worker --burst` serves none unless it is set"
        ),
    )
    exporter_port: int = Field(9465, ge=1, le=65535, description="`llm-router exporter`'s `/metrics`")
    # Label values are bounded: a model outside this list (and the models the settings
    # above name) is reported as "other".
    metric_models: list[ModelName] = Field(
        list(AISA_MODELS),
        description=(
            "model label values, with every model the settings above name; any other model is reported as `other`"
        ),
    )
    # Producers' `source` labels; empty: the first 20 a worker sees, then "other".
    metric_sources: list[SourceName] = Field(
        [], description="allowed `source` label values; empty: the first 20 a worker sees, then `other`"
    )
    # ---- the spend ledger (worker.contract.store, worker.observe.spend): per-day spend by model, source, batch, route
    spend_retention_days: int = Field(
        400,
        ge=1,
        le=3660,
        description=(
            "days the per-day spend records (by model, source, batch, route, and the cache's savings: "
            "`llm-router spend`) are kept"
        ),
    )

    @field_validator("aisa_base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        if why := base_url_problem(v):  # as the client reads it: one it cannot call fails every job, not the start
            raise ValueError(why)
        return v

    @field_validator("budget_tz")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone: use an IANA name, e.g. UTC or Europe/Paris") from None
        return v

    @property
    def spacing_ms(self) -> float:
        """Milliseconds a limit of one per minute spaces its requests (a limit of N: this / N).

        A sliding window of W seconds counts a request until W after it arrived, so requests a
        window's limit apart must arrive more than W apart; booked evenly that far apart, a request
        sent late by up to the jitter still leaves the window in time. With the window unknown, a
        fraction of headroom stands in for it (at 60 s, 2 % is 1.2 s of jitter)."""
        if self.rate_limit_window_s is None:
            return 60_000 / (1 - self.rate_limit_headroom)
        window_ms = self.rate_limit_window_s * 1000
        return 60_000 * (window_ms + self.rate_limit_jitter_ms) / window_ms

    def grants(self) -> dict[str, TokenGrant]:
        """INGRESS_TOKENS with the plain `"<token>": "<source>"` form as a source token's grant."""
        return {t: g if isinstance(g, TokenGrant) else TokenGrant(source=g) for t, g in self.ingress_tokens.items()}

    def api_key(self) -> str:
        """The key, or a ConfigError telling the user how to set it."""
        if self.aisa_api_key is None or not self.aisa_api_key.get_secret_value():
            raise ConfigError(
                "AISA_API_KEY is not set: export AISA_API_KEY=<your key> (or put it in .env); "
                "for the local simulator any non-empty key works, e.g. AISA_API_KEY=sim-key"
            )
        return self.aisa_api_key.get_secret_value()


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with invalid values reported as a ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from None
    except SettingsError as exc:  # a JSON setting that is not JSON
        match = re.search(r'field "([a-z_]+)"', str(exc))
        name = match[1].upper() if match else "a JSON setting"
        raise ConfigError(f"invalid settings: {name}: not valid JSON ({exc.__cause__ or exc})") from None


# Settings whose values (and keys: INGRESS_TOKENS maps tokens to sources) are secrets.
SECRET_SETTINGS = frozenset({"aisa_api_key", "ingress_tokens", "webhook_secret", "console_secret"})


def _problem(loc: tuple[int | str, ...], msg: str) -> str:
    """`RATE_LIMITS, in ["gpt-4.1"]: unknown key "rpn": did you mean "rpm"? ...`: the variable a
    person sets, then where in its JSON value (never inside a secret one: the path would show a
    token), then what is wrong."""
    name = str(loc[0]).upper() if loc else "settings"
    # (json.dumps: a key with a control character in it is shown escaped)
    path = "".join(f"[{json.dumps(p, ensure_ascii=False)}]" for p in loc[1:] if p != "[key]")
    where = f", in {path}" if path and loc[0] not in SECRET_SETTINGS else ""
    return f"{name}{where}: {msg.removeprefix('Value error, ')}"


def exit_on_config_error(exc: ConfigError) -> None:
    print(f"llm-router: {exc}", file=sys.stderr)
    raise SystemExit(2)
