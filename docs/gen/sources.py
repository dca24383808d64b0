"""The project modules the reference pages are generated from, imported in this one place: when
the packages move (an `llm_router.` namespace), only these lines change."""

from __future__ import annotations

from llm_router import cli
from worker import errors, exporter, metrics, policy, settings

__all__ = ["cli", "errors", "exporter", "metrics", "policy", "settings"]
