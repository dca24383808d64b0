"""Settings from the environment: defaults, and errors that name the variable."""

import collections.abc
import dataclasses
import json
import os
import re
import subprocess
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from harness.processes import llm_router
from worker.contract.routes import Route, RouteRule
from worker.contract.settings import BudgetConfig, ConfigError, Price, RateLimit, Settings, SourceLimit, load_settings
from worker.contract.strict import StrictModel
from worker.process.service import worker_kwargs


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


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        (
            "RATE_LIMITS",
            '{"gpt-4.1": {"rpn": 600}}',
            'RATE_LIMITS, in ["gpt-4.1"]: unknown key "rpn": did you mean "rpm"?',
        ),
        ("GLOBAL_RATE_LIMIT", '{"rmp": 3000}', 'GLOBAL_RATE_LIMIT: unknown key "rmp": did you mean "rpm"?'),
        (
            "PRICES",
            '{"m": {"input": 1, "outptu": 2}}',
            'PRICES, in ["m"]: unknown key "outptu": did you mean "output"?',
        ),
    ],
)
def test_a_misspelt_key_in_a_json_setting_is_refused_naming_the_variable(name, value, said, monkeypatch):
    # a misspelt limit used to be accepted as a model with no limit at all
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    assert said in str(refused.value)
    assert f"{name}_" not in str(refused.value)  # the variable a person sets, not a pydantic path


def test_a_worker_with_a_misspelt_rate_limit_refuses_to_start(monkeypatch):
    env = {**os.environ, "AISA_API_KEY": "k", "RATE_LIMITS": '{"gpt-4.1": {"rpn": 600}}', "METRICS_PORT": "0"}
    out = subprocess.run([llm_router(), "worker", "--burst"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert 'RATE_LIMITS, in ["gpt-4.1"]: unknown key "rpn": did you mean "rpm"? (keys: rpm, tpm)' in out.stderr


BAD_VALUES = [
    # (the variable, its value, what the refusal says): each was taken before, meaning something else
    ("RATE_LIMITS", '{"gpt-4.1": {}}', 'RATE_LIMITS, in ["gpt-4.1"]: limits nothing: give "rpm" and/or "tpm"'),
    ("RATE_LIMITS", '{"": {"rpm": 60}}', 'RATE_LIMITS, in [""]: must name a model'),
    ("RATE_LIMITS", '{"   ": {"rpm": 60}}', 'RATE_LIMITS, in ["   "]: must name a model'),
    ("RATE_LIMITS", '{"gpt 4.1": {"rpm": 60}}', "not 'gpt 4.1'"),
    ("RATE_LIMITS", '{"gpt-4.1\\u0000": {"rpm": 60}}', 'RATE_LIMITS, in ["gpt-4.1\\u0000"]: must be 1-128 characters'),
    ("RATE_LIMITS", '{"gpt-4.1": {"rpm": 0}}', 'RATE_LIMITS, in ["gpt-4.1"]["rpm"]: Input should be greater than 0'),
    ("RATE_LIMITS", '{"gpt-4.1": {"tpm": -5}}', 'RATE_LIMITS, in ["gpt-4.1"]["tpm"]: Input should be greater than 0'),
    ("RATE_LIMITS", '{"gpt-4.1": {"rpm": Infinity}}', '["gpt-4.1"]["rpm"]: Input should be a finite number'),
    ("SOURCE_WEIGHTS", '{"billing": -1}', 'SOURCE_WEIGHTS, in ["billing"]: Input should be greater than 0'),
    ("SOURCE_LIMITS", '{"search": {}}', 'SOURCE_LIMITS, in ["search"]: limits nothing'),
    ("SOURCE_LIMITS", '{"search": {"concurrency": 0}}', 'SOURCE_LIMITS, in ["search"]["concurrency"]: Input should be'),
    ("GLOBAL_RATE_LIMIT", '{"rpm": 0}', 'GLOBAL_RATE_LIMIT, in ["rpm"]: Input should be greater than 0'),
    ("MODEL_CONTEXT", '{"my-model": 0}', 'MODEL_CONTEXT, in ["my-model"]: Input should be greater than 0'),
    ("MODEL_CONTEXT", '{"my-model": -32768}', 'MODEL_CONTEXT, in ["my-model"]: Input should be greater than 0'),
    ("MODEL_CONTEXT", '{"\\t": 32768}', 'MODEL_CONTEXT, in ["\\t"]: must name a model'),
    ("PRICES", '{"m": {"input": NaN, "output": 1}}', 'PRICES, in ["m"]["input"]: Input should be a finite number'),
    ("PRICES", '{"": {"input": 1, "output": 1}}', 'PRICES, in [""]: must name a model'),
    ("FALLBACKS", '{"gpt-4.1": [""]}', 'FALLBACKS, in ["gpt-4.1"][0]: must name a model'),
    ("DEFAULT_FALLBACKS", '["gemini 2"]', "DEFAULT_FALLBACKS, in [0]: must be 1-128 characters"),
    ("CONTEXT_FALLBACKS", '{"gpt-4.1": " "}', 'CONTEXT_FALLBACKS, in ["gpt-4.1"]: must name a model'),
    ("BUDGETS", '{"models": {"": 5}}', 'BUDGETS, in ["models"][""]: must name a model'),
    ("METRIC_MODELS", '["gpt-4.1", ""]', "METRIC_MODELS, in [1]: must name a model"),
    ("METRIC_SOURCES", '["a b"]', "METRIC_SOURCES, in [0]: source 'a b' must be 1-64 characters"),
    ("INGRESS_TOKENS", '{"": "web"}', "INGRESS_TOKENS: a token must be non-empty printable characters"),
    ("INGRESS_TOKENS", '{"tok-1": "web site"}', "INGRESS_TOKENS: source 'web site' must be 1-64 characters"),
    ("SOURCE_WEIGHTS", '{"billing": 0}', 'SOURCE_WEIGHTS, in ["billing"]: Input should be greater than 0'),
    ("SOURCE_WEIGHTS", '{"web site": 1}', "SOURCE_WEIGHTS, in [\"web site\"]: source 'web site' must be 1-64"),
    ("SOURCE_LIMITS", '{"search": {"rpm": NaN}}', 'SOURCE_LIMITS, in ["search"]["rpm"]: Input should be a finite'),
    (
        "WEBHOOK_ALLOWED_HOSTS",
        '["https://hooks.example.com/"]',
        "WEBHOOK_ALLOWED_HOSTS: 'https://hooks.example.com/' is",
    ),
    ("ROUTES", '{"cheap": {"models": []}}', 'ROUTES, in ["cheap"]["models"]: List should have at least 1 item'),
    (
        "BUDGET_UNKNOWN_PRICE",
        '{"input": Infinity, "output": 1}',
        'BUDGET_UNKNOWN_PRICE, in ["input"]: Input should be a finite',
    ),
    ("WEBHOOK_ALLOWED_NETWORKS", '["10.0.0.1/8"]', "WEBHOOK_ALLOWED_NETWORKS: '10.0.0.1/8' is not a network"),
    ("AISA_BASE_URL", "api.aisa.one/v1", "AISA_BASE_URL: 'api.aisa.one/v1' needs http:// or https:// and a host"),
    ("AISA_BASE_URL", "https:///v1", "AISA_BASE_URL: 'https:///v1' needs http:// or https:// and a host"),
    (
        "AISA_BASE_URL",
        "ftp://api.aisa.one/v1",
        "needs http:// or https:// and a host: use e.g. https://api.aisa.one/v1",
    ),
]


@pytest.mark.parametrize(("name", "value", "said"), BAD_VALUES)
def test_a_bad_value_in_a_setting_is_refused_at_start_up_naming_the_variable(name, value, said, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    assert said in str(refused.value)


def test_every_json_setting_has_a_bad_value_case():
    """A JSON setting added later gets a case above (and so a check of its values)."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(Settings)
    json_settings = {name.upper() for name, field in Settings.model_fields.items() if source.field_is_complex(field)}
    assert json_settings <= {name for name, _, _ in BAD_VALUES}, json_settings - {name for name, _, _ in BAD_VALUES}


def test_values_that_mean_something_are_still_taken(monkeypatch):
    # GLOBAL_RATE_LIMIT={} is the documented "no global limit" (deploy/k8s/base/settings.env)
    for name, value in [
        ("GLOBAL_RATE_LIMIT", "{}"),
        ("RATE_LIMITS", '{"gpt-4.1": {"tpm": 600000}, "my-org/model@2": {"rpm": 1}}'),
        ("MODEL_CONTEXT", '{"my-model": 32768}'),
        ("AISA_BASE_URL", "http://sim:8700/v1"),
        ("INGRESS_TOKENS", '{"tok-1": "web"}'),
    ]:
        monkeypatch.setenv(name, value)
    s = load_settings(_env_file=None)
    assert s.global_rate_limit == RateLimit() and s.rate_limits["my-org/model@2"].rpm == 1
    assert s.model_context == {"my-model": 32768} and s.aisa_base_url == "http://sim:8700/v1"


UNKNOWN = "zz_not_a_key"


def unknown_key_values(annotation: Any, seen: frozenset[type] = frozenset()) -> Iterator[tuple[Any, type]]:
    """For every object a setting of type `annotation` may hold: a JSON value with an unknown key
    in that object (and the model it is)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from unknown_key_values(args[0], seen)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from unknown_key_values(arg, seen)
    elif origin is dict or origin is collections.abc.Mapping:
        for value, model in unknown_key_values(args[1], seen):
            yield {"x": value}, model
    elif origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        for value, model in unknown_key_values(args[0], seen):
            yield [value], model
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation in seen:
            return
        yield {UNKNOWN: 1}, annotation
        for name, field in annotation.model_fields.items():
            for value, model in unknown_key_values(field.annotation, seen | {annotation}):
                yield {field.alias or name: value}, model
    else:
        assert not (dataclasses.is_dataclass(annotation) or typing.is_typeddict(annotation)), (
            f"{annotation}: an object in a setting is a worker.contract.strict.StrictModel (unknown keys refused)"
        )


def test_every_json_setting_refuses_unknown_keys(monkeypatch):
    """Walks every setting pydantic-settings reads as JSON, puts an unknown key in each object its
    value may hold, and proves it refused, naming the variable: a setting added later cannot forget."""
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(Settings)
    checked: set[type] = set()
    for name, field in Settings.model_fields.items():
        if not source.field_is_complex(field):
            continue
        for value, model in unknown_key_values(field.annotation):
            assert issubclass(model, StrictModel), f"{name.upper()}: {model.__name__} is not a StrictModel"
            monkeypatch.setenv(name.upper(), json.dumps(value))
            with pytest.raises(ConfigError) as refused:
                load_settings(_env_file=None)
            monkeypatch.delenv(name.upper())
            said = str(refused.value)
            assert f'unknown key "{UNKNOWN}"' in said and re.search(rf"\b{name.upper()}(:|, in )", said), (name, said)
            checked.add(model)
    # the walk reaches the models of today's settings (so it would reach tomorrow's)
    assert {RateLimit, Price, BudgetConfig, Route, RouteRule, SourceLimit} <= checked


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("SOURCE_WEIGHTS", '{"billing": 0}', 'SOURCE_WEIGHTS, in ["billing"]: Input should be greater than 0'),
        ("SOURCE_WEIGHTS", '{"billing": "lots"}', 'SOURCE_WEIGHTS, in ["billing"]: Input should be a valid number'),
        ("SOURCE_WEIGHTS", '{"bad source!": 1}', "SOURCE_WEIGHTS"),
        (
            "SOURCE_LIMITS",
            '{"search": {"rmp": 600}}',
            'SOURCE_LIMITS, in ["search"]: unknown key "rmp": did you mean "rpm"? (keys: rpm, tpm, concurrency)',
        ),
        (
            "SOURCE_LIMITS",
            '{"search": {"concurrency": 0}}',
            'SOURCE_LIMITS, in ["search"]["concurrency"]: Input should be greater than or equal to 1',
        ),
    ],
)
def test_source_weights_and_limits_refuse_bad_values_naming_the_variable(name, value, said, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None)
    assert said in str(refused.value)


def test_source_weights_and_limits_are_read(monkeypatch):
    monkeypatch.setenv("SOURCE_WEIGHTS", '{"billing": 3}')
    monkeypatch.setenv("SOURCE_LIMITS", '{"search": {"rpm": 600, "tpm": 200000, "concurrency": 100}}')
    s = load_settings(_env_file=None)
    assert s.source_weights == {"billing": 3} and s.source_limits["search"].concurrency == 100
    assert s.fair_share is False  # on only once every worker reads the sub-queues
