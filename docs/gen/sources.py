"""The project modules the reference pages are generated from, imported in this one place (by
their install names, `llm_router.*`): when a module moves, only these lines change."""

from __future__ import annotations

from llm_router.worker.calls import errors, policy
from llm_router.worker.contract import settings
from llm_router.worker.observe import exporter, metrics

from llm_router.cli import cli

__all__ = ["cli", "errors", "exporter", "metrics", "policy", "settings"]
