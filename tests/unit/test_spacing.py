"""How far apart the shared limiter books one limit's requests: Settings.spacing_ms."""

import pytest

from worker.contract.settings import ConfigError, Settings, load_settings


def test_unknown_window_runs_the_headroom_fraction_under():
    s = Settings(rate_limit_headroom=0.02, _env_file=None)
    assert 60_000 / s.spacing_ms == pytest.approx(0.98)


def test_a_known_window_runs_one_jitter_under_per_window():
    s = Settings(rate_limit_window_s=60, rate_limit_jitter_ms=100, _env_file=None)
    # a limit of N a minute: 60.1 s / N apart, so request i and request i + N arrive 60.1 s apart
    assert s.spacing_ms == pytest.approx(60_100)
    assert 60_000 / s.spacing_ms > 0.998  # of the limit, where the 2 % headroom gives 0.98


@pytest.mark.parametrize("env", [{"RATE_LIMIT_WINDOW_S": "0"}, {"RATE_LIMIT_JITTER_MS": "-1"}])
def test_bad_window_settings_are_refused_naming_the_variable(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=next(iter(env))):
        load_settings(_env_file=None)
