"""Gemini's native format (`POST models/{model}:generateContent`, aisa-wire.md "Gemini native").

`request_body` translates the OpenAI-style payload the worker builds into Gemini's body;
`answer_fields` reads Gemini's answer back into OpenAI's names. What has no translation raises
ValueError saying what: tools and functions (Gemini declares functions in another shape, and
AIsa documents none), tool-call and tool-result messages, and http(s) image URLs (AIsa documents
only inline images). The job contract runs `request_body` on a `gemini_native` job, so such a
job is refused before it is enqueued. Pure functions: nothing of the project is imported here.
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
}
_NOT_TRANSLATED = ("tools", "tool_choice", "functions", "function_call")
_FILTERED = ("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY")
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length"} | dict.fromkeys(_FILTERED, "content_filter")


def is_gemini(model: str) -> bool:
    return model.lower().startswith("gemini")


def request_body(payload: dict[str, Any]) -> dict[str, Any]:
    """`contents` (roles user/model), `systemInstruction` and `generationConfig` for `payload`
    (`messages` plus OpenAI parameters; `model` and `stream` are not part of the body)."""
    if given := [k for k in _NOT_TRANSLATED if payload.get(k) is not None]:
        raise ValueError(f"{', '.join(given)} cannot be sent natively (tools are chat/completions only)")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, message in enumerate(payload["messages"]):
        role = message.get("role")
        if role in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            raise ValueError(f"messages[{i}]: tool calls and tool results cannot be sent natively")
        parts = [_part(p, i) for p in _content_parts(message.get("content"))]
        if role == "system":
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
    if config:
        body["generationConfig"] = config
    return body


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
    and `model` of a generateContent answer. ValueError (or TypeError) when it is unreadable."""
    fields: dict[str, Any] = {"usage": _usage(body.get("usageMetadata")), "model": body.get("modelVersion")}
    candidates = body.get("candidates")
    if not candidates:
        if not (body.get("promptFeedback") or {}).get("blockReason"):
            raise ValueError("the answer has no candidates")
        return fields | {"content": None, "finish_reason": "content_filter"}  # the prompt was blocked
    first = candidates[0]
    parts = (first.get("content") or {}).get("parts") or []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    reason = first.get("finishReason")
    finish = _FINISH.get(reason) or (str(reason).lower() if reason else None)
    return fields | {"content": "".join(texts) if texts else None, "finish_reason": finish}


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
