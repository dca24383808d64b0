"""The base of every object inside a JSON setting (RATE_LIMITS, BUDGETS, ROUTES...): a key it
does not know is refused, naming the key and the nearest known one.

pydantic ignores unknown keys by default, so `RATE_LIMITS='{"gpt-4.1": {"rpn": 600}}'` was a
model with no limit at all. Every model a setting holds derives from StrictModel; a test walks
every JSON-typed setting of worker.contract.settings.Settings and proves an unknown key is refused, so a
setting added later cannot forget it.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class StrictModel(BaseModel):
    # forbid stays as the backstop (an object built from Python kwargs bypassing the check below)
    # defer_build: built when a setting first holds one, not at import (a CLI verb's start-up)
    model_config = ConfigDict(extra="forbid", defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = known_keys(cls)
            unknown = [k for k in data if k not in known]
            if unknown:
                raise ValueError("; ".join(unknown_key(str(k), known) for k in unknown))
        return data


def known_keys(cls: type[BaseModel]) -> list[str]:
    """The keys an object of `cls` takes: its fields' names (and aliases)."""
    names = [field.alias or name for name, field in cls.model_fields.items()]
    return names + [name for name in cls.model_fields if name not in names]


def unknown_key(key: str, known: list[str]) -> str:
    """`unknown key "rpn": did you mean "rpm"? (keys: rpm, tpm)`"""
    near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f': did you mean "{near[0]}"?' if near else ""
    return f'unknown key "{key}"{hint} (keys: {", ".join(known)})'
