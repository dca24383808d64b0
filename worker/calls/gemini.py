"""Gemini's native format (`POST models/{model}:generateContent`, aisa-wire.md "Gemini native").

`request_body` translates the OpenAI-style payload the worker builds into Gemini's body;
`answer_fields` reads Gemini's answer back into OpenAI's names. What has no translation raises
ValueError saying what: tools and functions (Gemini declares functions in another shape, and
AIsa documents none), tool-call and tool-result messages, http(s) image URLs (AIsa documents
only inline images), and every OpenAI parameter without a generationConfig equivalent
(logprobs, logit_bias, audio, store, metadata, ...: anything not in _CONFIG or _TRANSLATED).
The job contract runs `request_body` on a `gemini_native` job, so such a job is refused before
it is enqueued. Pure functions: nothing of the project is imported here.
"""

from __future__ import annotations

from typing import Any

_CONFIG = {
    "temperature": "temperature",
    "max_tokens": "maxOutputTokens",
    "top_p": "topP",
    "stop": "stopSequences",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "seed": "seed",
    "n": "candidateCount",
}
# Payload keys translated other than through _CONFIG (or not part of the body: a streamed job
# uses chat/completions, so `stream` and `stream_options` never reach Gemini).
_TRANSLATED = {"messages", "model", "stream", "stream_options", "max_completion_tokens", "response_format"}
_TOOLS = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls")
# JSON Schema keywords Gemini's responseSchema (an OpenAPI 3.0 subset) reads the same way.
_SCHEMA_KEYS = {
    "type", "format", "title", "description", "nullable", "enum", "properties", "required", "items",
    "minItems", "maxItems", "minimum", "maximum", "anyOf", "propertyOrdering",
}  # fmt: skip
_SCHEMA_TYPES = ("string", "number", "integer", "boolean", "array", "object")
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(_FILTERED, "content_filter")


def is_gemini(model: str) -> bool:
    return model.lower().startswith("gemini")


def request_body(payload: dict[str, Any]) -> dict[str, Any]:
    """`contents` (roles user/model), `systemInstruction` and `generationConfig` for `payload`
    (`messages` plus OpenAI parameters; `model` and `stream` are not part of the body)."""
    if given := [k for k in _TOOLS if payload.get(k) is not None]:
        raise ValueError(f"{', '.join(given)} cannot be sent natively (tools are chat/completions only)")
    untranslated = [
        k
        for k, v in payload.items()
        if v is not None and k not in _CONFIG and k not in _TRANSLATED and not (k == "modalities" and v == ["text"])
    ]
    if untranslated:
        raise ValueError(
            f"{', '.join(untranslated)} cannot be sent natively (Gemini's generateContent has no equivalent): "
            "leave them out, or use chat/completions"
        )
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(payload["messages"]):
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise ValueError(f"messages[{i}]: tool calls and tool results cannot be sent natively")
        parts = [_part(p, i) for p in _content_parts(message.get("content"))]
        if role in ("system", "developer"):
            system += parts
        elif parts:
            contents.append({"role": "model" if role == "assistant" else "user", "parts": parts})
    if not contents:
        raise ValueError("Gemini needs a user or assistant message besides the system prompt")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    config = {_CONFIG[k]: payload[k] for k in _CONFIG if payload.get(k) is not None}
    if isinstance(config.get("stopSequences"), str):
        config["stopSequences"] = [config["stopSequences"]]
    caps = [t for t in (payload.get("max_tokens"), payload.get("max_completion_tokens")) if t is not None]
    if caps:
        config["maxOutputTokens"] = min(caps)
    config.update(_response_format(payload.get("response_format")))
    if config:
        body["generationConfig"] = config
    return body


def _response_format(fmt: Any) -> dict[str, Any]:
    """`responseMimeType` (and `responseSchema`) for OpenAI's response_format."""
    if not fmt or fmt.get("type") == "text":
        return {}
    config: dict[str, Any] = {"responseMimeType": "application/json"}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema is not None:
            config["responseSchema"] = _schema(schema, "response_format.json_schema.schema")
    return config


def _schema(node: Any, where: str) -> Any:
    """A JSON Schema as Gemini's responseSchema: the same keywords, types in upper case, a
    `["x", "null"]` type as `nullable`; `additionalProperties: false` (OpenAI's strict mode asks
    for it) dropped. Anything else ($ref, oneOf, patterns, ...) is refused: Gemini would not
    read it the same way."""
    if not isinstance(node, dict):
        raise ValueError(f"{where} must be a JSON Schema object")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "additionalProperties" and value is False:
            continue
        if key not in _SCHEMA_KEYS:
            raise ValueError(f"{where}: {key!r} has no Gemini responseSchema equivalent")
        if key == "type":
            types = value if isinstance(value, list) else [value]
            named = [t for t in types if t != "null"]
            if len(named) != 1 or named[0] not in _SCHEMA_TYPES:
                raise ValueError(f"{where}: type {value!r} has no Gemini responseSchema equivalent")
            out["type"] = named[0].upper()
            if "null" in types:
                out["nullable"] = True
        elif key in ("properties", "anyOf") and not isinstance(value, dict if key == "properties" else list):
            raise ValueError(f"{where}.{key} is not a JSON Schema {key} {'object' if key == 'properties' else 'list'}")
        elif key == "properties":
            out[key] = {name: _schema(sub, f"{where}.properties.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _schema(value, f"{where}.items")
        elif key == "anyOf":
            out[key] = [_schema(sub, f"{where}.anyOf[{i}]") for i, sub in enumerate(value)]
        else:
            out[key] = value
    return out


def _content_parts(content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _part(part: dict[str, Any], i: int) -> dict[str, Any]:
    if part.get("type") == "text":
        return {"text": part["text"]}
    ref = part.get("image_url")
    url = str(ref.get("url") if isinstance(ref, dict) else ref)
    header, comma, data = url.partition(",")
    if not (header.startswith("data:") and header.endswith(";base64") and comma):
        raise ValueError(
            f"messages[{i}]: image {url[:60]!r}: Gemini native takes images inline; "
            "pass a data URL or a local file, not an http(s) URL"
        )
    return {"inline_data": {"mime_type": header[5:].removesuffix(";base64"), "data": data}}


def answer_fields(body: dict[str, Any]) -> dict[str, Any]:
    """`content`, `finish_reason` (OpenAI's: STOP stop, MAX_TOKENS length, SAFETY and the other
    filters content_filter, anything else Gemini's name in lower case), `usage` (OpenAI's keys)
    and `model` of a generateContent answer; with several candidates (candidateCount), `choices`
    too (each with `index`, `content`, `finish_reason`; the top-level fields are choice 0's).
    ValueError (or TypeError) when it is unreadable."""
    fields: dict[str, Any] = {"usage": _usage(body.get("usageMetadata")), "model": body.get("modelVersion")}
    candidates = body.get("candidates")
    if not candidates:
        if not (body.get("promptFeedback") or {}).get("blockReason"):
            raise ValueError("the answer has no candidates")
        return fields | {"content": None, "finish_reason": "content_filter"}  # the prompt was blocked
    choices = sorted((_candidate(c, i) for i, c in enumerate(candidates)), key=lambda c: c["index"])
    fields |= {"content": choices[0]["content"], "finish_reason": choices[0]["finish_reason"]}
    return fields | {"choices": choices} if len(choices) > 1 else fields


def _candidate(candidate: dict[str, Any], i: int) -> dict[str, Any]:
    parts = (candidate.get("content") or {}).get("parts") or []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    reason: Any = candidate.get("finishReason")
    finish = _FINISH.get(reason) or (str(reason).lower() if reason else None)
    index = candidate.get("index")
    return {
        "index": index if isinstance(index, int) else i,
        "content": "".join(texts) if texts else None,
        "finish_reason": finish,
    }


def _usage(meta: Any) -> dict[str, int] | None:
    if not isinstance(meta, dict):
        return None
    prompt = int(meta.get("promptTokenCount") or 0)
    # thinking models count their thoughts apart; OpenAI counts reasoning as completion tokens
    completion = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + completion),
    }
