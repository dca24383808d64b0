"""The project modules the reference pages are generated from, imported in this one place (by
their install names, `llm_router.*`): when a module moves, only these lines change."""

from __future__ import annotations

from llm_router.worker import errors, exporter, metrics, policy, settings

from llm_router.cli import cli

__all__ = ["cli", "errors", "exporter", "metrics", "policy", "settings"]
