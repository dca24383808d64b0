"""What the ingress's routes depend on: `Ingress` (what requests share: Redis, the result waits,
the files, a Producer per source), the bearer auth (`tenant`: a token's source), and reading a
request's body (`read_json`, `check_job_body`, `while_connected`)."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from worker.contract.connections import async_pool_redis, async_redis
from worker.contract.settings import Settings, TokenGrant
from worker.contract.store import ResultStore

from ..api import Producer
from ..coalesce import ScriptBatches
from ..files import Files
from ..streams import JobStreams
from ..waits import ResultWaits
from .errors import ApiError

# The queue's depth (for INGRESS_MAX_QUEUE_DEPTH) is read again after this long, or sooner when the
# jobs admitted since the last read could reach the limit: far under it, no read per request.
DEPTH_FRESH_S = 1.0
T = TypeVar("T")
# Redis connections one ingress process opens for commands (requests wait for a free one);
# every long-poll shares one more, the pub/sub of producers.waits.
REDIS_CONNECTIONS = 64


class Ingress:
    """What the app's requests share: Redis, the result waits, the files, a Producer per source."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = async_pool_redis(
            settings.redis_url, max_connections=REDIS_CONNECTIONS, timeout=10, socket_connect_timeout=2
        )
        self.store = ResultStore(self.redis, settings.result_ttl_s)
        self.waits = ResultWaits(async_redis(settings.redis_url, socket_connect_timeout=2), self.store)
        self.files = Files(
            self.redis,
            settings.file_ttl_s,
            settings.files_max_per_source,
            settings.files_max_bytes_per_source,
            settings.upload_lease_s,
        )
        self.streams = JobStreams(self.redis, async_redis(settings.redis_url, socket_connect_timeout=2), self.store)
        self._producers: dict[str, Producer] = {}
        self.grants = settings.grants()
        self.script_batches = ScriptBatches(self.redis)
        self._depth, self._depth_at = 0, float("-inf")  # the last depth read, plus the jobs admitted since

    def producer(self, source: str) -> Producer:
        """The producer of a token's source: its jobs stamped with it, their ids in its namespace."""
        if source not in self._producers:
            self._producers[source] = Producer(
                source=source,
                tenant=True,
                settings=self.settings,
                redis=self.redis,
                store=self.store,
                call=self.script_batches.call,
            )
        return self._producers[source]

    def grant_of(self, token: str) -> TokenGrant | None:
        """The token's grant (source, role), compared in constant time against every known token."""
        found = None
        for known, grant in self.grants.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = grant
        return found

    def source_of(self, token: str) -> str | None:
        """The token's source name (None: unknown, or an operator token without one)."""
        grant = self.grant_of(token)
        return None if grant is None else grant.source

    async def admit(self, source: str, jobs: int = 1) -> None:
        """429 when the queue is over INGRESS_MAX_QUEUE_DEPTH. The depth is read when the last
        read is over DEPTH_FRESH_S old or the jobs admitted since could reach the limit."""
        limit = self.settings.ingress_max_queue_depth
        if not limit:
            return
        now = time.monotonic()
        if now - self._depth_at > DEPTH_FRESH_S or self._depth + jobs > limit:
            self._depth, self._depth_at = await self.producer(source).queued(), now
        if self._depth + jobs > limit:
            raise ApiError(
                429,
                f"the queue holds over INGRESS_MAX_QUEUE_DEPTH={limit} jobs: retry later",
                type="rate_limit_error",
                code="queue_full",
            )
        self._depth += jobs

    async def aclose(self) -> None:
        await self.waits.aclose()
        await self.waits.redis.aclose()
        await self.streams.aclose()
        await self.streams.wakeups.redis.aclose()
        await self.redis.aclose()


async def ingress(request: Request) -> Ingress:
    """(Dependencies are `async def`: a plain `def` one costs a thread hop per request.)"""
    found: Ingress = request.app.state.ingress
    return found


bearer = HTTPBearer(auto_error=False, description="a token of INGRESS_TOKENS")


async def tenant(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The source name of the request's bearer token; 401 without a known one (an operator
    token without a source is the console's only)."""
    source = request.app.state.ingress.source_of(credentials.credentials) if credentials else None
    if source is None:
        raise ApiError(
            401, "missing or unknown bearer token: send Authorization: Bearer <token>", code="invalid_api_key"
        )
    return source


Tenant = Annotated[str, Depends(tenant)]
App = Annotated[Ingress, Depends(ingress)]


async def while_connected(request: Request, waiting: Coroutine[Any, Any, T]) -> T:
    """What `waiting` returns, unless the client leaves first: then it is cancelled and
    ClientDisconnect raised (Guard ends the request quietly). A long-poll whose client has gone
    ends now, not when its wait would have."""
    task = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_gone(request.receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        task.cancel()  # (done: no-op)
    if task.done() and not task.cancelled():
        return task.result()
    if gone.done() and not gone.cancelled() and (error := gone.exception()):
        raise error
    raise ClientDisconnect()


async def _gone(receive: Receive) -> None:
    """Returns when the client has gone (a request's body, if any, already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object (read through the body limit), or a 400."""
    return parse_json(await request.body())


# A JSON string that starts as a data URL (an inline image, or text that looks like one).
_DATA_URL = re.compile(rb'"data:[^"]*"')
# The most bytes a JSON body spends on spelling a job that its record does not: per backslash (an
# escape: `\u00e9` is 6 bytes for 2), per `null` (a field left out: `"presence_penalty":null`).
_ESCAPE_SLACK, _NULL_SLACK = 5, 40


def job_body_floor(raw: bytes) -> int:
    """The fewest bytes the job record of this JSON body can have, its inline images left out
    (MAX_JOB_BYTES's measure): the body without its data URLs, whitespace, escapes and nulls.
    A few passes in C over the bytes, before any parse: an over-long body costs no parse."""
    images = sum(len(m) for m in _DATA_URL.findall(raw))
    spelling = sum(raw.count(c) for c in (b" ", b"\n", b"\r", b"\t"))
    spelling += _ESCAPE_SLACK * raw.count(b"\\") + _NULL_SLACK * raw.count(b"null")
    return len(raw) - images - spelling


def check_job_body(raw: bytes, max_job_bytes: int) -> None:
    """413 when the body cannot be a job of MAX_JOB_BYTES (measured before it is parsed)."""
    floor = job_body_floor(raw)
    if floor > max_job_bytes:
        message = (
            f"the body holds at least {floor} bytes besides its inline images, over MAX_JOB_BYTES={max_job_bytes}: "
            "shorten the messages and tools, or split the job"
        )
        raise ApiError(413, message, code="body_too_large")


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body's JSON object, or a 400."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # (its reason: where, or that it nests over orjson's 1024 levels)
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body
