"""Deterministic answers and token counts, derived only from the request.

Tests assert on content, so the same request always gets the same answer:
`[<model>] <reply>` where the reply echoes the last user text (or describes the image).
"""

from __future__ import annotations

import base64
import json
from typing import Any

IMAGE_TOKENS = 85


def count_tokens(text: str) -> int:
    """A stable approximation (about 4 characters a token), never zero for non-empty text."""
    return (len(text) + 3) // 4


def _parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content or [] if isinstance(p, dict)]


def image_url_of(part: dict[str, Any]) -> str | None:
    if part.get("type") != "image_url":
        return None
    ref = part.get("image_url")
    return ref.get("url") if isinstance(ref, dict) else ref


def prompt_tokens(messages: list[dict[str, Any]], tools: Any = None) -> int:
    total = 0
    for message in messages:
        total += 4
        for part in _parts(message.get("content")):
            total += IMAGE_TOKENS if part.get("type") == "image_url" else count_tokens(str(part.get("text", "")))
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def describe_image(url: str) -> str:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        mime = header[5:].split(";")[0]
        return f"a {mime} image of {len(base64.b64decode(data))} bytes"
    return f"the image at {url}"


def reply_text(model: str, messages: list[dict[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    texts, images = [], []
    for part in _parts(last_user.get("content") if last_user else ""):
        url = image_url_of(part)
        if url:
            images.append(describe_image(url))
        elif part.get("type") == "text":
            texts.append(str(part.get("text", "")))
    prompt = " ".join(texts).strip()
    if images:
        return f"[{model}] I see {' and '.join(images)}. You asked: {prompt}"
    return f"[{model}] You said: {prompt}"


def tool_call_for(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function to call (name and JSON arguments) when the request offers tools, else None."""
    if messages and messages[-1].get("role") in ("tool", "function"):
        return None  # the model has its tool result: answer in text
    tools = body.get("tools") or []
    functions = [t.get("function", {}) for t in tools if isinstance(t, dict)] or body.get("functions") or []
    choice = body.get("tool_choice", body.get("function_call", "auto"))
    if not functions or choice == "none":
        return None
    fn = functions[0]
    wanted = (choice.get("function") or choice).get("name") if isinstance(choice, dict) else None
    if wanted:
        fn = next((f for f in functions if f.get("name") == wanted), fn)
    params = fn.get("parameters") or {}
    arg = (params.get("required") or list(params.get("properties") or {}) or ["input"])[0]
    last_user: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    text = " ".join(str(p.get("text", "")) for p in _parts(last_user.get("content")) if p.get("type") == "text")
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
