"""Shared fixtures: a private redis-server and the AIsa simulator, both real servers on free ports."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import hypothesis
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from harness.redis_server import PrivateRedis
from producers.api import Producer
from sim.server import SimServer, Simulator
from worker.contract.settings import Settings

from .helpers import API_KEY, sim_admin

# Property-based runs (hypothesis, and schemathesis on top of it) are derandomised with a bounded
# number of examples: every run of `make test` generates the same cases, so one cannot fail by
# chance. A test's own @settings wins (the ingress fuzz run: FUZZ_EXAMPLES, FUZZ_RANDOM);
# HYPOTHESIS_PROFILE=explore searches at random, further.
hypothesis.settings.register_profile("repeatable", derandomize=True, max_examples=50, database=None, deadline=None)
hypothesis.settings.register_profile("explore", max_examples=500, database=None, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

# A shell without job control (CI backgrounding `make test`, `nohup … &`) starts its children with
# SIGINT ignored, and a child started from here inherits that: the CLI tests that stop a process
# with Ctrl-C would then wait out their timeouts. Python's own handler, as in an interactive run.
signal.signal(signal.SIGINT, signal.default_int_handler)

# Unit tests start no server (.ci/restructure.py places the files by kind). Processes are the
# e2e folder's: its conftest.py alone has the `workers` fixture.
SERVERS = {"redis_server", "sim_server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = SERVERS & set(getattr(item, "fixturenames", ()))
        if item.path.parent.name == "unit" and used:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(used))}: not a unit test. Give its file the right "
                "folder in .ci/restructure.py's table and run it"
            )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A private redis-server for the session (not the machine's shared one)."""
    try:
        server = PrivateRedis().start()
    except RuntimeError as exc:
        pytest.fail(f"{exc} (`make test` installs it)")
    yield server.url
    server.stop()


@pytest.fixture
def redis_url(redis_server: str) -> str:
    Redis.from_url(redis_server).flushall()
    return redis_server


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[AsyncRedis]:
    client = AsyncRedis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def sim_server() -> Iterator[SimServer]:
    with SimServer(Simulator([API_KEY], credits=100.0)) as server:
        yield server


@pytest.fixture
def sim(sim_server: SimServer) -> SimServer:
    """The simulator with its faults, counters and credits reset for this test."""
    sim_admin(sim_server, "/_sim/reset", {})
    return sim_server


@pytest.fixture
def settings(sim: SimServer, redis_url: str) -> Settings:
    return Settings(
        aisa_api_key=API_KEY,
        aisa_base_url=sim.base_url,
        redis_url=redis_url,
        request_timeout_s=2,
        connect_timeout_s=2,
        poll_delay_s=0.01,
        _env_file=None,
        # resilience at test speed: the same policy, shorter clocks
        backoff_base_s=0.01,
        backoff_cap_s=0.05,
        probe_interval_s=0.2,
        lease_s=3,
        max_wait_s=2,
        circuit_open_s=1,
        shutdown_grace_s=2,
        metrics_port=0,
    )


MakeProducer = Callable[..., Awaitable[Producer]]


@pytest.fixture
async def make_producer() -> AsyncIterator[MakeProducer]:
    """`await make_producer(settings, source=None, own_settings=False)`: a Producer on `settings`'
    Redis and queue, closed after the test. It reads its other settings from the environment, as
    `Producer()` does, unless `own_settings` gives it `settings` (their bounds, batch and webhook
    settings), as the service and the ingress do."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(settings: Settings, *, source: str | None = None, own_settings: bool = False) -> Producer:
            own = settings if own_settings else None
            producer = Producer(settings.redis_url, queue_name=settings.queue_name, source=source, settings=own)
            await stack.enter_async_context(producer)
            return producer

        yield make


@pytest.fixture
async def producer(make_producer: MakeProducer, settings: Settings) -> Producer:
    """The test's producer: source "tests", on the `settings` fixture's Redis and queue. A file
    that needs another one overrides this fixture with its own `make_producer(...)` call."""
    return await make_producer(settings, source="tests")
