"""Whose number the cost is: the gateway's bill when it sends one, else our price table, else unknown."""

from __future__ import annotations

from .models import CostSource, Usage
from .settings import Price


def cost_of(
    model: str, gateway_cost: float | None, usage: Usage | None, prices: dict[str, Price]
) -> tuple[float | None, CostSource]:
    if gateway_cost is not None:
        return gateway_cost, "gateway"
    price = prices.get(model)
    if price is None or usage is None:
        return None, "unknown"
    cost = (usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1000
    return round(cost, 10), "price_table"
