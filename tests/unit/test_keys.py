"""The Redis key names of worker.contract.keys that are computed, not fixed."""

from datetime import UTC, datetime

import pytest

from worker.contract import keys


@pytest.mark.parametrize("at", [0.0, 86_399.999, 86_400.0, 951_782_400.0, 1_767_225_599.5, 1_767_225_600.0])
def test_today_is_the_utc_day_at_every_boundary(monkeypatch, at):
    """`today` names a day once (kept until the clock leaves it): the same name strftime gives,
    on either side of midnight UTC, a leap day and a new year."""
    monkeypatch.setattr(keys, "_day", (-1, ""))
    keys.today()  # the day of now, kept
    monkeypatch.setattr(keys.time, "time", lambda: at)
    assert keys.today() == datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")
