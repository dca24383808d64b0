"""The retry/fallback policy table and its backoff maths."""

import random

import pytest

from worker.calls.errors import ERROR_CLASSES
from worker.calls.policy import POLICY, Action, action_for, backoff_delay, chain
from worker.contract.settings import Settings


def test_every_upstream_error_class_has_a_stated_action():
    upstream = set(ERROR_CLASSES) - {
        "invalid_job",
        "over_limit",
        "batch_cancelled",
        "batch_expired",
        "budget",
        "internal",
        "error",
    }
    assert upstream <= set(POLICY), upstream - set(POLICY)
    assert action_for("rate_limit") is Action.RETRY_AFTER
    assert {action_for(c) for c in ("server", "timeout", "connection", "malformed")} == {Action.BACKOFF}
    assert action_for("not_found") is Action.NEXT_MODEL and action_for("bad_request") is Action.FAIL
    assert action_for("context_length") is Action.LARGER_CONTEXT
    assert action_for("auth") is Action.STOP_QUEUE and action_for("credits") is Action.PAUSE_QUEUE


@pytest.mark.parametrize("retry", range(8))
def test_backoff_doubles_with_jitter_and_is_capped(retry):
    rng = random.Random(retry)
    delays = [backoff_delay(retry, 1.0, 30.0, rng) for _ in range(200)]
    nominal = min(30.0, 2.0**retry)
    assert all(0.75 * nominal <= d <= min(30.0, 1.25 * nominal) for d in delays)
    assert max(delays) - min(delays) > 0.1 * nominal  # jittered: workers do not retry in step


def test_chain_from_config_default_and_job_override():
    s = Settings(
        fallbacks={"gpt-4.1": ["claude-3-sonnet", "gpt-4.1", "gemini-2.0-flash"]},
        default_fallbacks=["gemini-2.0-flash"],
        _env_file=None,
    )
    assert chain("gpt-4.1", None, s) == ["gpt-4.1", "claude-3-sonnet", "gemini-2.0-flash"]  # no repeats
    assert chain("qwen-max", None, s) == ["qwen-max", "gemini-2.0-flash"]
    assert chain("gpt-4.1", ["deepseek-v3"], s) == ["gpt-4.1", "deepseek-v3"]
    assert chain("gpt-4.1", [], s) == ["gpt-4.1"]  # the job asked for no fallbacks
