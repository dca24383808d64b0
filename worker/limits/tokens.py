"""How many tokens a request may be billed, two ways:

- `input_bound`, for budgets (worker.limits.budgets): an upper bound whatever the gateway's tokenizer.
  Every byte of the request body as sent (compact JSON, UTF-8: messages, tools, functions,
  response_format schemas, any other field) counts as a token, except the URL or data of an
  image, which counts IMAGE_TOKENS_BOUND instead. No tokenizer makes more tokens than a text
  has bytes (byte-level BPE and SentencePiece with byte fallback emit at most one token per
  byte), and the JSON's own quotes, keys and commas more than pay for a chat template's few
  tokens per message. A prompt in Chinese is about one token a character: three bytes here.
- `input_estimate`, for the rate limiter's token booking (TPM): a realistic figure. An upper
  bound there would book four times the tokens of an English prompt: a TPM-limited model would
  run at a quarter of its rate while calls are in flight, and a request well within the TPM
  limit would be refused as too large. Booking too little costs at most a 429, which the
  limiter already handles; reserving too little of a budget spends money that is not there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

# The most prompt tokens any model of the catalogue (sim/catalog.py, the skill's models) bills
# for one image: gpt-4o-mini at high detail, 2,833 tokens plus 5,667 per 512 px tile (OpenAI's
# vision guide, "Calculating costs"), and a high-detail image is at most 8 tiles (scaled to fit
# 2048 x 2048, then its short side to 768 px: 768 x 2048 is 2 x 4 tiles): 2,833 + 8 x 5,667.
# The others bill less: gpt-4o and gpt-4.1 85 + 8 x 170 = 1,445; Claude about 1,600 (w x h / 750,
# images over ~1.15 megapixels scaled down); Gemini 2.0 258 per 768 px tile of an image scaled
# to fit 3,072 x 3,072, at most 16 tiles = 4,128; Gemini 1.5 258.
IMAGE_TOKENS_BOUND = 2_833 + 8 * 5_667
# What an image usually costs, for the token booking (OpenAI: 765 for 1024 x 1024 at high detail).
IMAGE_TOKENS_TYPICAL = 1000
# Parameters that steer or label the answer rather than feed the model: not in the realistic
# estimate (they are in the bound: a few bytes, and a gateway may bill anything it is sent).
NOT_INPUT = frozenset(
    {
        "model", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "seed",
        "frequency_penalty", "presence_penalty", "stream", "stream_options", "logprobs",
        "top_logprobs", "user", "safety_identifier", "metadata", "store", "service_tier",
        "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "reasoning_effort",
        "verbosity", "modalities", "parallel_tool_calls",
    }
)  # fmt: skip


def wire_json(value: Any) -> bytes:
    """`value` as a JSON body is sent: compact, UTF-8, non-ASCII unescaped (httpx's bytes, but for
    a float's exponent: `1e16`, not `1e+16`; the JSON's quotes and keys more than pay for it).
    orjson; the standard library only for what orjson cannot write (an integer over 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def input_bound(body: dict[str, Any], image_tokens: int = IMAGE_TOKENS_BOUND) -> int:
    """The most input tokens a gateway can bill for `body`, a chat/completions body or Gemini's
    generateContent body exactly as it is sent: its bytes, each image at `image_tokens`. The one
    byte-walker: the simulator bills its `bill_at_bound` calls with it too (sim.answers)."""
    images = list(image_refs(body))
    left_out = sum(len(wire_json(ref)) - 2 for ref in images)  # the string's bytes, not its quotes
    return len(wire_json(body)) - left_out + image_tokens * len(images)


def input_estimate(payload: dict[str, Any]) -> int:
    """A realistic count of the input tokens of an OpenAI-style payload: about four ASCII
    characters a token, one token per three bytes of anything else (a CJK character), each
    image IMAGE_TOKENS_TYPICAL."""
    body = wire_json({k: v for k, v in payload.items() if k not in NOT_INPUT})
    images = list(image_refs(payload))
    body_len = len(body) - sum(len(wire_json(ref)) - 2 for ref in images)
    non_ascii = len(body) - len(body.translate(None, _HIGH_BYTES))
    return (body_len - non_ascii) // 4 + non_ascii // 3 + IMAGE_TOKENS_TYPICAL * len(images)


_HIGH_BYTES = bytes(range(128, 256))


def image_refs(body: dict[str, Any]) -> Iterator[str]:
    """The URL or base64 data of each image of a body: OpenAI's `image_url` content parts
    (`{"url": ...}` or a plain string), Gemini's `inline_data` parts."""
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                if isinstance(url, str):
                    yield url
    system = body.get("systemInstruction")
    for content in [*(body.get("contents") or ()), *([system] if isinstance(system, dict) else [])]:
        for part in content.get("parts") or () if isinstance(content, dict) else ():
            inline = (part.get("inline_data") or part.get("inlineData")) if isinstance(part, dict) else None
            if isinstance(inline, dict) and isinstance(inline.get("data"), str):
                yield inline["data"]
