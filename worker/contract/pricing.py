"""Whose number the cost is: the gateway's bill when it sends one, else our price table, else unknown."""

from __future__ import annotations

from .models import CostSource, Usage
from .setting_types import Price


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


# The skill's published prices per model family (USD per 1K tokens, "approximate", one figure for
# input and output): the built-in worst-case table of budgets (worker.limits.budgets), and what a
# cost-ordered route ranks by (worker.contract.routes). A model id is of a
# family when it is the family's id or starts with it and a dash (`gpt-4o-mini` is priced as
# `gpt-4o`: an over-estimate, never an under-one, for the cheaper variants).
PUBLISHED_PRICES: dict[str, float] = {
    "gpt-4.1": 0.01,
    "gpt-4o": 0.01,
    "claude-3-sonnet": 0.01,
    "gemini-2.0-flash": 0.001,
    "qwen-max": 0.005,
    "deepseek-v3": 0.002,
}


def table_price(model: str, prices: dict[str, Price]) -> Price | None:
    """The model's price from the tables: PRICES, else its family's published price, else None."""
    if model in prices:
        return prices[model]
    for family, usd in PUBLISHED_PRICES.items():
        if model == family or model.startswith(family + "-"):
            return Price(input=usd, output=usd)
    return None
