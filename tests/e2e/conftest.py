"""Fixtures of the end-to-end tests: `llm-router` processes."""

from __future__ import annotations

import pytest

from harness.processes import WorkerProcess


@pytest.fixture
def workers(tmp_path):
    """Start `llm-router worker` processes: `workers(settings)`; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings, name="w"):
        w = WorkerProcess(settings, tmp_path / f"{name}{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
