"""Producers: hand chat, vision and compare jobs to llm-router workers through Redis."""

from .api import JobRejected, Producer, ResultTimeout

__all__ = ["JobRejected", "Producer", "ResultTimeout"]
