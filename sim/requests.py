"""What the stand-in checks of a request before it answers: the body's JSON, the model, the
messages (and their images), OpenAI's parameter types and ranges; its errors (`ApiError`) in
the gateway's shape."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from . import answers
from .catalog import MODELS, ModelSpec

_ERROR_CODES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    402: ("invalid_request_error", "insufficient_credits"),
    403: ("invalid_request_error", "model_not_allowed"),
    404: ("invalid_request_error", "model_not_found"),
    422: ("invalid_request_error", "unsupported_parameter"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("api_error", "internal_error"),
    502: ("upstream_error", "gateway_error"),
    503: ("upstream_error", "upstream_unavailable"),
    504: ("upstream_error", "upstream_timeout"),
}
_CHOICES = {
    "service_tier": ("auto", "default", "flex", "scale", "priority", "fast"),
    "reasoning_effort": ("none", "minimal", "low", "medium", "high", "xhigh", "max"),
    "verbosity": ("low", "medium", "high"),
    "prompt_cache_retention": ("in_memory", "24h"),
}
_OBJECTS = ("audio", "prediction", "web_search_options", "prompt_cache_options", "moderation", "stream_options")


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.type, default_code = _ERROR_CODES.get(status, ("api_error", "error"))
        self.code = code or default_code
        self.headers = headers or {}


def check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise ApiError(400, "'messages' is required", "missing_parameter", "messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "'messages' must be a non-empty array of objects", "invalid_parameter_type", "messages")
    for i, message in enumerate(messages):
        for part in answers.content_parts(message.get("content")):
            url = answers.image_url_of(part)
            if url is not None:
                check_image(url, f"messages[{i}].content")
    return messages


def check_image(url: Any, param: str) -> None:
    if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:")):
        raise ApiError(400, "image_url must be an http(s) URL or a data URL", "invalid_request", param)
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64") or header[5:].split(";")[0] not in (
            "image/jpeg",
            "image/png",
            "image/gif",
            "image/webp",
        ):
            raise ApiError(400, "data URL must be data:image/(jpeg|png|gif|webp);base64,...", "invalid_request", param)
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "Invalid base64 image data", "invalid_request", param) from None


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def bad_param(name: str, what: str) -> ApiError:
    return ApiError(400, f"'{name}' must be {what}", "invalid_parameter_type", name)


def check_params(body: dict[str, Any]) -> None:
    """OpenAI's parameter checks: a 400 naming the first parameter out of its type or range."""
    ranges = {"temperature": (0, 2), "top_p": (0, 1), "frequency_penalty": (-2, 2), "presence_penalty": (-2, 2)}
    for name, (low, high) in ranges.items():
        value = body.get(name)
        if value is not None and (
            not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high
        ):
            raise bad_param(name, f"a number between {low} and {high}")
    integers = {
        "max_tokens": (1, 10**9, "an integer >= 1"),
        "max_completion_tokens": (1, 10**9, "an integer >= 1"),
        "n": (1, 128, "an integer between 1 and 128"),
        "top_logprobs": (0, 20, "an integer between 0 and 20"),
        "seed": (-(2**63), 2**63 - 1, "a 64-bit integer"),
    }
    for name, (low, high, what) in integers.items():
        value = body.get(name)
        if value is not None and (not is_int(value) or not low <= value <= high):
            raise bad_param(name, what)
    for name in ("stream", "logprobs", "parallel_tool_calls", "store"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise bad_param(name, "a boolean")
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise bad_param(name, "a string")
    for name in _OBJECTS:
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise bad_param(name, "an object")
    for name, allowed in _CHOICES.items():
        if body.get(name) is not None and body[name] not in allowed:
            raise bad_param(name, "one of " + ", ".join(allowed))
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        raise ApiError(400, "'top_logprobs' requires 'logprobs' to be true", "invalid_request", "top_logprobs")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise ApiError(
            400, "'stream_options' is only allowed when 'stream' is true", "invalid_request", "stream_options"
        )
    bias = body.get("logit_bias")
    if bias is not None and not (isinstance(bias, dict) and all(is_int(v) and -100 <= v <= 100 for v in bias.values())):
        raise bad_param("logit_bias", "an object of token ids to integers between -100 and 100")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and len(metadata) <= 16 and all(isinstance(v, str) for v in metadata.values())
    ):
        raise bad_param("metadata", "an object of at most 16 string values")
    modalities = body.get("modalities")
    if modalities is not None and not (
        isinstance(modalities, list) and all(m in ("text", "audio") for m in modalities)
    ):
        raise bad_param("modalities", "an array of 'text' and 'audio'")
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise bad_param("response_format", "an object whose type is text, json_object or json_schema")
        if fmt["type"] == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("name"), str):
            raise ApiError(
                400, "'response_format.json_schema.name' is required", "missing_parameter", "response_format"
            )


def spec_of(model: Any) -> ModelSpec:
    if not model:
        raise ApiError(400, "'model' is required", "missing_parameter", "model")
    spec = MODELS.get(model) if isinstance(model, str) else None
    if spec is None:
        raise ApiError(404, f"Model '{model}' is not available", "model_not_found", "model")
    return spec


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON", "json_parse_error") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object", "json_parse_error")
    return body


# ---------------------------------------------------------------- answers
