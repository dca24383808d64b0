"""The simulator's model list and price table (USD per 1K tokens, of the order the skill page gives)."""

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


MODELS: dict[str, ModelSpec] = {
    m.id: m
    for m in (
        ModelSpec("gpt-4.1", "openai", 0.002, 0.008, 1_000_000, vision=True),
        ModelSpec("gpt-4o", "openai", 0.0025, 0.01, vision=True),
        ModelSpec("gpt-4o-mini", "openai", 0.00015, 0.0006, vision=True),
        ModelSpec("gpt-3.5-turbo", "openai", 0.0005, 0.0015, 16_385),
        ModelSpec("o1", "openai", 0.015, 0.06, 200_000),
        ModelSpec("o1-mini", "openai", 0.003, 0.012),
        ModelSpec("o3-mini", "openai", 0.0011, 0.0044, 200_000),
        ModelSpec("claude-3-5-sonnet", "anthropic", 0.003, 0.015, 200_000, vision=True),
        ModelSpec("claude-3-opus", "anthropic", 0.015, 0.075, 200_000, vision=True),
        ModelSpec("claude-3-sonnet", "anthropic", 0.003, 0.015, 200_000, vision=True),
        ModelSpec("gemini-2.0-flash", "google", 0.0001, 0.0004, 1_000_000, vision=True),
        ModelSpec("gemini-1.5-pro", "google", 0.00125, 0.005, 2_000_000, vision=True),
        ModelSpec("gemini-1.5-flash", "google", 0.000075, 0.0003, 1_000_000, vision=True),
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


def price(spec: ModelSpec, prompt_tokens: int, completion_tokens: int) -> float:
    return round((prompt_tokens * spec.input_per_1k + completion_tokens * spec.output_per_1k) / 1000, 10)
