"""Named routes: a job's model `route:<name>` picks its models from configuration.

A route is a list of models tried in order (`order: "listed"`) or cheapest first (`order:
"cost"`), with optional rules on the request choosing another list: the first rule whose
conditions all hold (images present or not, the prompt's length in characters) gives the
models, else the route's own. The list is the job's chain (its own `fallbacks`, if it gave
any, are tried after it): `worker.calls.routing.walk_chain` skips a model whose circuit is open or
whose next rate-limit slot is past the job's wait, so a cost-ordered route starts with the
cheapest healthy model and falls back up the list.

Built in (the AIsa skill's MODEL_MAP, each falling back to its default `gpt-4.1`, plus its
cost-optimised `smart_route` and a cost-ordered `cheap`); `ROUTES` adds routes or replaces
built-in ones by name.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from .models import CompareJob, JobBase, ModelName, RoutedJob, shown
from .pricing import PUBLISHED_PRICES
from .setting_types import ConfigError
from .strict import StrictModel

if TYPE_CHECKING:
    from .settings import Settings

PREFIX = "route:"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _route_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"route name {shown(name)} must be 1-64 characters of letters, digits and _ . -")
    return name


RouteName = Annotated[str, AfterValidator(_route_name)]


def _plain_models(models: list[str]) -> list[str]:
    for model in models:
        if model.startswith(PREFIX):
            raise ValueError(f"{shown(model)}: a route lists models, not other routes")
    if len(set(models)) != len(models):
        raise ValueError("lists a model twice")
    return models


Models = Annotated[list[ModelName], Field(min_length=1, max_length=16), AfterValidator(_plain_models)]


class RouteRule(StrictModel):
    """When every condition given holds, the route uses `models` instead of its own list."""

    images: bool | None = Field(None, description="the request carries images (true) or none (false)")
    min_prompt_chars: int | None = Field(None, ge=0, description="the prompt's text is at least this long")
    max_prompt_chars: int | None = Field(None, ge=0, description="the prompt's text is at most this long")
    models: Models

    @model_validator(mode="after")
    def _has_condition(self) -> RouteRule:
        if self.images is None and self.min_prompt_chars is None and self.max_prompt_chars is None:
            raise ValueError("a rule needs a condition: images, min_prompt_chars or max_prompt_chars")
        if (
            self.min_prompt_chars is not None
            and self.max_prompt_chars is not None
            and self.min_prompt_chars > self.max_prompt_chars
        ):
            raise ValueError("min_prompt_chars is over max_prompt_chars: no prompt could match")
        return self

    def matches(self, images: bool, prompt_chars: int) -> bool:
        return (
            (self.images is None or self.images == images)
            and (self.min_prompt_chars is None or prompt_chars >= self.min_prompt_chars)
            and (self.max_prompt_chars is None or prompt_chars <= self.max_prompt_chars)
        )


class Route(StrictModel):
    models: Models
    order: Literal["listed", "cost"] = "listed"
    rules: list[RouteRule] = Field([], max_length=16)

    def all_models(self) -> set[str]:
        return {*self.models, *(m for rule in self.rules for m in rule.models)}


BUILTIN_ROUTES: dict[str, Route] = {
    **{
        task: Route(models=list(dict.fromkeys([model, "gpt-4.1"])))
        for task, model in {
            "code": "deepseek-coder",
            "creative": "claude-3-opus",
            "fast": "gpt-3.5-turbo",
            "vision": "gpt-4o",
            "chinese": "qwen-max",
            "reasoning": "gpt-4.1",
        }.items()
    },
    # the skill's smart_route: a short message (under 50 characters) to the fast, cheap model
    "smart": Route(models=["gpt-4.1"], rules=[RouteRule(max_prompt_chars=49, models=["gpt-3.5-turbo"])]),
    "cheap": Route(models=["gemini-2.0-flash", "deepseek-v3", "qwen-max", "gpt-4.1", "claude-3-sonnet"], order="cost"),
}


def table(settings: Settings) -> dict[str, Route]:
    """Every route a job may name: the built-in ones with ROUTES over them."""
    return {**BUILTIN_ROUTES, **settings.routes}


def route_name(model: str) -> str | None:
    """The route a job's model names (`route:cheap` -> `cheap`), None for a model."""
    return model[len(PREFIX) :] if model.startswith(PREFIX) else None


def unit_price(model: str, settings: Settings) -> float | None:
    """USD per 1K tokens for ranking: PRICES (mean of input and output), else the skill's
    published price of the model itself (worker.contract.pricing's table, by exact id here)."""
    price = settings.prices.get(model)
    if price is not None:
        return (price.input + price.output) / 2
    return PUBLISHED_PRICES.get(model)


def check(settings: Settings) -> None:
    """What the settings' own validation cannot see (start-up): every model of a cost-ordered
    route must have a price. A ConfigError naming ROUTES and the fix."""
    for name, route in table(settings).items():
        if route.order != "cost":
            continue
        unpriced = sorted(m for m in route.all_models() if unit_price(m, settings) is None)
        if unpriced:
            raise ConfigError(
                f"ROUTES: route {name!r} is ordered by cost but has no price for {', '.join(unpriced)}: "
                'add it to PRICES (e.g. PRICES=\'{"my-model": {"input": 0.001, "output": 0.002}}\') '
                'or use "order": "listed"'
            )


def problem(job: JobBase, settings: Settings, all_known: bool = True) -> tuple[str, str] | None:
    """(field, message) when the job names a route it may not: an unknown one, or any in a
    compare job. `all_known`: these settings know every route (a worker; a producer only
    when ROUTES is set where it runs), else a name they do not know is left to the worker."""
    if isinstance(job, CompareJob):
        named = [m for m in job.models if m.startswith(PREFIX)]
        if named:
            return "models", f"{shown(named[0])}: a compare job names models; routes are for chat and vision jobs"
        return None
    name = route_name(job.model) if isinstance(job, RoutedJob) else None
    if name is None:
        return None
    known = table(settings)
    if name in known or not all_known:
        return None
    return "model", (f"no route named {shown(name)}: known routes are {', '.join(sorted(known))}; define it in ROUTES")


def request_facts(messages: list[dict[str, Any]]) -> tuple[bool, int]:
    """(images present, characters of prompt text) of the request's messages."""
    images, chars = False, 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
            continue
        for part in content or ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                images = True
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                chars += len(part["text"])
    return images, chars


def choose(route: Route, messages: list[dict[str, Any]], settings: Settings) -> list[str]:
    """The route's models for this request, in the order to try them."""
    images, chars = request_facts(messages)
    models = next((rule.models for rule in route.rules if rule.matches(images, chars)), route.models)
    if route.order == "cost":
        # sorted() is stable: models of the same price keep their listed order
        return sorted(models, key=lambda m: unit_price(m, settings) or 0.0)
    return list(models)


def chain_of(
    job: RoutedJob, messages: list[dict[str, Any]], settings: Settings, default: list[str]
) -> tuple[str | None, list[str]]:
    """(the route's name, the models to try) for a job naming a route; (None, `default`) for
    one naming a model. A route's own list comes first, then the job's `fallbacks` if any."""
    name = route_name(job.model)
    if name is None:
        return None, default
    route = table(settings).get(name)
    if route is None:  # bounds.problem refuses such a job first; a clear error all the same
        raise ValueError(f"no route named {shown(name)}")
    return name, list(dict.fromkeys([*choose(route, messages, settings), *(job.fallbacks or [])]))
