"""The async AIsa client: one chat completion (plain or streamed, or through Gemini's native
generateContent endpoint) in, a `Completion` out.

Transport: httpx over the `httpx-aiohttp` transport. Measured on these 2-core machines at
50 concurrent requests: plain httpx 139 req/s, httpx over aiohttp 1,026 req/s, raw aiohttp
2,159 req/s. Plain httpx's connection pool collapses under the concurrency a worker runs
at; the aiohttp transport keeps the httpx API (and so any httpx-based tooling and mocking)
at 7x the rate. `bench/dispatch.py` re-measures the client against the simulator.

Every failure leaves here as a `worker.calls.errors.AIsaError` subclass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions
from httpx_sse import aconnect_sse
from pydantic import ValidationError

from ..contract.models import Answer, Choice, Usage
from . import errors, gemini
from .headers import parse_duration, rate_limit_snapshot, retry_after

# 404 codes that say the model is unknown (aisa-wire.md), not the path
MODEL_NOT_FOUND = frozenset({"model_not_found", "unknown_model"})


class Completion(Answer):
    """One successful upstream call: the answer (`cost` is the gateway's bill, `usage.cost`, or
    None if it did not say), the model the gateway named, and its rate-limit headers."""

    model: str
    rate_limits: dict[str, float] = {}


class AIsaClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_connections: int = 200,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        own = AiohttpTransport(limits=limits) if transport is None else None
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers={"Authorization": f"Bearer {api_key}"},
            # pool=None: waiting for a free connection is queueing, not a gateway timeout.
            timeout=httpx.Timeout(timeout, connect=connect_timeout, pool=None),
            transport=transport or own,
            limits=limits,
        )

        # resolved once: httpx parses a relative URL against base_url on every request
        self._chat_url = self._http.base_url.join("chat/completions")
        # httpx's cookie handling, read only when an answer sets a cookie (httpx's `cookies`
        # setter would copy it into a plain Cookies)
        self._http._cookies = _Cookies()
        # A plain chat call goes straight to the aiohttp session under httpx's transport when
        # httpx would send it there (our own transport, no proxy from the environment): see `_chat`.
        self._direct: AiohttpTransport | None = None
        if own is not None and self._http._transport_for_url(self._chat_url) is own:
            self._direct = own
            self._chat_url_text = str(self._chat_url)
            # what httpx sends: its default headers, the key, and the JSON body's type
            self._post_headers = {**dict(self._http.headers.items()), "Content-Type": "application/json"}
            # what the transport makes of httpx's Timeout
            self._post_timeout = aiohttp.ClientTimeout(sock_connect=connect_timeout, sock_read=timeout, connect=None)

    async def __aenter__(self) -> AIsaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[str]:
        """The model ids the gateway lists (GET /models)."""
        with _transport_errors():
            response = await self._http.get("models")
        if response.status_code != 200:
            raise _status_error(response)
        data = _json(response.content, "models list")
        try:
            return [m["id"] for m in data["data"]]
        except (KeyError, TypeError):
            raise errors.MalformedResponseError("models list has no data[].id") from None

    async def chat_path_status(self) -> int:
        """The status POST /chat/completions answers an empty request: refused as a bad request
        (400/422), never billed, by a server that has the path; 404 by one that has not."""
        with _transport_errors():
            response = await self._http.post(self._chat_url, json={})
        return response.status_code

    def chat(
        self, payload: dict[str, Any], on_delta: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None
    ) -> Coroutine[Any, Any, Completion]:
        """POST /chat/completions (its coroutine); streams when payload["stream"] is true, then
        awaits `on_delta(choices)` with each chunk's choices as it arrives (worker.outputs.events)."""
        if payload.get("stream"):
            return self._chat_stream(payload, on_delta)
        return self._chat(payload)

    async def _chat(self, payload: dict[str, Any]) -> Completion:
        """POST chat/completions, straight through the aiohttp session that httpx's transport
        would use, the same request (headers, JSON body, timeouts, no redirects) and the same
        exceptions (the transport's mapping of aiohttp's), without httpx's Request and Response
        objects, its headers' copies and its body stream: about half of the client's CPU a call
        (0.33 -> 0.17 ms at 50 concurrent calls). An encoded answer (Content-Encoding) is decoded
        by httpx, as before; headers are read as httpx reads them (`_headers`); a cookie the
        answer sets goes to httpx's jar, and once it holds one, httpx sends the calls (with their
        cookies). With another transport (tests', a proxy's from the environment), httpx sends
        every call. (One coroutine, awaiting aiohttp's request itself, not its context manager:
        a frame is resumed at every await of the call.)"""
        response: httpx.Response | None
        headers: Mapping[str, str]
        started = time.perf_counter()
        with _transport_errors():
            if self._direct is None or self._http.cookies:  # a gateway that set cookies gets them back from httpx
                response = await self._http.post(self._chat_url, json=payload)
                status, content, headers = response.status_code, response.content, response.headers
            else:
                body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
                with map_aiohttp_exceptions():
                    answer = await self._session().request(
                        "POST",
                        self._chat_url_text,
                        data=body,
                        headers=self._post_headers,
                        allow_redirects=False,
                        auto_decompress=False,
                        compress=False,
                        timeout=self._post_timeout,
                    )
                    try:
                        content = await answer.read()
                    finally:  # what aiohttp's context manager does on leaving
                        answer.release()
                        await answer.wait_for_close()
                status, content, headers, response = self._read(answer, content)
        latency = time.perf_counter() - started
        if status != 200:
            raise _status_error(response or self._response(status, headers, content=content))
        with _reading("completion"):
            return _completion(_json(content, "completion"), payload["model"], latency, headers)

    def _session(self) -> aiohttp.ClientSession:
        """The aiohttp session of httpx's transport (`_direct`), made as the transport makes it."""
        transport = self._direct
        assert transport is not None
        if not isinstance(transport.client, aiohttp.ClientSession):
            transport.client = transport.get_client()
        return transport.client

    def _read(
        self, answer: aiohttp.ClientResponse, content: bytes
    ) -> tuple[int, bytes, Mapping[str, str], httpx.Response | None]:
        """An answer aiohttp read: (status, body, headers, httpx's response or None). httpx's
        response, with the raw headers, only where it is read: an encoded answer (httpx decodes
        it), an error (`_status_error` reads it), a cookie (httpx's jar keeps it)."""
        raw, made = answer.raw_headers, None
        headers: Mapping[str, str]
        if answer.headers.get("Content-Encoding", "identity") != "identity":
            made = self._response(answer.status, raw, stream=httpx.ByteStream(content))
            made.read()  # (a ByteStream reads as well without awaiting)
            content, headers = made.content, dict(made.headers.items())
        else:
            headers = _headers(raw)
        cookies = "set-cookie" in headers or "set-cookie2" in headers
        if made is None and (answer.status != 200 or cookies):
            made = self._response(answer.status, raw, content=content)
        if cookies and made is not None:
            self._http.cookies.extract_cookies(made)
        return answer.status, content, headers, made

    def _response(self, status: int, headers: Any, **body: Any) -> httpx.Response:
        """httpx's response for an answer `_chat` read itself."""
        return httpx.Response(status, headers=headers, request=httpx.Request("POST", self._chat_url), **body)

    async def generate_content(self, model: str, payload: dict[str, Any]) -> Completion:
        """POST models/{model}:generateContent (Gemini native) for an OpenAI-style payload,
        translated by `worker.calls.gemini`; the same Completion, without the gateway's cost."""
        try:
            body = gemini.request_body(payload)
        except ValueError as exc:
            raise errors.BadRequestError(f"not sendable to Gemini native: {exc}") from None
        started = time.perf_counter()
        with _transport_errors():
            response = await self._http.post(f"models/{model}:generateContent", json=body)
        latency = time.perf_counter() - started
        if response.status_code != 200:
            raise _status_error(response)
        answer = _json(response.content, "generateContent answer")
        with _reading("generateContent answer"):
            fields = gemini.answer_fields(answer)
            usage, _, _ = _usage(fields["usage"])
            return Completion(
                model=fields["model"] or model,
                content=fields["content"],
                finish_reason=fields["finish_reason"],
                choices=[Choice(**c) for c in fields["choices"]] if fields.get("choices") else None,
                latency_s=latency,
                usage=usage,
                rate_limits=rate_limit_snapshot(response.headers),
            )

    async def _chat_stream(
        self, payload: dict[str, Any], on_delta: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None
    ) -> Completion:
        payload = chat_body(payload)
        started = time.perf_counter()
        with _transport_errors(streaming=True):
            async with aconnect_sse(self._http, "POST", "chat/completions", json=payload) as source:
                response = source.response
                if response.status_code != 200:
                    await response.aread()
                    raise _status_error(response)
                stream = _StreamAssembler(payload["model"], started)
                async for event in source.aiter_sse():
                    with _reading("stream chunk"):
                        if stream.feed(event.data):
                            break
                    if on_delta is not None and stream.fresh:
                        await on_delta(stream.fresh)
        with _reading("stream"):
            return stream.finish(time.perf_counter() - started, response.headers)


def _headers(raw: Any) -> dict[str, str]:
    """Raw header pairs as httpx's `Headers.items()` reads them: names lower-cased, a repeated
    header's values joined by ", ", all decoded as ASCII, else UTF-8, else ISO-8859-1."""
    for encoding in ("ascii", "utf-8"):
        try:
            return _joined(raw, encoding)
        except UnicodeDecodeError:
            continue
    return _joined(raw, "iso-8859-1")


def _joined(raw: Any, encoding: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in raw:
        key, text = name.lower().decode(encoding), value.decode(encoding)
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, the same cookies kept and sent, which hands an answer to
    `http.cookiejar` only when it sets a cookie: httpx hands it every answer, about 30 µs of
    CPU a call (a tenth of the call's) to find no Set-Cookie header in a gateway's answer.
    Empty until a cookie is set: a jar whose last cookie is gone may still say it holds one
    (then httpx sends the calls, as with a cookie)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)

    def __bool__(self) -> bool:
        """Whether the jar may hold a cookie: its domains' table not empty (httpx's walks every
        cookie of the jar through a generator, asked on every call)."""
        return bool(getattr(self.jar, "_cookies", True))


def chat_body(payload: dict[str, Any]) -> dict[str, Any]:
    """The chat/completions body sent for `payload`: a stream's asks for the usage chunk (the
    call's cost) besides the job's own stream options."""
    if not payload.get("stream"):
        return payload
    return {**payload, "stream_options": {**(payload.get("stream_options") or {}), "include_usage": True}}


class _StreamAssembler:
    """Joins SSE chunks into one Completion: each choice's content, tool calls by index and
    log probabilities (choices by their `index`), usage, TTFT."""

    def __init__(self, model: str, started: float) -> None:
        self.model = model
        self.started = started
        self.choices: dict[int, _ChoiceState] = {}
        self.usage: dict[str, Any] | None = None
        self.ttft: float | None = None
        self.done = False
        self.fresh: list[Any] = []  # the last chunk's choices

    def feed(self, data: str) -> bool:
        """Take one event's data; True once the stream says [DONE]."""
        self.fresh = []
        if data.strip() == "[DONE]":
            self.done = True
            return True
        chunk = _json(data, "stream chunk")
        if not isinstance(chunk, dict):
            raise errors.MalformedResponseError("stream chunk is not a JSON object")
        if chunk.get("error"):
            raise _stream_error(chunk["error"])
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        self.fresh = chunk.get("choices") or []
        for choice in self.fresh:
            index = choice.get("index", 0)
            state = self.choices.setdefault(index if isinstance(index, int) else 0, _ChoiceState())
            if state.feed(choice) and self.ttft is None:
                self.ttft = time.perf_counter() - self.started
        return False

    def finish(self, latency: float, headers: httpx.Headers) -> Completion:
        if not self.done:
            raise errors.MalformedResponseError("stream ended before [DONE]")
        usage, cost, credits = _usage(self.usage)
        choices = [self.choices[i].choice(i) for i in sorted(self.choices)] or [Choice(index=0, content="")]
        return Completion(
            model=self.model,
            **_answer_of(choices),
            latency_s=latency,
            usage=usage,
            cost=cost,
            cost_source="gateway" if cost is not None else "unknown",
            credits_remaining=credits,
            ttft_s=self.ttft,
            rate_limits=rate_limit_snapshot(headers),
        )


class _ChoiceState:
    """One streamed choice as its deltas arrive."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] = {}

    def feed(self, choice: dict[str, Any]) -> bool:
        """Take one chunk's piece of this choice; True when it carried output (content or a call)."""
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        logprobs = choice.get("logprobs")
        for key, entries in (logprobs if isinstance(logprobs, dict) else {}).items():
            if isinstance(entries, list):
                self.logprobs.setdefault(key, []).extend(entries)
        delta = choice.get("delta") or {}
        output = False
        if delta.get("content"):
            output = True
            self.content.append(delta["content"])
        for piece in delta.get("tool_calls") or []:
            output = True
            call = self.tool_calls.setdefault(
                piece.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] = piece.get("id") or call["id"]
            fn = piece.get("function") or {}
            call["function"]["name"] += fn.get("name") or ""
            call["function"]["arguments"] += fn.get("arguments") or ""
        if delta.get("function_call"):
            fc = self.function_call = self.function_call or {"name": "", "arguments": ""}
            fc["name"] += delta["function_call"].get("name") or ""
            fc["arguments"] += delta["function_call"].get("arguments") or ""
        return output

    def choice(self, index: int) -> Choice:
        return Choice(
            index=index,
            content="".join(self.content) if self.content or not (self.tool_calls or self.function_call) else None,
            tool_calls=[self.tool_calls[i] for i in sorted(self.tool_calls)] or None,
            function_call=self.function_call,
            finish_reason=self.finish_reason,
            logprobs=self.logprobs or None,
        )


def _answer_of(choices: list[Choice]) -> dict[str, Any]:
    """Answer fields for `choices` (in index order): choice 0's content at the top, and every
    choice under `choices` when there are several or they carry log probabilities."""
    first = choices[0]
    several = len(choices) > 1 or any(c.logprobs is not None for c in choices)
    return {
        "content": first.content,
        "tool_calls": first.tool_calls,
        "function_call": first.function_call,
        "finish_reason": first.finish_reason,
        "choices": choices if several else None,
    }


def _completion(body: Any, model: str, latency: float, headers: Mapping[str, str]) -> Completion:
    try:
        raw = sorted(body["choices"], key=lambda c: c.get("index", 0) if isinstance(c.get("index"), int) else 0)
        choices = [
            Choice(
                index=c.get("index", i) if isinstance(c.get("index"), int) else i,
                content=c["message"].get("content"),
                tool_calls=c["message"].get("tool_calls"),
                function_call=c["message"].get("function_call"),
                finish_reason=c.get("finish_reason"),
                logprobs=c.get("logprobs") if isinstance(c.get("logprobs"), dict) else None,
            )
            for i, c in enumerate(raw)
        ]
        if not choices:
            raise IndexError
    except (KeyError, IndexError, TypeError, AttributeError, ValidationError):
        raise errors.MalformedResponseError("completion has no choices[0].message") from None
    usage, cost, credits = _usage(body.get("usage"))
    return Completion(
        model=body.get("model") or model,
        **_answer_of(choices),
        latency_s=latency,
        usage=usage,
        cost=cost,
        cost_source="gateway" if cost is not None else "unknown",
        credits_remaining=credits,
        rate_limits=rate_limit_snapshot(headers),
    )


def _usage(raw: Any) -> tuple[Usage | None, float | None, float | None]:
    """Token counts plus AIsa's cost extensions, each None when the server left it out."""
    if not isinstance(raw, dict):
        return None, None, None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(raw.get("total_tokens") or prompt + completion),
    )
    return usage, _number(raw.get("cost")), _number(raw.get("credits_remaining"))


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _json(raw: bytes | str, what: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        snippet = raw[:80] if isinstance(raw, str) else raw[:80].decode("utf-8", "replace")
        raise errors.MalformedResponseError(f"{what} is not JSON: {snippet!r}") from None


def _status_error(response: httpx.Response) -> errors.APIStatusError:
    """Read any of AIsa's three error shapes (or a proxy's HTML page) into a typed error."""
    status = response.status_code
    message, code, request_id = f"HTTP {status}", None, None
    try:
        err = json.loads(response.content).get("error")
    except (ValueError, AttributeError):
        err = None
        text = response.content[:200].decode("utf-8", "replace").strip()
        if text:
            message = f"HTTP {status}, body not JSON: {text}"
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        raw_code = err.get("code")
        # Gemini routes put the HTTP status in `code` and the name in `status`.
        code = err.get("status") if isinstance(raw_code, int) else raw_code
        request_id = err.get("request_id")
    elif isinstance(err, str):
        message = err
    if status == 404 and code not in MODEL_NOT_FOUND:
        # not a model the gateway lacks: a path it lacks (AISA_BASE_URL without /v1?): say which
        message = f"{message} ({response.request.method} {_shown(response.request.url)})"
    wait = None
    if status == 429:
        wait = retry_after(response.headers)
        wait = _retry_delay(err) if wait is None else wait
    return errors.error_for_status(status, message, code=code, request_id=request_id, retry_after=wait)


def _shown(url: httpx.URL) -> str:
    """A URL as it may be logged and stored: no user info, no query."""
    return str(url.copy_with(userinfo=b"", query=None))


def _retry_delay(err: Any) -> float | None:
    """A Gemini 429's `details: [{"@type": "…google.rpc.RetryInfo", "retryDelay": "34s"}]`."""
    details = err.get("details") if isinstance(err, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            return parse_duration(str(detail.get("retryDelay", "")))
    return None


def _stream_error(err: Any) -> errors.AIsaError:
    """An `{"error": …}` event inside a stream: the HTTP status is already 200, the call ran
    (billable, whatever the error says)."""
    if not isinstance(err, dict):
        return errors.ServerError(f"error in stream: {err}")
    message = str(err.get("message") or "error in stream")
    code = err.get("code") if isinstance(err.get("code"), str) else None
    if err.get("type") == "rate_limit_error" or code in ("rate_limit_exceeded", "upstream_rate_limit"):
        return errors.RateLimitError(message, status=429, code=code, billable=True)
    return errors.ServerError(f"error in stream: {message}", code=code)


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """An answer we cannot read is a MalformedResponseError, whatever in it tripped us (a count
    that is not a number, a choice that is not an object): never an exception of another kind."""
    try:
        yield
    except errors.AIsaError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise errors.MalformedResponseError(f"{what} unreadable: {type(exc).__name__}: {exc}") from None


class _transport_errors:
    """Map httpx/aiohttp transport failures to our errors.

    The aiohttp transport maps every aiohttp connection error (a server disconnect too) to
    httpx.ConnectTimeout, so the original aiohttp exception decides timeout vs connection.
    After a stream has started, a dropped connection means the stream was cut.
    Only a failure to connect (refused, DNS, TLS, the connect timeout) is known to have sent
    nothing: every other one may come after the gateway billed the call (`billable`).
    """

    def __init__(self, streaming: bool = False) -> None:
        self.streaming = streaming

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if (
            exc is None
            or isinstance(exc, errors.AIsaError)
            or not isinstance(exc, (httpx.HTTPError, aiohttp.ClientError))
        ):
            return
        cause = exc.__cause__ or exc
        billable = not _never_sent(exc, cause)
        if isinstance(cause, (aiohttp.ServerTimeoutError, TimeoutError)) or (
            isinstance(exc, httpx.TimeoutException) and not isinstance(cause, aiohttp.ClientError)
        ):
            raise errors.TimeoutError(f"no answer in time: {type(cause).__name__}", billable=billable) from exc
        if self.streaming and isinstance(cause, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
            raise errors.MalformedResponseError(f"stream cut: {type(cause).__name__}") from exc
        raise errors.ConnectionError(f"{type(cause).__name__}: {cause}", billable=billable) from exc


def _never_sent(exc: BaseException, cause: BaseException) -> bool:
    """Whether a transport failure happened before the request could reach the gateway: no
    connection was made (aiohttp's connector errors and connect timeout; httpx's own
    ConnectError and ConnectTimeout when no aiohttp error is behind them: the aiohttp transport
    maps a server's disconnect to ConnectTimeout too)."""
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
