"""No setting fails silently: real worker, ingress, exporter and CLI processes say within seconds
what is wrong with REDIS_URL and how to fix it (a worker keeps retrying, saying so, while Redis
may be starting; a wrong password or scheme stops every verb with exit 2), a worker says when
Redis goes away and comes back, and checks the gateway's URL and key at start-up and runs on."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from harness.processes import LLMRouterProcess, answers, llm_router, settings_env, wait_started
from harness.redis_server import PrivateRedis, free_port, reachable, redis_server_binary
from harness.wait import wait_until
from producers.api import Producer
from tests.helpers import API_KEY, self_signed
from worker.calls import errors
from worker.calls.client import AIsaClient
from worker.contract.settings import Settings

# "Within a few seconds", with room for a loaded machine: the old code said nothing for 73 s
# (and retried for ~37 minutes); a wrong password or scheme never stopped it.
SAY_S = 20
PASSWORD = "pw-0123"


def server(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([redis_server_binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def password_port() -> Iterator[int]:
    """A plain-text redis-server that wants PASSWORD."""
    port = free_port()
    proc = server(*shlex.split(f"--port {port} --bind 127.0.0.1 --save '' --requirepass {PASSWORD}"))
    wait_started(proc, lambda: reachable(f"redis://:{PASSWORD}@127.0.0.1:{port}/0"), 10, "redis-server")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def tls_port(tmp_path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks only TLS, with a self-signed certificate: (port, its CA file)."""
    cert, key = self_signed(tmp_path, "127.0.0.1")
    port = free_port()
    proc = server(
        *shlex.split(f"--port 0 --tls-port {port} --bind 127.0.0.1 --save '' --tls-auth-clients no"),
        *shlex.split(f"--tls-cert-file {cert} --tls-key-file {key} --tls-ca-cert-file {cert}"),
    )
    wait_started(proc, lambda: reachable(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"), 10, "TLS redis-server")
    yield port, cert
    proc.terminate()
    proc.wait(10)


def run(args: list[str], s: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **settings_env(s), "EXPORTER_PORT": str(free_port()), **env}
    return subprocess.run(args, env=full, capture_output=True, text=True, timeout=SAY_S + 10)


ARQ = str(Path(sys.executable).with_name("arq"))
VERBS = {
    "worker": [llm_router(), "worker"],
    "arq": [ARQ, "worker.WorkerSettings"],
    "api": [llm_router(), "api", "--port", str(free_port())],  # it stops before it binds
    "exporter": [llm_router(), "exporter"],
    "dlq": [llm_router(), "dlq", "list"],
}
WRONG = "Redis at 127.0.0.1:{port} refused REDIS_URL's password (invalid username-password pair"
NONE = "Redis at 127.0.0.1:{port} wants a password and REDIS_URL gives none: REDIS_URL=redis://:PASSWORD@"
PLAIN = "rediss:// (TLS) at 127.0.0.1:{port}, which speaks plain Redis: use redis://"


@pytest.mark.parametrize(
    ("url", "said", "verb"),
    [
        *[("redis://:wrong-pw@127.0.0.1:{port}/0", WRONG, verb) for verb in VERBS],
        ("redis://127.0.0.1:{port}/0", NONE, "worker"),
        ("redis://127.0.0.1:{port}/0", NONE, "dlq"),
        (f"rediss://:{PASSWORD}@127.0.0.1:{{port}}/0", PLAIN, "worker"),
        (f"rediss://:{PASSWORD}@127.0.0.1:{{port}}/0", PLAIN, "api"),
        (f"rediss://:{PASSWORD}@127.0.0.1:{{port}}/0", PLAIN, "dlq"),
    ],
)
def test_a_redis_url_that_cannot_work_stops_every_verb_with_its_fix(url, said, verb, password_port, settings):
    s = settings.model_copy(update={"redis_url": url.format(port=password_port), "ingress_tokens": {"t": "web"}})
    out = run(VERBS[verb], s)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"REDIS_URL: {said.format(port=password_port)}" in out.stderr
    assert "start it" not in out.stderr and "Traceback" not in out.stderr
    assert "wrong-pw" not in out.stdout + out.stderr and PASSWORD not in out.stdout + out.stderr


def test_what_is_wrong_with_a_tls_url_is_named(tls_port, password_port):
    from worker.process.preflight import redis_problem

    port, ca = tls_port
    assert redis_problem(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}") is None
    plain = redis_problem(f"redis://127.0.0.1:{port}/0")
    assert plain is not None and plain.lasting
    assert plain.text.startswith(f"redis:// (plain text) at 127.0.0.1:{port}, which speaks TLS: use rediss://")
    untrusted = redis_problem(f"rediss://127.0.0.1:{port}/0")
    assert untrusted is not None and untrusted.lasting
    assert (
        "certificate is refused (self-signed certificate): give its CA in REDIS_URL (?ssl_ca_certs=" in untrusted.text
    )
    typo = redis_problem(f"rediss://127.0.0.1:{port}/0?ssl_ca_cert={ca}")
    assert typo is not None and typo.lasting and "ssl_ca_cert" in typo.text
    db = redis_problem(f"redis://:{PASSWORD}@127.0.0.1:{password_port}/99")
    assert db is not None and db.lasting and "has no database of REDIS_URL's number" in db.text


@pytest.mark.parametrize("verb", ["worker", "arq"])
async def test_a_worker_without_redis_says_so_at_once_keeps_retrying_and_starts_when_it_comes(verb, settings, tmp_path):
    redis = PrivateRedis()  # not started yet: its port is free
    s = settings.model_copy(update={"redis_url": redis.url})
    log = tmp_path / "worker.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            VERBS[verb], env={**os.environ, **settings_env(s)}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        said = f"nothing listens at 127.0.0.1:{redis.port} (connection refused): start Redis, or point REDIS_URL at it"
        wait_until(lambda: said in log.read_text(), SAY_S, "the worker to say Redis is not there")
        assert "retrying every 2 s until it answers" in log.read_text() and proc.poll() is None
        with redis:
            async with Producer(redis.url, queue_name=s.queue_name) as producer:
                job = await producer.chat("gpt-4.1", "once Redis is up")
                result = await producer.wait(job, timeout=60)
            assert result is not None and result.status == "succeeded"
            assert f"Redis at 127.0.0.1:{redis.port} answers after" in log.read_text()
    finally:
        proc.kill()
        proc.wait(10)


async def test_a_running_worker_says_when_redis_goes_away_and_comes_back(settings, tmp_path):
    with PrivateRedis() as redis:
        s = settings.model_copy(update={"redis_url": redis.url, "metrics_port": free_port()})
        worker = LLMRouterProcess("worker", env=settings_env(s), log_path=tmp_path / "worker.log")
        try:
            worker.wait_started(lambda: answers(f"http://127.0.0.1:{s.metrics_port}/readyz"), 30, "the worker")
            redis.kill()
            wait_until(lambda: "Redis lost (" in worker.log(), SAY_S, "the worker to say Redis is lost")
            assert "retrying each command for about a minute" in worker.log()
            redis.start()
            wait_until(lambda: "Redis answers again after" in worker.log(), SAY_S, "the worker to say it is back")
            async with Producer(redis.url, queue_name=s.queue_name) as producer:
                result = await producer.wait(await producer.chat("gpt-4.1", "after the outage"), timeout=60)
            assert result is not None and result.status == "succeeded"
        finally:
            worker.stop()


@pytest.mark.parametrize(
    ("base", "key", "said"),
    [
        (
            "{sim}",
            API_KEY,
            "AISA_BASE_URL: GET {sim}/models and POST {sim}/chat/completions answer 404, so every call would:"
            " add /v1: AISA_BASE_URL={sim}/v1",
        ),
        ("{sim}/v1", "not-the-key", "AISA_API_KEY: the gateway at {sim}/v1 refused the key (401"),
        ("http://127.0.0.1:{free}/v1", API_KEY, "cannot reach the gateway at http://127.0.0.1:{free}/v1"),
    ],
)
def test_a_worker_checks_the_gateway_at_start_up_and_runs_on(base, key, said, settings, sim, workers):
    root, free = sim.base_url.removesuffix("/v1"), free_port()
    s = settings.model_copy(
        update={
            "aisa_base_url": base.format(sim=root, free=free),
            "aisa_api_key": SecretStr(key),
            "metrics_port": free_port(),
        }
    )
    worker = workers(s)
    wait_until(lambda: said.format(sim=root, free=free) in worker.log(), SAY_S, "the worker to check the gateway")
    assert "the worker runs on" in worker.log() and key not in worker.log()
    # and it does: a gateway outage must not crash-loop the fleet
    worker.wait_started(lambda: answers(f"http://127.0.0.1:{s.metrics_port}/readyz"), 30, "the worker")


async def test_a_404_on_the_chat_path_names_the_url_it_called(sim):
    root = sim.base_url.removesuffix("/v1")
    async with AIsaClient(root, API_KEY) as client:
        with pytest.raises(errors.ModelNotFoundError) as lost:
            await client.chat({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]})
    assert f"(POST {root}/chat/completions)" in str(lost.value)
    async with AIsaClient(sim.base_url, API_KEY) as client:  # an unknown model is the model's fault, not the URL's
        with pytest.raises(errors.ModelNotFoundError) as unknown:
            await client.chat({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert "POST" not in str(unknown.value)


async def test_a_server_without_a_models_list_passes_the_gateway_check_if_it_has_the_chat_path():
    # docs/getting-started.md: servers without /v1/models work; the check must not send their operators after /v1
    from aiohttp import web

    from tests.plain_openai import create_app
    from worker.process.preflight import gateway_problem

    runner = web.AppRunner(create_app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with AIsaClient(f"http://127.0.0.1:{port}/v1", API_KEY) as client:
            assert await gateway_problem(client, f"http://127.0.0.1:{port}/v1") is None
        async with AIsaClient(f"http://127.0.0.1:{port}", API_KEY) as client:
            problem = await gateway_problem(client, f"http://127.0.0.1:{port}")
        assert problem is not None and problem.endswith(f"add /v1: AISA_BASE_URL=http://127.0.0.1:{port}/v1")
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- every verb: a clear line, no traceback

BATCH = "batch_" + "0" * 32
ONE_SHOT = {
    "chat": ["chat", "--model", "gpt-4.1", "--message", "hi"],
    "vision": ["vision", "--model", "gpt-4o", "--image", "https://example.com/a.png", "--prompt", "hi"],
    "compare": ["compare", "--models", "gpt-4.1,gpt-4o", "--message", "hi"],
    "result": ["result", "job-1"],
    "batch submit": ["batch", "submit", "{input}"],
    "batch status": ["batch", "status", BATCH],
    "batch results": ["batch", "results", BATCH],
    "batch cancel": ["batch", "cancel", BATCH],
    "batch list": ["batch", "list"],
    "dlq list": ["dlq", "list"],
    "dlq show": ["dlq", "show", "job-1"],
    "dlq replay": ["dlq", "replay", "job-1"],
    "dlq purge": ["dlq", "purge"],
    "quarantine list": ["quarantine", "list"],
    "quarantine purge": ["quarantine", "purge"],
    "fleet": ["fleet"],
    "schedule list": ["schedule", "list"],
    "schedule run": ["schedule", "run", "nightly"],
    "spend": ["spend"],
}
SERVICES = {"worker": ["worker"], "api": ["api", "--port", "{port}"], "exporter": ["exporter"]}
UNREACHABLE = (
    "REDIS_URL: nothing listens at 127.0.0.1:{port} (connection refused): start Redis, or point REDIS_URL at it"
)
NO_DB = "REDIS_URL: Redis at 127.0.0.1:{port} has no database of REDIS_URL's number (the path /N; `databases` in"


@pytest.fixture
def verb_env(settings, tmp_path) -> dict[str, str]:
    """The environment of a verb (a schedule and a batch input of one line each, so that the
    schedule verbs and `batch submit` reach Redis)."""
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    (tmp_path / "schedules.toml").write_text(
        f'[[schedule]]\nname = "nightly"\ncron = "0 3 * * *"\ninput = "{tmp_path / "in.jsonl"}"\n'
    )
    s = settings.model_copy(update={"ingress_tokens": {"t": "web"}, "schedules_file": str(tmp_path / "schedules.toml")})
    # a console secret as a deployment has one: `api` on an address not on loopback needs it
    console = {"CONSOLE_SECRET": "preflight-console-secret-0123456789"}
    return {**os.environ, **settings_env(s), **console, "EXPORTER_PORT": str(free_port())}


def start(args: list[str], env: dict[str, str], tmp_path: Path, url: str) -> subprocess.Popen[str]:
    args = [a.format(input=tmp_path / "in.jsonl", port=free_port()) for a in args]
    return subprocess.Popen(
        [llm_router(), *args], env={**env, "REDIS_URL": url}, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def said_once(proc: subprocess.Popen[str], code: int, line: str) -> None:
    """`proc` exits `code` having said `line` (and at most one more line), with no traceback."""
    out, err = proc.communicate(timeout=SAY_S + 10)
    assert proc.returncode == code, out + err
    assert line in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "wrong-pw" not in out + err and PASSWORD not in out + err


@pytest.mark.parametrize("verb", [*ONE_SHOT, *SERVICES])
def test_every_verb_says_what_is_wrong_with_redis_in_a_line_without_a_traceback(
    verb, password_port, verb_env, tmp_path
):
    # before: a database out of range was a ResponseError traceback from every one-shot verb
    args = ONE_SHOT.get(verb) or SERVICES[verb]
    nobody = free_port()
    cases = [
        (f"redis://:{PASSWORD}@127.0.0.1:{password_port}/99", 2, NO_DB.format(port=password_port)),
        (f"redis://:wrong-pw@127.0.0.1:{password_port}/0", 2, f"REDIS_URL: {WRONG.format(port=password_port)}"),
    ]
    if verb in ONE_SHOT:  # (a service waits for Redis, saying so: the tests above and below)
        cases.append((f"redis://127.0.0.1:{nobody}/0", 1, UNREACHABLE.format(port=nobody)))
    running = [(start(args, verb_env, tmp_path, url), code, line) for url, code, line in cases]
    for proc, code, line in running:
        said_once(proc, code, line)


@pytest.mark.parametrize("verb", ["api", "exporter"])
def test_a_service_without_redis_says_so_and_serves_on(verb, verb_env, tmp_path):
    nobody = free_port()
    log = tmp_path / f"{verb}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [llm_router(), *[a.format(port=free_port()) for a in SERVICES[verb]]],
            env={**verb_env, "REDIS_URL": f"redis://127.0.0.1:{nobody}/0"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        said = UNREACHABLE.format(port=nobody).removeprefix("REDIS_URL: ")
        wait_until(lambda: said in log.read_text(), SAY_S, f"{verb} to say Redis is not there")
        assert proc.poll() is None and "Traceback" not in log.read_text()
    finally:
        proc.kill()
        proc.wait(10)


BAD_OPTIONS = [
    (["dlq", "list", "--limit", "99999999999999999999"], "--limit"),
    (["dlq", "list", "--limit", "0"], "--limit"),
    (["quarantine", "list", "--limit", "-5"], "--limit"),
    (["chat", "--model", "gpt-4.1", "--message", "hi", "--timeout", "nan"], "--timeout"),
    (["result", "job-1", "--timeout", "inf"], "--timeout"),
    (["api", "--host", "203.0.113.9", "--port", "{port}"], "--host 203.0.113.9 --port"),
    (["sim", "--port", "99999"], "--port"),
    (["sim", "--rpm", "-1"], "--rpm"),
    (["sim", "--error-rate", "503=2"], "--error-rate"),
    (["sim", "--credits", "nan"], "--credits"),
]


@pytest.mark.parametrize(("args", "flag"), BAD_OPTIONS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_OPTIONS])
def test_a_bad_option_value_is_refused_naming_the_flag(args, flag, verb_env, tmp_path, redis_url):
    # before: --limit past Redis's integers was a traceback, 0 and negatives were taken, nan waited
    # "nans", an address not on this machine was uvicorn's errno and exit 3, sim's a traceback
    proc = start(args, verb_env, tmp_path, redis_url)
    out, err = proc.communicate(timeout=SAY_S + 10)
    assert proc.returncode == 2, out + err
    assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) <= 4, err
