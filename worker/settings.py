"""Settings from the environment (and an optional `.env`), the one place they are read."""

from __future__ import annotations

import sys

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Price(BaseModel):
    """USD per 1,000 tokens, used only when the gateway's reply has no `usage.cost`."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and how to fix it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    aisa_api_key: SecretStr | None = None
    aisa_base_url: str = "https://api.aisa.one/v1"
    redis_url: str = "redis://localhost:6379/0"
    queue_name: str = "llm-router:queue"

    worker_concurrency: int = Field(50, ge=1, description="jobs run at once by one worker process")
    result_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="how long a result stays in Redis")
    poll_delay_s: float = Field(0.05, gt=0, description="how often an idle worker polls the queue")
    job_timeout_s: float = Field(600, gt=0)
    request_timeout_s: float = Field(120, gt=0, description="upstream read timeout (idle time between bytes)")
    connect_timeout_s: float = Field(10, gt=0)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1)

    # Priced locally only when the gateway does not send usage.cost (e.g. a plain
    # OpenAI-compatible server). JSON in the environment: {"gpt-4.1": {"input": 0.01, "output": 0.03}}
    prices: dict[str, Price] = {}

    def api_key(self) -> str:
        """The key, or a ConfigError telling the user how to set it."""
        if self.aisa_api_key is None or not self.aisa_api_key.get_secret_value():
            raise ConfigError(
                "AISA_API_KEY is not set: export AISA_API_KEY=<your key> (or put it in .env); "
                "for the local simulator any non-empty key works, e.g. AISA_API_KEY=sim-key"
            )
        return self.aisa_api_key.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with invalid values reported as a ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


def exit_on_config_error(exc: ConfigError) -> None:
    print(f"llm-router: {exc}", file=sys.stderr)
    raise SystemExit(2)
