"""Deterministic answers and token counts, derived only from the request.

Tests assert on content, so the same request always gets the same answer:
`[<model>] <reply>` where the reply echoes the last user text (or describes the image).
"""

from __future__ import annotations

import base64
import json
from typing import Any

# Every body field but these generation parameters is input, and billed: the worker's own list.
from worker.limits.tokens import NOT_INPUT


def count_tokens(text: str) -> int:
    """A stable approximation, never zero for non-empty text: about 4 ASCII characters a token,
    and each other character a token of its own (a prompt in Chinese is about a token a character)."""
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 3) // 4 + len(text) - ascii_chars


def content_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content or [] if isinstance(p, dict)]


def image_url_of(part: dict[str, Any]) -> str | None:
    if part.get("type") != "image_url":
        return None
    ref = part.get("image_url")
    return ref.get("url") if isinstance(ref, dict) else ref


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def prompt_tokens(body: dict[str, Any], messages: list[dict[str, Any]], image_tokens: int) -> int:
    """What the strictest gateway bills as input: each message's text and every other field of
    it (tool calls, names), each image `image_tokens`, and every body field that is not a
    generation parameter (tools, functions, response_format schemas, stop, prediction, ...)."""
    total = 0
    for message in messages:
        total += 4
        for part in content_parts(message.get("content")):
            if part.get("type") == "image_url":
                total += image_tokens
            elif part.get("type") == "text":
                total += count_tokens(str(part.get("text", "")))
            else:
                total += count_tokens(_json(part))
        rest = {k: v for k, v in message.items() if k not in ("role", "content")}
        if rest:
            total += count_tokens(_json(rest))
    fields = {k: v for k, v in body.items() if k not in NOT_INPUT and k != "messages"}
    if fields:
        total += count_tokens(_json(fields))
    return total


def prefix_within(text: str, limit: int) -> str:
    """The longest start of `text` of at most `limit` tokens (count_tokens)."""
    ascii_chars = others = 0
    for i, char in enumerate(text):
        if char.isascii():
            ascii_chars += 1
        else:
            others += 1
        if (ascii_chars + 3) // 4 + others > limit:
            return text[:i]
    return text


def words_within(text: str, limit: int) -> str:
    """The longest run of whole words `text` starts with of at most `limit` tokens; part of the
    first word when even it is longer (text without spaces: Chinese)."""
    kept = prefix_within(text, limit)
    if len(kept) < len(text) and text[len(kept)] != " " and " " in kept:
        kept = kept[: kept.rindex(" ")]
    return kept


def describe_image(url: str) -> str:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime = header[5:].split(";")[0]
        return f"a {mime} image of {len(base64.b64decode(data))} bytes"
    return f"the image at {url}"


def reply_text(model: str, messages: list[dict[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    texts, images = [], []
    for part in content_parts(last_user.get("content") if last_user else ""):
        url = image_url_of(part)
        if url:
            images.append(describe_image(url))
        elif part.get("type") == "text":
            texts.append(str(part.get("text", "")))
    prompt = " ".join(texts).strip()
    if images:
        return f"[{model}] I see {' and '.join(images)}. You asked: {prompt}"
    return f"[{model}] You said: {prompt}"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def tool_call_for(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function to call (name and JSON arguments) when the request offers tools, else None."""
    if messages and messages[-1].get("role") in ("tool", "function"):
        return None  # the model has its tool result: answer in text
    # (a hostile request's tools may hold anything where an object belongs: read only objects)
    tools = [_obj(t).get("function", {}) for t in _list(body.get("tools")) if isinstance(t, dict)]
    functions = [f for f in tools or _list(body.get("functions")) if isinstance(f, dict)]
    choice = body.get("tool_choice", body.get("function_call", "auto"))
    if not functions or choice == "none":
        return None
    fn = functions[0]
    named = _obj(choice).get("function") or choice
    wanted = _obj(named).get("name")
    if wanted:
        fn = next((f for f in functions if f.get("name") == wanted), fn)
    params = _obj(fn.get("parameters"))
    arg = str((_list(params.get("required")) or list(_obj(params.get("properties"))) or ["input"])[0])
    last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text = " ".join(str(p.get("text", "")) for p in content_parts(last_user.get("content")) if p.get("type") == "text")
    return {"name": fn.get("name", "function"), "arguments": json.dumps({arg: text})}


def json_reply(text: str, schema: Any = None) -> str:
    """The reply as a JSON object (`response_format` JSON mode or a JSON schema): under the
    schema's first string property, else under "answer"."""
    key = "answer"
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if isinstance(properties, dict):
        key = next(
            (
                name
                for name, sub in properties.items()
                if isinstance(sub, dict) and str(sub.get("type", "")).lower() == "string"
            ),
            key,
        )
    return json.dumps({key: text})
