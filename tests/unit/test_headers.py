"""Retry-After and rate-limit headers in every form AIsa and OpenAI send."""

from email.utils import formatdate

import pytest

from worker.calls.headers import parse_duration, parse_wait, rate_limit_snapshot, retry_after

NOW = 1_745_012_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        (str(int(NOW) + 7), 7.0),
        (str(int(NOW) - 5), 0.0),
        (formatdate(NOW + 30, usegmt=True), 30.0),
    ],
)
def test_parse_wait_every_form(value, seconds):
    assert parse_wait(value, NOW) == pytest.approx(seconds, abs=0.001)


@pytest.mark.parametrize("value", [None, "", "soon", "5 parsecs"])
def test_parse_wait_unreadable_is_none(value):
    assert parse_wait(value, NOW) is None


def test_parse_duration_rejects_partial_matches():
    assert parse_duration("1s garbage") is None
    assert parse_duration("2m") == 120


def test_retry_after_prefers_milliseconds_then_seconds_then_reset():
    assert retry_after({"retry-after-ms": "250", "retry-after": "3"}, NOW) == 0.25
    assert retry_after({"retry-after": "3", "x-ratelimit-reset-requests": "9s"}, NOW) == 3
    assert retry_after({"x-ratelimit-reset-requests": str(int(NOW) + 4)}, NOW) == 4
    assert retry_after({"x-ratelimit-reset": "2s"}, NOW) == 2
    assert retry_after({}, NOW) is None


def test_rate_limit_snapshot_reads_the_numeric_headers():
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "587",
        "x-ratelimit-remaining-tokens": "oops",
    }
    assert rate_limit_snapshot(headers) == {"limit-requests": 600, "remaining-requests": 587}
