"""The ingress's connections under hostile clients: deadlines and a bound, in uvicorn's protocol.

uvicorn (with httptools) closes an idle keep-alive connection, but a connection that sends a
header byte now and then is held forever (each byte cancels its idle timer), and so is a body
that trickles in; nothing bounds how many connections are held, and an ASGI app sees a request
only once its headers are complete. So `GuardedProtocol`, uvicorn's own `HttpToolsProtocol`
with a few hooks, closes:

- a connection whose request headers are not complete INGRESS_HEADER_TIMEOUT_S after it was
  accepted, or, on a kept-alive connection, after the first byte of its next request (a total
  deadline: bytes arriving do not extend it; uvicorn closes a connection idle 5 s before that);
- a request whose body is not complete INGRESS_BODY_TIMEOUT_S after its headers (with a 408
  when no answer was started);
- a request whose headers (the request line included) are over INGRESS_MAX_HEADER_BYTES
  (httptools has no bound of its own), with a 431;

a connection whose client reads none of its answer for INGRESS_SEND_TIMEOUT_S (the answer
waits in full buffers: a slow reader would hold its request, its memory, forever);

and holds at most INGRESS_MAX_CONNECTIONS. A connection past the limit takes the place of the
oldest one with no request in flight (a client still sending its headers, an idle keep-alive
one: `Pool`), which is closed. When every held connection has a request in flight, up to
OVERFLOW more are let in to be answered at once: 503 with `Retry-After` (`/healthz`, `/readyz`
and `/metrics` answered as usual, so a probe gets through whatever fills the limit), then closed;
past those too the oldest of them still sending its headers is closed, else the new one.

An answer given before the request was read whole (413, 431, 400, 408: `answer_early`) is sent,
then the connection half-closed (FIN) and what still comes read and dropped for LINGER_S before it
is closed: closed at once, the kernel would answer the client's next bytes with a reset, which
destroys the answer before the client reads it.

uvicorn tells only the newest request of a connection that its client left: with pipelined
requests, the one running (a long-poll, a stream reader) would wait on. Here every request of the
connection is told.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from worker.contract.settings import ConfigError, Settings
from worker.observe.metrics import HTTP_CLOSED, HTTP_CONNECTIONS

log = logging.getLogger("llm_router.http")

# A connection reads a request's headers, then its body; then the request is in flight (busy); then idle.
HEADERS, BODY, BUSY, IDLE = "headers", "body", "busy", "idle"
# After an early answer and its FIN, input is read and dropped this long before the connection is closed.
LINGER_S = 2.0
# Connections let in past INGRESS_MAX_CONNECTIONS, each answered at once (503, or a health probe) and closed.
OVERFLOW = 32
# Paths answered on an overflow connection: the probes and the metrics.
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
RETRY_AFTER_S = 1
# File descriptors the ingress needs besides its connections: Redis (http.REDIS_CONNECTIONS and two
# pub/sub), the listening socket, logs, upload spools, the Python runtime.
FD_MARGIN = 128


class Pool:
    """At most `size` connections; those with no request in flight (`idle`) in the order they
    became so, oldest first: the ones shed to make room."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.members: set[GuardedProtocol] = set()
        self.idle: dict[GuardedProtocol, None] = {}  # insertion-ordered

    def take(self, conn: GuardedProtocol) -> bool:
        """Hold `conn` (idle), shedding the oldest idle connection if full; False if none can go."""
        if len(self.members) >= self.size:
            if not self.idle:
                return False
            victim = next(iter(self.idle))
            self.leave(victim)
            victim.shed()
        self.members.add(conn)
        self.idle[conn] = None
        return True

    def busy(self, conn: GuardedProtocol) -> None:
        self.idle.pop(conn, None)

    def rest(self, conn: GuardedProtocol) -> None:
        if conn in self.members:
            self.idle.pop(conn, None)
            self.idle[conn] = None  # the newest idle one

    def leave(self, conn: GuardedProtocol) -> None:
        self.members.discard(conn)
        self.idle.pop(conn, None)


class Connections:
    """What every connection of one server shares: its settings and the two pools."""

    def __init__(self, settings: Settings, limit: int) -> None:
        self.header_timeout_s = settings.ingress_header_timeout_s
        self.body_timeout_s = settings.ingress_body_timeout_s
        self.max_header_bytes = settings.ingress_max_header_bytes
        self.send_timeout_s = settings.ingress_send_timeout_s
        self.limit = limit
        self.held = Pool(self.limit)
        self.overflow = Pool(OVERFLOW)
        self.shed_count = 0  # connections closed to make room (the log says so now and then)

    def admit(self, conn: GuardedProtocol) -> Pool | None:
        for pool in (self.held, self.overflow):
            if pool.take(conn):
                return pool
        return None


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with deadlines and a bound (`protocol_class` makes one per
    server, with its `Connections`)."""

    connections_of_server: Connections

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline: asyncio.TimerHandle | None = None
        self.send_deadline: asyncio.TimerHandle | None = None
        self.running: RequestResponseCycle | None = None  # the request whose app runs (pipelined ones wait)
        self.phase, self.header_bytes, self.lingering = HEADERS, 0, False
        self.pool = self.connections_of_server.admit(self)
        if self.pool is None:  # full of requests in flight and of overflow ones being answered
            HTTP_CLOSED.labels("refused").inc()
            transport.abort()
            return
        if self.pool is self.connections_of_server.overflow:
            self.app = _Overloaded(self.app, self.connections_of_server.limit)
        self._arm(self.connections_of_server.header_timeout_s, self._headers_late)  # (it may send nothing)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_send()
        if self.pool is not None:
            self.pool.leave(self)
        self._tell_gone()
        super().connection_lost(exc)

    def _cycles(self) -> list[RequestResponseCycle]:
        """Every request of this connection: the one running, those pipelined behind it, the newest."""
        return [c for c in (self.running, *(cycle for cycle, _ in self.pipeline), self.cycle) if c is not None]

    def _tell_gone(self) -> None:
        """Every request of this connection not yet answered sees its client gone (`http.disconnect`)."""
        for cycle in self._cycles():
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self.running = cycle
        super()._start_asgi_task(cycle, app)

    def data_received(self, data: bytes) -> None:
        """The deadlines are armed after a chunk only if it left headers or a body unfinished: a
        request that comes whole costs no timer (uvicorn's keep-alive timer covers the idle time
        before its first byte)."""
        if self.lingering:  # answered early: what still comes is dropped
            return
        if self.phase in (HEADERS, IDLE):
            self.header_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing() or self.lingering:
            return
        if self.phase in (HEADERS, IDLE):  # bytes of headers (or of nothing yet, e.g. blank lines)
            limit = self.connections_of_server.max_header_bytes
            if self.header_bytes > limit:
                message = f"the request's headers are over INGRESS_MAX_HEADER_BYTES={limit} bytes: send less"
                self.answer_early(
                    _answer(431, "headers_too_large", message, "invalid_request_error"), "headers_too_large"
                )
            elif self.deadline is None:
                self._arm(self.connections_of_server.header_timeout_s, self._headers_late)
        elif self.phase == BODY and self.deadline is None:
            self._arm(self.connections_of_server.body_timeout_s, self._body_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.phase = HEADERS

    def on_headers_complete(self) -> None:
        self.phase, self.header_bytes = BODY, 0
        self._disarm()
        if self.pool is not None:
            self.pool.busy(self)
        super().on_headers_complete()
        if self.cycle is not None:  # its close (a `Connection: close` answer) may come before the body was read
            self.cycle.transport = _CycleTransport(self)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self.phase = BUSY
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self.lingering:
            return
        if self.phase == BODY and self.cycle.response_complete:  # answered before its body was read (413, 401...)
            self.answer_early(None, "answered_early")  # (not a request pipelined behind the one answered)
            return
        pipelined = bool(self.pipeline)  # the next request starts now: it is in flight
        super().on_response_complete()
        if not pipelined and self.phase == BUSY and self.pool is not None and not self.transport.is_closing():
            self._rest()

    def _rest(self) -> None:
        """Between requests: sheddable, and bytes that come are a next request's headers."""
        assert self.pool is not None
        self.phase = IDLE
        self.pool.rest(self)

    def shed(self) -> None:
        """Closed to make room for a newer connection."""
        self._closing("shed")

    def _arm(self, seconds: float, then: Any) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(seconds, then)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _headers_late(self) -> None:
        """Headers not complete in time: 408 if some came (nothing to answer on a silent one), and close."""
        self.deadline = None
        if self.phase == HEADERS and self.header_bytes:
            limit = self.connections_of_server.header_timeout_s
            message = f"the request's headers were not complete within INGRESS_HEADER_TIMEOUT_S={limit:g} s"
            self.answer_early(_answer(408, "request_timeout", message, "invalid_request_error"), "header_timeout")
        else:
            self._closing("header_timeout")

    def _body_late(self) -> None:
        """The body did not come in time: 408 unless an answer was started, and close. The app
        sees the client gone (`http.disconnect`), as if it had left."""
        self.deadline = None
        cycle = self.cycle
        answer = None
        if cycle is not None and not cycle.response_complete:
            if not cycle.response_started:
                limit = self.connections_of_server.body_timeout_s
                message = f"the request body was not complete within INGRESS_BODY_TIMEOUT_S={limit:g} s: send it faster"
                answer = _answer(408, "request_timeout", message, "invalid_request_error")
            if cycle.response_started:  # half an answer: nothing to linger for
                self._tell_gone()
                self._closing("body_timeout")
                return
        self.answer_early(answer, "body_timeout")

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse: 400 in OpenAI's shape, answered early."""
        message = f"not a valid HTTP/1.1 request ({msg.rstrip('.')})"
        self.answer_early(_answer(400, "invalid_request", message, "invalid_request_error"), "answered_early")

    def answer_early(self, answer: bytes | None, reason: str) -> None:
        """`answer` (unless the app sent one) before the request was read whole; then FIN, and
        what still comes dropped for LINGER_S before the close, so the client reads the answer
        rather than a reset. Requests of the connection still running see their client gone."""
        if self.lingering or self.transport.is_closing():
            return
        HTTP_CLOSED.labels(reason).inc()
        halfway = any(c.response_started and not c.response_complete for c in self._cycles())
        self.lingering = True
        self._disarm()
        self._tell_gone()
        self.pipeline.clear()
        if answer and not halfway:  # (after half an answer to an earlier request it would be garbage)
            self.transport.write(answer)
        if self.pool is not None:
            self.pool.rest(self)  # sheddable
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self.deadline = self.loop.call_later(LINGER_S, self.transport.close)

    def close_cycle(self) -> None:
        """The app's answer asks to close the connection: early (linger) if its request was not read whole."""
        if self.phase == BODY and not self.lingering:
            self.answer_early(None, "answered_early")
        elif not self.lingering:
            self.transport.close()

    # A client that reads none of its answer: the transport's buffer stays full (uvicorn waits for
    # it to drain before each write, forever).
    def pause_writing(self) -> None:
        super().pause_writing()
        if self.send_deadline is None:
            self.send_deadline = self.loop.call_later(self.connections_of_server.send_timeout_s, self._send_late)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._disarm_send()

    def _disarm_send(self) -> None:
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None

    def _send_late(self) -> None:
        """The client read nothing for INGRESS_SEND_TIMEOUT_S: its requests see it gone, and the connection is cut."""
        self.send_deadline = None
        HTTP_CLOSED.labels("send_timeout").inc()
        self._tell_gone()
        self.flow.resume_writing()  # (a send waiting for the buffer to drain returns: its client is gone)
        self.transport.abort()

    def _closing(self, reason: str) -> None:
        HTTP_CLOSED.labels(reason).inc()
        if reason == "shed":
            shed = self.connections_of_server.shed_count = self.connections_of_server.shed_count + 1
            if shed in (1, 10, 100) or shed % 1000 == 0:  # a flood logs a few lines, not one a connection
                log.warning(
                    "INGRESS_MAX_CONNECTIONS=%d reached: %d idle connections closed so far to make room",
                    self.connections_of_server.limit,
                    shed,
                )
        self.transport.close()


class _CycleTransport:
    """A request's view of its connection's transport: a close it asks for (its answer said
    `Connection: close`) lingers if the request was not read whole (`close_cycle`)."""

    def __init__(self, protocol: GuardedProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self.write, self.is_closing = protocol.transport.write, protocol.transport.is_closing  # (what a request calls)

    def close(self) -> None:
        self._protocol.close_cycle()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Overloaded:
    """The app of an overflow connection: the probes as usual, anything else 503; then close."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.body = _body(
            f"the ingress holds INGRESS_MAX_CONNECTIONS={limit} connections with requests in flight: "
            f"retry in {RETRY_AFTER_S} s",
            "overloaded",
            "server_error",
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def closing(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        if scope["type"] == "http" and scope["path"] in PROBES:
            await self.app(scope, receive, closing)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
            (b"connection", b"close"),
        ]
        HTTP_CLOSED.labels("overloaded").inc()
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _body(message: str, code: str, type: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": None, "code": code}})


def _answer(status: int, code: str, message: str, type: str) -> bytes:
    body = _body(message, code, type)
    reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, reason, len(body)) + body


def protocol_class(settings: Settings) -> type[GuardedProtocol]:
    """The protocol class to give uvicorn (`http=`) for one server on `settings`."""
    connections = Connections(settings, connection_limit(settings))
    HTTP_CONNECTIONS.set_function(lambda: len(connections.held.members) + len(connections.overflow.members))
    return type("GuardedProtocol", (GuardedProtocol,), {"connections_of_server": connections})


def connection_limit(settings: Settings) -> int:
    """INGRESS_MAX_CONNECTIONS, with a file descriptor for each connection (held and overflow)
    and FD_MARGIN more: the soft limit is raised towards the hard one if needed. Past the hard
    one, a configured limit is a ConfigError naming both ways out; the default is lowered to fit
    (a warning says so): the ingress starts wherever it did before it had a limit."""
    limit = settings.ingress_max_connections
    need = limit + OVERFLOW + FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= need:
        return limit
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return limit
    fits = hard - OVERFLOW - FD_MARGIN
    if fits < 1 or "ingress_max_connections" in settings.model_fields_set:
        raise ConfigError(
            f"INGRESS_MAX_CONNECTIONS={limit} needs {need} file descriptors and this process may open {hard} "
            f"(ulimit -n): raise the limit, or set INGRESS_MAX_CONNECTIONS={max(1, fits)} or less"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.warning(
        "INGRESS_MAX_CONNECTIONS: %d (not the default %d: this process may open %d files, ulimit -n)", fits, limit, hard
    )
    return fits
