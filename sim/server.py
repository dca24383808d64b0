"""A local AIsa gateway: a real HTTP server speaking the wire format of `aisa-wire.md`.

Routes:
  POST /v1/chat/completions                      OpenAI-compatible, plain and SSE streaming
  GET  /v1/models                                the catalog
  POST /v1/models/{model}:generateContent        Gemini native (also under /v1beta)
  POST /_sim/config   GET /_sim/config           fault switches, per model or "*"
  GET  /_sim/stats    POST /_sim/reset           what it saw; forget it
  GET  /_sim/requests                            the last request bodies, as received
  POST /_sim/credits                             set the credits of every key
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

# the bound of `bill_at_bound` is the worker's own byte-walker (one implementation, not two)
from .catalog import MODELS, ModelSpec, price
from .faults import FaultBook, Faults
from .limits import Window
from .reply import Answer, stream_chunks, usage_of
from .requests import ApiError, check_messages, check_params, json_body, spec_of

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "PERMISSION_DENIED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}
# Request bodies /_sim/requests keeps, newest last: every call of a test's run (the budget races
# read every body they sent: with the last 20 of 42, whether a streamed one was among them was
# chance), bounded.
RECORDED_REQUESTS = 200
# OpenAI's enumerated parameters (openai.types.chat.completion_create_params).


class Simulator:
    """The gateway's state: keys and credits, faults, rate windows and what it has seen."""

    def __init__(
        self, api_keys: list[str], credits: float = 100.0, faults: Faults | None = None, seed: int = 0
    ) -> None:
        if not api_keys or not all(api_keys):
            raise ValueError("the simulator needs at least one API key (--api-key or AISA_API_KEY)")
        self.initial_credits = credits
        self.credits = {key: credits for key in api_keys}
        self.faults = FaultBook(faults, seed)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.windows: dict[str, Window] = defaultdict(Window)
        self.calls: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.charged: dict[str, float] = defaultdict(float)
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.in_flight = 0
        self.peak_concurrency = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=RECORDED_REQUESTS)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "rate_limited": self.statuses[429],
            "charged": {m: round(v, 10) for m, v in self.charged.items()},
            "charged_total": round(sum(self.charged.values()), 10),
            "in_flight": self.in_flight,
            "peak_concurrency": self.peak_concurrency,
            "arrivals": {m: list(ts) for m, ts in self.arrivals.items()},
        }

    def authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(401, "No API key provided: send Authorization: Bearer <key>", "missing_api_key")
        key = header.removeprefix("Bearer ").strip()
        if key not in self.credits:
            raise ApiError(401, "The API key provided is invalid or has been revoked.", "invalid_api_key")
        return key

    def admit(self, model: str, tokens: int) -> tuple[Faults, dict[str, str]]:
        """Count the call, apply the rate limit and injected faults; the headers to send."""
        self.calls[model] += 1
        self.arrivals[model].append(time.time())
        faults = self.faults.for_model(model)
        decision = self.windows[model].check(time.monotonic(), tokens, faults.rpm, faults.tpm, faults.rate_window_s)
        if not decision.allowed:
            raise ApiError(
                429,
                f"Rate limit reached for {model}: retry after {decision.retry_after:.2f}s",
                headers=decision.headers,
            )
        injected = self.faults.injected_status(model)
        if injected == 429:
            raise ApiError(
                429,
                f"Simulated rate limit for {model}",
                "rate_limit_exceeded",
                headers={**decision.headers, "retry-after": f"{faults.retry_after_s:g}"},
            )
        if injected:
            raise ApiError(injected, f"Simulated upstream failure ({injected}) for {model}", headers=decision.headers)
        return faults, decision.headers

    def quote(self, key: str, spec: ModelSpec, prompt: int, completion: int) -> float:
        """The call's cost; 402 if the key cannot pay it."""
        cost = price(spec, prompt, completion)
        if self.credits[key] < cost:
            raise ApiError(
                402,
                f"Insufficient credits: this call costs ${cost:.6f}, ${self.credits[key]:.6f} remaining",
                "insufficient_credits",
            )
        return cost

    def charge(self, key: str, model: str, cost: float) -> float:
        """Bill a call the moment its answer is complete: a client that hung up before then,
        a stream cut before its usage chunk or an unreadable reply is not billed."""
        self.credits[key] = round(self.credits[key] - cost, 10)
        self.charged[model] += cost
        return self.credits[key]


# ---------------------------------------------------------------- request checking


def _error_response(exc: ApiError, gemini: bool = False) -> web.Response:
    if gemini:
        error: dict[str, Any] = {
            "code": exc.status,
            "message": exc.message,
            "status": _GEMINI_STATUS.get(exc.status, "UNKNOWN"),
        }
        if exc.status == 429 and "retry-after" in exc.headers:
            error["details"] = [
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{exc.headers['retry-after']}s"}
            ]
    else:
        error = {
            "message": exc.message,
            "type": exc.type,
            "code": exc.code,
            "param": exc.param,
            "request_id": "req_" + uuid.uuid4().hex[:20],
        }
    return web.json_response({"error": error}, status=exc.status, headers=exc.headers)


# ---------------------------------------------------------------- handlers


@dataclass
class _Call:
    """One chat request the simulator has accepted, on its way to an answer."""

    request: web.Request
    key: str
    spec: ModelSpec
    body: dict[str, Any]
    answer: Answer
    faults: Faults
    headers: dict[str, str]


class Handlers:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def _enter(self) -> None:
        self.sim.in_flight += 1
        self.sim.peak_concurrency = max(self.sim.peak_concurrency, self.sim.in_flight)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        sim = self.sim
        self._enter()
        try:
            try:
                key = sim.authenticate(request)
                body = await json_body(request)
                sim.requests.append({"path": request.path, "body": body})
                spec = spec_of(body.get("model"))
                messages = check_messages(body.get("messages"))
                check_params(body)
                if spec.refuses_max_tokens and body.get("max_tokens") is not None:
                    raise ApiError(
                        400,
                        "Unsupported parameter: 'max_tokens' is not supported with this model. "
                        "Use 'max_completion_tokens' instead.",
                        "unsupported_parameter",
                        "max_tokens",
                    )
                answer = Answer(spec, body, messages)
                # TPM counts input plus output tokens (AIsa's rate-limits page): what the call uses
                faults, headers = sim.admit(spec.id, answer.prompt_tokens + answer.completion_tokens)
                if faults.bill_at_bound:
                    answer.bill_at_bound(body)
            except ApiError as exc:
                sim.statuses[exc.status] += 1
                return _error_response(exc)
            return await self._answer(_Call(request, key, spec, body, answer, faults, headers))
        finally:
            sim.in_flight -= 1

    async def _answer(self, call: _Call) -> web.StreamResponse:
        sim, key, spec, body, answer, faults, headers = (
            self.sim,
            call.key,
            call.spec,
            call.body,
            call.answer,
            call.faults,
            call.headers,
        )
        if faults.hang_s:
            await asyncio.sleep(faults.hang_s)
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        try:
            cost = sim.quote(key, spec, answer.prompt_tokens, answer.completion_tokens)
        except ApiError as exc:
            exc.headers.update(headers)
            sim.statuses[exc.status] += 1
            return _error_response(exc)
        sim.statuses[200] += 1
        if body.get("stream"):
            return await self._stream(call, cost)
        if faults.bill_then:
            sim.charge(key, spec.id, cost)
            return await _unanswered(call.request, faults.bill_then)
        if faults.latency_per_token_ms:
            await asyncio.sleep(faults.latency_per_token_ms * answer.completion_tokens / 1000)
        if faults.malformed:
            return web.Response(
                text="<html><body>502 Bad Gateway</body></html>", status=200, content_type="text/html", headers=headers
            )
        credits = sim.charge(key, spec.id, cost)
        return web.json_response(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex[:24],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": spec.id,
                "choices": answer.choices(),
                "usage": usage_of(answer, cost, credits),
            },
            headers=headers,
        )

    async def _stream(self, call: _Call, cost: float) -> web.StreamResponse:
        request, key, spec, answer, faults = call.request, call.key, call.spec, call.answer, call.faults
        response = web.StreamResponse(
            headers={**call.headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        base = {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": spec.id,
        }
        if faults.bill_then:  # billed up front, then cut (or stalled) after the first chunk
            self.sim.charge(key, spec.id, cost)
        for sent, chunk in enumerate(stream_chunks(answer, call.body)):
            if faults.bill_then and sent == 1:
                return await _unanswered(request, faults.bill_then, response)
            if faults.cut_stream_after is not None and sent >= faults.cut_stream_after:
                request.transport.close()  # type: ignore[union-attr]  # mid-stream: no [DONE], no terminating chunk
                return response
            if faults.stream_rate_limit_after is not None and sent >= faults.stream_rate_limit_after:
                # the upstream provider throttled mid-answer: HTTP 200 already sent, so an error event
                error = {
                    "error": {
                        "type": "rate_limit_error",
                        "code": "upstream_rate_limit",
                        "message": f"Upstream rate limit reached for {spec.id} during the stream",
                    }
                }
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                await response.write_eof()
                return response
            if faults.malformed and sent == 1:  # then give up: an unreadable answer is not billed
                await response.write(b"data: {not json\n\n")
                request.transport.close()  # type: ignore[union-attr]
                return response
            if faults.latency_per_token_ms and chunk.get("choices"):
                await asyncio.sleep(faults.latency_per_token_ms / 1000)
            if chunk.get("usage") == "final":
                chunk = {"choices": [], "usage": usage_of(answer, cost, self.sim.charge(key, spec.id, cost))}
            await response.write(b"data: " + json.dumps({**base, **chunk}).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def models(self, request: web.Request) -> web.Response:
        try:
            self.sim.authenticate(request)
        except ApiError as exc:
            return _error_response(exc)
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": m.id, "object": "model", "created": 1700000000, "owned_by": m.owned_by}
                    for m in MODELS.values()
                ],
            }
        )

    async def gemini(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["spec"].partition(":")
        try:
            key = self.sim.authenticate(request)
            if method != "generateContent":
                raise ApiError(404, f"Unknown method {method!r}", "unknown_endpoint")
            body = await json_body(request)
            self.sim.requests.append({"path": request.path, "body": body})
            spec = spec_of(model)
            messages = _gemini_messages(body)
            config = body.get("generationConfig") or {}
            openai_body: dict[str, Any] = {
                "max_tokens": config.get("maxOutputTokens"),
                "temperature": config.get("temperature"),
                "n": config.get("candidateCount"),
                "seed": config.get("seed"),
            }
            if config.get("responseMimeType") == "application/json":
                schema = config.get("responseSchema")
                openai_body["response_format"] = (
                    {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
                    if schema
                    else {"type": "json_object"}
                )
            check_params(openai_body)
            answer = Answer(spec, openai_body, check_messages(messages))
            # like chat/completions: TPM counts input plus output, every answer has the headers
            faults, headers = self.sim.admit(spec.id, answer.prompt_tokens + answer.completion_tokens)
            if faults.bill_at_bound:
                answer.bill_at_bound(body)
            self.sim.charge(key, spec.id, self.sim.quote(key, spec, answer.prompt_tokens, answer.completion_tokens))
        except ApiError as exc:
            self.sim.statuses[exc.status] += 1
            return _error_response(exc, gemini=True)
        self.sim.statuses[200] += 1
        if faults.bill_then:
            return await _unanswered(request, faults.bill_then)
        return web.json_response(
            {
                "candidates": [
                    {
                        "content": {"role": "model", "parts": [{"text": " ".join(answer.words)}]},
                        "finishReason": "MAX_TOKENS" if answer.finish_reason == "length" else "STOP",
                        "index": i,
                    }
                    for i in range(answer.n)
                ],
                "usageMetadata": {
                    "promptTokenCount": answer.prompt_tokens,
                    "candidatesTokenCount": answer.completion_tokens,
                    "totalTokenCount": answer.prompt_tokens + answer.completion_tokens,
                },
                "modelVersion": spec.id,
                "responseId": uuid.uuid4().hex[:20],
            },
            headers=headers,
        )

    # ------------------------------------------------------------ admin

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.faults.snapshot())

    async def set_config(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.pop("reset", False):
            self.sim.faults.reset()
        model = body.pop("model", None)
        try:
            faults = self.sim.faults.update(model, body) if body else self.sim.faults.default
        except ValueError as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        return web.json_response({"model": model or "*", "faults": faults.model_dump()})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.sim.stats())

    async def requests(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": list(self.sim.requests)})

    async def reset(self, request: web.Request) -> web.Response:
        self.sim.reset_stats()
        self.sim.faults.reset()
        self.sim.credits = {k: self.sim.initial_credits for k in self.sim.credits}
        return web.json_response({"ok": True})

    async def set_credits(self, request: web.Request) -> web.Response:
        credits = float((await request.json())["credits"])
        self.sim.credits = {k: credits for k in self.sim.credits}
        return web.json_response({"credits": credits})


async def _unanswered(request: web.Request, how: str, response: web.StreamResponse | None = None) -> web.StreamResponse:
    """A billed call that never gets its answer (Faults.bill_then): the connection dropped, or
    held until the client gives up (its hang-up cancels this handler: handler_cancellation)."""
    if how == "hang":
        await asyncio.sleep(3600)
    request.transport.close()  # type: ignore[union-attr]
    return response or web.Response(status=200)


def _gemini_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "'contents' must be a non-empty array", "missing_parameter", "contents")
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or {}
    if system.get("parts"):
        messages.append({"role": "system", "content": " ".join(p.get("text", "") for p in system["parts"])})
    for content in contents:
        parts: list[dict[str, Any]] = []
        for part in content.get("parts") or []:
            if "text" in part:
                parts.append({"type": "text", "text": part["text"]})
            inline = part.get("inline_data") or part.get("inlineData")
            if inline:
                mime = inline.get("mime_type") or inline.get("mimeType")
                parts.append(
                    {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{inline.get('data', '')}"}}
                )
        messages.append({"role": "assistant" if content.get("role") == "model" else "user", "content": parts})
    return messages


def create_app(sim: Simulator) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    h = Handlers(sim)
    app.router.add_post("/v1/chat/completions", h.chat)
    app.router.add_get("/v1/models", h.models)
    app.router.add_post("/v1/models/{spec}", h.gemini)
    app.router.add_post("/v1beta/models/{spec}", h.gemini)
    app.router.add_get("/_sim/config", h.get_config)
    app.router.add_post("/_sim/config", h.set_config)
    app.router.add_get("/_sim/stats", h.stats)
    app.router.add_get("/_sim/requests", h.requests)
    app.router.add_post("/_sim/reset", h.reset)
    app.router.add_post("/_sim/credits", h.set_credits)
    return app


class SimServer:
    """The simulator on its own thread and event loop, for tests, benchmarks and the demo."""

    def __init__(self, sim: Simulator, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sim, self.host, self.port = sim, host, port
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aisa-sim", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> SimServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("simulator did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        # handler_cancellation: a client that hangs up cancels its call, which is then not billed
        runner = web.AppRunner(create_app(self.sim), access_log=None, handler_cancellation=True)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port, backlog=BACKLOG)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Connections waiting to be accepted (the kernel caps it at net.core.somaxconn). aiohttp's 128
# made a client opening a thousand connections at once (bench.inflight) lose about 4 % of its
# SYNs and retry them a second later, a second a gateway with a real accept queue does not add.
BACKLOG = 4096


def run(host: str, port: int, sim: Simulator) -> None:
    """Serve in the foreground until interrupted (`llm-router sim`)."""
    web.run_app(
        create_app(sim), host=host, port=port, access_log=None, print=None, handler_cancellation=True, backlog=BACKLOG
    )
