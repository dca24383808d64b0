"""The simulator's model list and price table (USD per 1K tokens, of the order the skill page gives),
and the most prompt tokens each model bills for one image."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    id: str
    owned_by: str
    input_per_1k: float
    output_per_1k: float
    context: int = 128_000
    vision: bool = False
    # the most prompt tokens one image is billed (None: no published figure, billed IMAGE_TOKENS_MAX)
    image_tokens: int | None = None
    # OpenAI's reasoning models take max_completion_tokens and refuse max_tokens (400)
    refuses_max_tokens: bool = False


# The providers' published image costs at their largest (high detail, the biggest image they keep):
# OpenAI (vision guide, "Calculating costs"): a base plus a figure per 512 px tile, at most 8 tiles
# (scaled to fit 2048 x 2048, then the short side to 768 px: 768 x 2048); gpt-4o-mini's figures are
# 33 times gpt-4o's (the same dollars an image). Anthropic: w x h / 750, about 1,600 at the largest
# size kept. Gemini 2.0: 258 per 768 px tile, images scaled to fit 3072 x 3072 (16 tiles); 1.5: 258.
OPENAI_IMAGE = 85 + 8 * 170
OPENAI_MINI_IMAGE = 2_833 + 8 * 5_667
CLAUDE_IMAGE = 1_600


MODELS: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        ModelSpec("gpt-4.1", "openai", 0.002, 0.008, 1_000_000, vision=True, image_tokens=OPENAI_IMAGE),
        ModelSpec("gpt-4o", "openai", 0.0025, 0.01, vision=True, image_tokens=OPENAI_IMAGE),
        ModelSpec("gpt-4o-mini", "openai", 0.00015, 0.0006, vision=True, image_tokens=OPENAI_MINI_IMAGE),
        ModelSpec("gpt-3.5-turbo", "openai", 0.0005, 0.0015, 16_385),
        ModelSpec("o1", "openai", 0.015, 0.06, 200_000, refuses_max_tokens=True),
        ModelSpec("o1-mini", "openai", 0.003, 0.012, refuses_max_tokens=True),
        ModelSpec("o3-mini", "openai", 0.0011, 0.0044, 200_000, refuses_max_tokens=True),
        ModelSpec("claude-3-5-sonnet", "anthropic", 0.003, 0.015, 200_000, vision=True, image_tokens=CLAUDE_IMAGE),
        ModelSpec("claude-3-opus", "anthropic", 0.015, 0.075, 200_000, vision=True, image_tokens=CLAUDE_IMAGE),
        ModelSpec("claude-3-sonnet", "anthropic", 0.003, 0.015, 200_000, vision=True, image_tokens=CLAUDE_IMAGE),
        ModelSpec("gemini-2.0-flash", "google", 0.0001, 0.0004, 1_000_000, vision=True, image_tokens=16 * 258),
        ModelSpec("gemini-1.5-pro", "google", 0.00125, 0.005, 2_000_000, vision=True, image_tokens=258),
        ModelSpec("gemini-1.5-flash", "google", 0.000075, 0.0003, 1_000_000, vision=True, image_tokens=258),
        ModelSpec("qwen-max", "alibaba", 0.0016, 0.0064, 32_768),
        ModelSpec("qwen-plus", "alibaba", 0.0004, 0.0012),
        ModelSpec("qwen2.5-72b-instruct", "alibaba", 0.0009, 0.0009, 32_768),
        ModelSpec("deepseek-chat", "deepseek", 0.00027, 0.0011, 64_000),
        ModelSpec("deepseek-coder", "deepseek", 0.00027, 0.0011, 64_000),
        ModelSpec("deepseek-v3", "deepseek", 0.00027, 0.0011, 64_000),
        ModelSpec("deepseek-r1", "deepseek", 0.00055, 0.0022, 64_000),
        ModelSpec("grok-2", "xai", 0.002, 0.01, 131_072),
        ModelSpec("grok-beta", "xai", 0.005, 0.015, 131_072),
        # A deliberately small window, so context-length handling can be exercised.
        ModelSpec("tiny-context", "sim", 0.0001, 0.0001, 64),
        # A model the gateway does not bill (a self-hosted one): budgets must still let it run.
        ModelSpec("free-model", "sim", 0.0, 0.0),
    )
}

# What the strictest gateway bills for an image: the most any model of the catalogue does.
IMAGE_TOKENS_MAX = max(m.image_tokens or 0 for m in MODELS.values())


def image_tokens(spec: ModelSpec) -> int:
    return IMAGE_TOKENS_MAX if spec.image_tokens is None else spec.image_tokens


def price(spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
    return round((prompt_tokens * spec.input_per_1k + completion_tokens * spec.output_per_1k) / 1000, 10)
