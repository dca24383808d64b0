"""Settings from the environment: defaults, and errors that name the variable."""

import pytest

from worker.service import worker_kwargs
from worker.settings import ConfigError, Settings, load_settings


def test_defaults_point_at_the_real_gateway(monkeypatch):
    for name in ("AISA_BASE_URL", "REDIS_URL", "AISA_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=None)
    assert s.aisa_base_url == "https://api.aisa.one/v1" and s.redis_url == "redis://localhost:6379/0"


def test_missing_key_is_one_clear_error(monkeypatch):
    monkeypatch.delenv("AISA_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="AISA_API_KEY is not set: export AISA_API_KEY="):
        worker_kwargs(Settings(_env_file=None))


def test_invalid_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("WORKER_CONCURRENCY", "lots")
    with pytest.raises(ConfigError, match="WORKER_CONCURRENCY: Input should be a valid integer"):
        load_settings(_env_file=None)


def test_prices_and_key_from_env_and_key_stays_secret(monkeypatch):
    monkeypatch.setenv("AISA_API_KEY", "sk-secret-value")
    monkeypatch.setenv("PRICES", '{"local-llama": {"input": 0.0001, "output": 0.0002}}')
    s = load_settings(_env_file=None)
    assert s.prices["local-llama"].output == 0.0002
    assert s.api_key() == "sk-secret-value" and "sk-secret-value" not in repr(s)


def test_an_invalid_ingress_token_entry_is_named_without_the_token(monkeypatch):
    # INGRESS_TOKENS maps secret tokens to source names: a bad entry names the variable, never its token
    monkeypatch.setenv("INGRESS_TOKENS", '{"s3cret-billing-tok": 5, "s3cret-ok": "search"}')
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert "INGRESS_TOKENS: Input should be a valid string" in str(err.value)
    assert "s3cret" not in str(err.value).lower()
