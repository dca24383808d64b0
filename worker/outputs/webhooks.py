"""Webhooks: when a job or batch with a `callback_url` ends, POST its record there, signed.

Deliveries wait in the outbox (worker.outputs.outbox), queued atomically with the record they report;
every worker runs a `Sender` task that claims the due ones and sends them, off the job slots.
A try is one POST of

    {"id": "<delivery>#<n>", "type": "job.succeeded", "created": <unix>, "data": {...}}

(`data`: the result record, or the batch's record; `type`: `job.<status>` or `batch.<status>`),
with the headers `LLM-Router-Signature: t=<unix>,v1=<hex HMAC-SHA256(WEBHOOK_SECRET, "<t>.<raw body>")>`,
`LLM-Router-Delivery` (the same on every try: receivers dedupe on it) and `LLM-Router-Event`.
A 2xx answer delivers it; anything else (another status, a timeout, a refused connection; a
redirect is not followed) is tried again after WEBHOOK_BACKOFF_BASE_S, doubling (jittered, at most
WEBHOOK_BACKOFF_CAP_S; longer if a 429 or 503 asks so with Retry-After, up to the cap), up to
WEBHOOK_MAX_TRIES tries, then recorded `failed`: the record it reports is left as it is. A try
that fails inside the worker counts as a try too, with its outcome. Only hosts of
WEBHOOK_ALLOWED_HOSTS are called: producers refuse another at enqueue, and the sender checks
again before every try, reading the URL as its HTTP client does (worker.outputs.callbacks). The
host's addresses are checked when it is called (worker.calls.pinned): one that is not public
(loopback, private, link-local...) and outside WEBHOOK_ALLOWED_NETWORKS fails the delivery, unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from typing import Any, NamedTuple

import httpx
import orjson
from redis.asyncio import Redis

from ..batches import record as batches
from ..calls import egress, pinned
from ..calls.headers import parse_wait
from ..calls.policy import backoff_delay
from ..contract.keys import result_key
from ..contract.settings import ConfigError, Settings
from ..observe import metrics as m
from .callbacks import NETWORKS_FIX, allowed, target
from .outbox import Outbox

log = logging.getLogger("llm_router.webhooks")

SIGNATURE_HEADER = "LLM-Router-Signature"
DELIVERY_HEADER = "LLM-Router-Delivery"
EVENT_HEADER = "LLM-Router-Event"
# Deliveries one worker sends at once, and how long past WEBHOOK_TIMEOUT_S a claimed one is held
# before another worker may try it (a try is cut at the timeout; the margin is for Redis).
CONCURRENCY = 16
LEASE_EXTRA_S = 5
IDLE_POLL_S = 0.5


# ---------------------------------------------------------------- settings (the allow-list: worker.outputs.callbacks)


def check_settings(settings: Settings) -> None:
    """A worker's start-up check: an allow-list needs WEBHOOK_SECRET (nothing is sent unsigned).
    (Each entry is checked when the settings load: worker.contract.settings.)"""
    if settings.webhook_allowed_hosts and not _secret(settings):
        raise ConfigError(
            "WEBHOOK_ALLOWED_HOSTS is set but WEBHOOK_SECRET is not: export WEBHOOK_SECRET=<a long random string> "
            "(receivers verify the signatures with it)"
        )


def _secret(settings: Settings) -> bytes:
    return settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else b""


# ---------------------------------------------------------------- signing


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The LLM-Router-Signature header's value for `body` sent at `timestamp` (UNIX s)."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# ---------------------------------------------------------------- sending


class Sent(NamedTuple):
    """What a try came to: no error (delivered), or an error, retried unless `final`."""

    error: str
    status: int | None = None
    asked: float | None = None  # a 429's or 503's Retry-After
    final: bool = False


def _describe(exc: Exception, prefix: str = "") -> str:
    return (prefix + (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__))[:300]


class Sender:
    """Claims due deliveries and sends them, CONCURRENCY at once: a worker's background task."""

    def __init__(self, redis: Redis, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.outbox = Outbox(redis)
        self.client = client or pinned.client(
            settings.webhook_timeout_s, egress.networks(settings.webhook_allowed_networks)
        )
        self.sending: set[asyncio.Task[None]] = set()
        self.wake = asyncio.Event()  # a try ended: its retry may be due before the next poll

    async def run(self) -> None:
        try:
            while True:
                try:
                    if len(self.sending) >= CONCURRENCY:  # every slot busy: wait for one
                        await asyncio.wait(set(self.sending), return_when=asyncio.FIRST_COMPLETED)
                        continue
                    more = await self.send_due()
                    wait = 0.0 if more else await self._idle()
                except Exception:
                    log.exception("webhooks: will retry")
                    wait = IDLE_POLL_S
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), max(wait, 0.01))
        finally:
            for task in self.sending:
                task.cancel()  # a try cut here is due again at once (`send`), for any worker
            await asyncio.gather(*self.sending, return_exceptions=True)
            await self.client.aclose()

    async def send_due(self) -> bool:
        """Claim what is due (as many as there are free slots) and start sending it; True if
        more may be due."""
        free = CONCURRENCY - len(self.sending)
        lease = self.settings.webhook_timeout_s + LEASE_EXTRA_S
        claimed = await self.outbox.claim(time.time(), lease, free)
        for delivery in claimed:
            task = asyncio.create_task(self.send(delivery), name=f"llm-router-webhook-{delivery}")
            self.sending.add(task)
            task.add_done_callback(self._sent)
        return len(claimed) == free

    def _sent(self, task: asyncio.Task[None]) -> None:
        self.sending.discard(task)
        self.wake.set()

    async def _idle(self) -> float:
        due = await self.outbox.next_due()
        return IDLE_POLL_S if due is None else min(IDLE_POLL_S, due - time.time())

    async def send(self, delivery: str) -> None:
        """One try of a claimed delivery, and its outcome."""
        try:
            record = await self.outbox.read(delivery)
            if record is None or record.get("status") != "pending":
                await self.outbox.drop(delivery)
                return
            await self._try(delivery, record)
        except asyncio.CancelledError:  # the worker is stopping: due again now, for the next one
            await self.outbox.release(delivery, time.time())
            raise
        except Exception:  # Redis, reading the delivery or writing the outcome: due again past its lease
            log.exception("webhook %s: could not read it or record its try; tried again later", delivery)

    async def _try(self, delivery: str, record: dict[str, str]) -> None:
        """One try and its outcome, whatever goes wrong in it: every try counts and is recorded."""
        n, tries = record.get("n", "1"), int(record.get("tries", 0)) + 1
        try:
            sent = await self._post(delivery, n, record)
        except Exception as exc:  # a record that cannot be read, a bug: still a try, retried
            log.exception("webhook %s: the try failed inside the worker", delivery)
            sent = Sent(_describe(exc, "the try failed inside the worker: "))
        if not sent.error:
            await self._end(delivery, n, "delivered", "", sent.status)
        elif sent.final:
            await self._end(delivery, n, "failed", sent.error, sent.status)
        elif tries >= self.settings.webhook_max_tries:
            await self._end(delivery, n, "failed", f"{sent.error} (try {tries} of WEBHOOK_MAX_TRIES)", sent.status)
        else:
            s = self.settings
            wait = backoff_delay(tries - 1, s.webhook_backoff_base_s, s.webhook_backoff_cap_s)
            due = time.time() + min(max(wait, sent.asked or 0.0), s.webhook_backoff_cap_s)
            if await self.outbox.outcome(delivery, n, "retry", time.time(), due, sent.error, sent.status):
                m.WEBHOOK_DELIVERIES.labels("retried").inc()
            log.info("webhook %s: try %d failed (%s); next in %.1fs", delivery, tries, sent.error, due - time.time())

    async def _post(self, delivery: str, n: str, record: dict[str, str]) -> Sent:
        url = record.get("url", "")
        problem = self._problem(url)
        body, event = (None, "") if problem else await self._body(delivery, n, record)
        if body is None:
            return Sent(problem or "the record it reports is gone (expired)", final=True)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "llm-router-webhooks",
            SIGNATURE_HEADER: sign(_secret(self.settings), body, timestamp),
            DELIVERY_HEADER: f"{delivery}#{n}",
            EVENT_HEADER: event,
        }
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_s):  # the whole try, not each read
                answer = await self.client.post(url, content=body, headers=headers)
        except TimeoutError:
            return Sent(f"no answer within WEBHOOK_TIMEOUT_S={self.settings.webhook_timeout_s:g}")
        except egress.Refused as exc:
            return Sent(f"{exc}: {NETWORKS_FIX}", final=True)
        except httpx.HTTPError as exc:
            return Sent(_describe(exc))
        status = answer.status_code
        if answer.is_success:
            return Sent("", status)
        asked = parse_wait(answer.headers.get("retry-after")) if status in (429, 503) else None
        return Sent(f"the receiver answered HTTP {status}", status, asked)

    async def _end(self, delivery: str, n: str, outcome: str, error: str, status: int | None = None) -> None:
        if await self.outbox.outcome(delivery, n, outcome, time.time(), 0, error, status):
            m.WEBHOOK_DELIVERIES.labels(outcome).inc()
            if outcome == "failed":
                log.warning("webhook %s failed for good: %s", delivery, error)

    def _problem(self, url: str) -> str | None:
        try:
            target(url)
        except httpx.InvalidURL as exc:  # (producers refuse such a URL; another writer may not)
            return f"not a URL this worker can call ({exc})"
        if not allowed(url, self.settings.webhook_allowed_hosts):
            return "its host is not on this worker's WEBHOOK_ALLOWED_HOSTS: not called"
        if not _secret(self.settings):
            return "WEBHOOK_SECRET is not set on this worker: nothing is sent unsigned"
        return None

    async def _body(self, delivery: str, n: str, record: dict[str, str]) -> tuple[bytes | None, str]:
        """(the body, its event type), or (None, '') when the record it reports is gone."""
        subject, _, subject_id = delivery.partition(":")
        data: Any
        if subject == "batch":
            batch = await batches.get(self.redis, subject_id)
            if batch is None:
                return None, ""
            data, event = batch.model_dump(mode="json"), f"batch.{batch.status}"
        else:
            raw = await self.redis.get(result_key(subject_id))
            if raw is None:
                return None, ""
            data = orjson.loads(raw)
            event = f"job.{data.get('status')}"
        created = int(float(record.get("created_at", 0)))
        envelope = {"id": f"{delivery}#{n}", "type": event, "created": created, "data": data}
        return orjson.dumps(envelope), event
