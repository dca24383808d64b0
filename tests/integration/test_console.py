"""The operator console (producers/console/pages.py) in this process: the ingress app under
TestClient on a private Redis, the simulator and in-process workers. Roles in INGRESS_TOKENS,
sign-in and its cookie, sessions checked against INGRESS_TOKENS on every request, CSRF,
the Content-Security-Policy, tenancy, and each action changing Redis as its CLI verb does.
(The real browser drives a running ingress in tests/e2e/test_console_browser.py.)"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from redis import Redis

from harness.processes import settings_env
from producers.http.app import check_console_secret, create_app
from worker.contract.keys import DLQ, GATE, QUARANTINE, batch_key, in_progress_key, job_key
from worker.contract.settings import ConfigError, Settings, load_settings
from worker.limits.gate import Gate
from worker.outputs.dlq import DeadLetters
from worker.process.quarantine import Quarantine

from ..conftest import MakeProducer
from ..helpers import run_worker

SECRET = "console-test-secret-0123456789"
TOKENS = {
    "tok-a": "team-a",
    "tok-b": {"source": "team-b"},
    "tok-op": {"role": "operator"},
    "tok-op-src": {"source": "ops", "role": "operator"},
}


@pytest.fixture
def console_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"ingress_tokens": load_settings(_env_file=None, ingress_tokens=TOKENS).ingress_tokens}
        | {"console_secret": SecretStr(SECRET), "console_insecure_http": False}
    )


@pytest.fixture
def http(console_settings: Settings) -> Iterator[TestClient]:
    # https: the cookie is Secure (the test client keeps it only over https)
    with TestClient(create_app(console_settings), base_url="https://testserver") as client:
        yield client


def sign_in(client: TestClient, token: str) -> None:
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    answer = client.post("/console/login", data={"token": token, "csrf": csrf[1]}, follow_redirects=False)
    assert answer.status_code == 303, answer.text


def csrf_of(client: TestClient, path: str = "/console/") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found
    return found[1]


async def dead_letter(producer_source: str, settings: Settings, make_producer: MakeProducer) -> str:
    """A job of `producer_source` that fails for good (a model the gateway does not know)."""
    producer = await make_producer(settings, source=producer_source)
    job_id = await producer.chat("no-such-model", "dead", fallbacks=[], job_id=f"{producer_source}@dead-1")
    await run_worker(settings)
    assert await DeadLetters(producer.redis, settings.queue_name).get(job_id) is not None
    return job_id


# ---------------------------------------------------------------- roles in INGRESS_TOKENS


def test_both_forms_of_ingress_tokens_and_their_grants(monkeypatch):
    monkeypatch.setenv(
        "INGRESS_TOKENS", '{"a": "billing", "o": {"role": "operator"}, "s": {"source": "ops", "role": "operator"}}'
    )
    grants = load_settings(_env_file=None).grants()
    assert (grants["a"].source, grants["a"].role) == ("billing", "source")
    assert (grants["o"].source, grants["o"].role) == (None, "operator")
    assert (grants["s"].source, grants["s"].role) == ("ops", "operator")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ('{"s3cret-x": {"source": "a", "rol": "operator"}}', 'INGRESS_TOKENS: unknown key "rol": did you mean "role"?'),
        ('{"s3cret-x": {"source": "a", "role": "admin"}}', "INGRESS_TOKENS: Input should be 'source' or 'operator'"),
        ('{"s3cret-x": {"role": "source"}}', 'a token of role "source" needs a "source"'),
        ('{"s3cret-x": {"source": "bad source!"}}', "INGRESS_TOKENS: source 'bad source!' must be 1-64 characters"),
    ],
)
def test_a_bad_grant_refuses_the_start_naming_the_variable_not_the_token(monkeypatch, value, said):
    monkeypatch.setenv("INGRESS_TOKENS", value)
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    assert said in str(err.value)
    assert "s3cret" not in str(err.value)


def test_an_operator_token_without_a_source_is_the_consoles_only(http):
    job = {"kind": "chat", "model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    refused = http.post("/v1/jobs", json=job, headers={"Authorization": "Bearer tok-op"})
    assert refused.status_code == 401
    taken = http.post("/v1/jobs", json=job, headers={"Authorization": "Bearer tok-op-src", "Idempotency-Key": "k1"})
    assert taken.status_code == 202 and taken.json()["id"] == "ops@k1"


# ---------------------------------------------------------------- sign-in and sessions


def test_sign_in_sets_a_signed_httponly_strict_secure_cookie_that_holds_no_token(http):
    sign_in(http, "tok-a")
    cookie = next(c for c in http.cookies.jar if c.name == "llmr_console")
    assert cookie.secure and cookie.path == "/console/"
    assert "tok-a" not in cookie.value
    header = http.post(
        "/console/login", data={"token": "tok-a", "csrf": csrf_of(http, "/console/login")}, follow_redirects=False
    ).headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Secure" in header
    assert http.get("/console/").status_code == 200


def test_insecure_http_drops_secure_only(console_settings):
    settings = console_settings.model_copy(update={"console_insecure_http": True})
    with TestClient(create_app(settings)) as client:
        csrf = csrf_of(client, "/console/login")
        header = client.post("/console/login", data={"token": "tok-a", "csrf": csrf}, follow_redirects=False).headers[
            "set-cookie"
        ]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Secure" not in header


def test_an_unknown_token_or_no_session_does_not_get_in(http):
    csrf = csrf_of(http, "/console/login")
    refused = http.post("/console/login", data={"token": "nope", "csrf": csrf}, follow_redirects=False)
    assert refused.status_code == 401 and "unknown token" in refused.text
    away = http.get("/console/dlq", follow_redirects=False)
    assert away.status_code == 303 and away.headers["location"].startswith("/console/login")


def test_sign_in_without_its_csrf_token_is_refused(http):
    http.get("/console/login")
    assert http.post("/console/login", data={"token": "tok-a"}, follow_redirects=False).status_code == 403


def test_a_removed_token_stops_its_session_at_once(console_settings, http):
    sign_in(http, "tok-a")
    cookie = http.cookies.get("llmr_console")
    assert http.get("/console/", follow_redirects=False).status_code == 200
    tokens = {k: v for k, v in console_settings.ingress_tokens.items() if k != "tok-a"}
    # another ingress process (the same CONSOLE_SECRET) started without the token
    with TestClient(
        create_app(console_settings.model_copy(update={"ingress_tokens": tokens})), base_url="https://testserver"
    ) as other:
        other.cookies.set("llmr_console", cookie, path="/console/")
        assert other.get("/console/", follow_redirects=False).status_code == 303
    # and one with the token: the same cookie opens it (sessions are shared through the secret)
    with TestClient(create_app(console_settings), base_url="https://testserver") as same:
        same.cookies.set("llmr_console", cookie, path="/console/")
        assert same.get("/console/", follow_redirects=False).status_code == 200


def test_a_cookie_signed_with_another_secret_is_refused(console_settings, http):
    sign_in(http, "tok-op")
    cookie = http.cookies.get("llmr_console")
    other = console_settings.model_copy(update={"console_secret": SecretStr("another-secret-0123456789")})
    with TestClient(create_app(other), base_url="https://testserver") as client:
        client.cookies.set("llmr_console", cookie, path="/console/")
        assert client.get("/console/", follow_redirects=False).status_code == 303


def test_the_console_needs_a_secret_off_loopback_and_a_long_one(console_settings):
    bare = console_settings.model_copy(update={"console_secret": None})
    with pytest.raises(ConfigError, match="CONSOLE_SECRET is not set"):
        check_console_secret(bare, "0.0.0.0")
    check_console_secret(bare, "127.0.0.1")  # the demo: one process on loopback
    check_console_secret(bare.model_copy(update={"console_enabled": False}), "0.0.0.0")
    with pytest.raises(ConfigError, match="CONSOLE_SECRET is under 16 characters"):
        create_app(console_settings.model_copy(update={"console_secret": SecretStr("short")}))


def test_console_enabled_false_serves_no_console(console_settings):
    with TestClient(create_app(console_settings.model_copy(update={"console_enabled": False}))) as client:
        assert client.get("/console/login").status_code == 404


class Inline(HTMLParser):
    """Finds inline scripts, event-handler attributes and style attributes; and the controls
    (inputs, selects) with no <label for> naming them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.controls: set[str] = set()
        self.labels: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        given = dict(attrs)
        if tag == "script" and "src" not in given:
            self.found.append("inline <script>")
        self.found += [f"{tag} {k}=" for k in given if k.startswith("on") or k == "style"]
        if tag == "style":
            self.found.append("<style>")
        if tag in ("input", "select", "textarea") and given.get("type") != "hidden":
            self.controls.add(given.get("id") or f"(a {tag} without an id)")
        if tag == "label" and given.get("for"):
            self.labels.add(given["for"] or "")

    @property
    def unlabelled(self) -> set[str]:
        return self.controls - self.labels


PAGES = [
    "/console/",
    "/console/jobs",
    "/console/jobs?source=team-a",
    "/console/batches",
    "/console/dlq",
    "/console/quarantine",
    "/console/schedules",
    "/console/spend",
    "/console/spend?source=team-a",
]


def test_every_page_has_the_csp_and_no_inline_script_or_style(http):
    sign_in(http, "tok-op")
    for path in [*PAGES, "/console/dlq/purge", "/console/login"]:
        answer = http.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
        parser = Inline()
        parser.feed(answer.text)
        assert parser.found == [], path
        assert parser.unlabelled == set(), path


# ---------------------------------------------------------------- tenancy and actions


async def test_replay_and_purge_change_redis_as_the_cli_does(http, settings, make_producer, redis):
    job_id = await dead_letter("team-a", settings, make_producer)
    sign_in(http, "tok-op")
    assert job_id in http.get("/console/dlq").text
    # a forged post, without the CSRF token: refused, the dead letter stays
    forged = http.post("/console/dlq/replay", data={"id": job_id})
    assert forged.status_code == 403 and await redis.hexists(DLQ, job_id)
    done = http.post("/console/dlq/replay", data={"id": job_id, "csrf": csrf_of(http)})
    assert done.status_code == 200 and f"replayed {job_id}" in done.text
    assert not await redis.hexists(DLQ, job_id)
    assert await redis.exists(job_key(job_id)) and await redis.zscore(settings.queue_name, job_id) is not None
    await run_worker(settings)  # it fails again: a dead letter again
    assert await redis.hexists(DLQ, job_id)
    unconfirmed = http.post("/console/dlq/purge", data={"csrf": csrf_of(http)})
    assert unconfirmed.status_code == 400 and await redis.hexists(DLQ, job_id)
    purged = http.post("/console/dlq/purge", data={"csrf": csrf_of(http), "confirm": "purge"})
    assert "purged 1 dead letters" in purged.text and not await redis.exists(DLQ)


async def test_a_source_token_sees_only_its_source_and_acts_on_no_dead_letter(http, settings, make_producer, redis):
    mine = await dead_letter("team-a", settings, make_producer)
    theirs = await dead_letter("team-b", settings, make_producer)
    sign_in(http, "tok-a")
    listed = http.get("/console/dlq").text
    assert mine in listed and theirs not in listed
    assert http.get("/console/dlq/show", params={"id": theirs}).status_code == 404
    assert http.get("/console/jobs", params={"id": theirs}).status_code == 404
    assert http.get("/console/jobs", params={"id": mine}).status_code == 200
    refused = http.post("/console/dlq/replay", data={"id": mine, "csrf": csrf_of(http)})
    assert refused.status_code == 403 and await redis.hexists(DLQ, mine)
    assert http.get("/console/quarantine").status_code == 403
    assert http.get("/console/schedules").status_code == 403
    spend = http.get("/console/spend", params={"by": "model"}).text
    assert "team-b" not in spend


def test_sign_out_needs_the_csrf_token_and_ends_the_session(http):
    sign_in(http, "tok-a")
    assert http.post("/console/logout", follow_redirects=False).status_code == 403
    out = http.post("/console/logout", data={"csrf": csrf_of(http)}, follow_redirects=False)
    assert out.status_code == 303
    assert http.get("/console/", follow_redirects=False).status_code == 303


def test_after_sign_in_only_a_console_path_is_followed(http):
    http.get("/console/login")
    csrf = csrf_of(http, "/console/login")
    answer = http.post(
        "/console/login", data={"token": "tok-a", "csrf": csrf, "next": "https://evil.example/"}, follow_redirects=False
    )
    assert answer.headers["location"] == "/console/"


def test_redis_is_left_alone_by_a_console_never_opened(console_settings, redis_url):
    keys = set(Redis.from_url(redis_url).keys())
    with TestClient(create_app(console_settings)) as client:
        assert client.get("/healthz").status_code == 200
    assert set(Redis.from_url(redis_url).keys()) == keys


def test_an_ingress_loads_the_templates_only_when_a_page_is_asked_for(console_settings):
    """In a fresh process (this one has Jinja2 loaded already): the app with its console mounted
    and a request to the API leave Jinja2 out; the first page loads it."""
    script = """
import sys
from fastapi.testclient import TestClient
from producers.http.app import create_app
from worker.contract.settings import load_settings
with TestClient(create_app(load_settings(_env_file=None))) as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/console/static/console.css").status_code == 200
    print("jinja2" in sys.modules)
    assert client.get("/console/login").status_code == 200
    print("jinja2" in sys.modules)
"""
    env = {**os.environ, **settings_env(console_settings)}
    ran = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["False", "True"]


async def test_an_operator_resumes_a_paused_queue_a_source_token_cannot(http, settings, redis):
    await Gate(redis, settings.probe_interval_s).close("credits", "insufficient credits", "gpt-4.1")
    sign_in(http, "tok-a")
    assert "The queue is paused (credits)" in http.get("/console/").text
    refused = http.post("/console/gate/open", data={"csrf": csrf_of(http)})
    assert refused.status_code == 403 and await redis.exists(GATE)
    http.cookies.clear()
    sign_in(http, "tok-op")
    assert http.post("/console/gate/open", data={}).status_code == 403 and await redis.exists(GATE)
    done = http.post("/console/gate/open", data={"csrf": csrf_of(http)})
    assert "the queue is resumed" in done.text and not await redis.exists(GATE)


async def test_the_jobs_page_lists_the_sources_queued_jobs_only(http, settings, make_producer):
    mine = await (await make_producer(settings, source="team-a")).chat("gpt-4.1", "hi", job_id="team-a@q1")
    theirs = await (await make_producer(settings, source="team-b")).chat("gpt-4.1", "hi", job_id="team-b@q1")
    sign_in(http, "tok-a")
    page = http.get("/console/jobs").text
    assert mine in page and theirs not in page
    http.cookies.clear()
    sign_in(http, "tok-op")
    page = http.get("/console/jobs").text
    assert mine in page and theirs in page


async def test_under_fair_share_the_jobs_page_lists_the_jobs_waiting_in_sub_queues(console_settings, make_producer):
    fair = console_settings.model_copy(update={"fair_share": True})
    mine = await (await make_producer(fair, source="team-a", own_settings=True)).chat(
        "gpt-4.1", "hi", job_id="team-a@w1"
    )
    theirs = await (await make_producer(fair, source="team-b", own_settings=True)).chat(
        "gpt-4.1", "hi", job_id="team-b@w1"
    )
    with TestClient(create_app(fair), base_url="https://testserver") as client:
        sign_in(client, "tok-a")
        page = client.get("/console/jobs").text
        assert mine in page and "waiting its share" in page and theirs not in page
        client.cookies.clear()
        sign_in(client, "tok-op")
        page = client.get("/console/jobs").text
        assert mine in page and theirs in page and page.count("waiting its share") == 2


async def test_run_now_submits_as_the_cli_does_with_no_source_stamped(http, console_settings, redis, tmp_path):
    line = {
        "custom_id": "n1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "nightly"}]},
    }
    (tmp_path / "in.jsonl").write_text(json.dumps(line) + "\n")
    (tmp_path / "s.toml").write_text(
        f'[[schedule]]\nname = "nightly"\ncron = "0 2 * * *"\ninput = "{tmp_path / "in.jsonl"}"\n'
    )
    settings = console_settings.model_copy(update={"schedules_file": str(tmp_path / "s.toml")})
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        sign_in(client, "tok-op")
        assert "nightly" in client.get("/console/schedules").text
        done = client.post("/console/schedules/nightly/run", data={"csrf": csrf_of(client)})
    batch_id = re.search(r"submitted (batch_sched_nightly_[0-9TZ]+)", done.text)
    assert batch_id, done.text
    assert await redis.exists(batch_key(batch_id[1]))
    records = [await redis.get(k) for k in await redis.keys(job_key(f"{batch_id[1]}:*"))]
    assert records and all(b'"source"' not in r for r in records)  # as `llm-router schedule run`: no source


async def test_the_overview_counts_the_jobs_a_worker_runs(http, settings, make_producer, redis):
    producer = await make_producer(settings, source="team-a")
    job_id = await producer.chat("gpt-4.1", "hi", job_id="team-a@running-1")
    sign_in(http, "tok-op")
    assert re.search(r'id="running">0<', http.get("/console/").text)
    # as a worker's claim leaves it: an in-progress mark, the entry scored at its lease's end
    await redis.set(in_progress_key(job_id), b"1", px=30_000)
    await redis.zadd(settings.queue_name, {job_id: int(time.time() * 1000) + 30_000})
    assert re.search(r'id="running">1<', http.get("/console/").text)


async def test_a_pending_jobs_page_follows_its_events_a_finished_one_shows_its_answer(http, settings, make_producer):
    producer = await make_producer(settings, source="team-a")
    job_id = await producer.chat("gpt-4.1", "hello there", job_id="team-a@page-1", stream=True)
    sign_in(http, "tok-a")
    pending = http.get("/console/jobs", params={"id": job_id}).text
    assert "data-events=" in pending and "queued" in pending
    await run_worker(settings)
    done = http.get("/console/jobs", params={"id": job_id}).text
    assert "data-events=" not in done  # (its kept events would add the text a second time)
    assert done.count("[gpt-4.1] You said: hello there") == 1 and "succeeded" in done


def test_a_bad_value_is_a_console_page_naming_the_field(http):
    sign_in(http, "tok-op")
    answer = http.get("/console/dlq", params={"page": -1})
    assert answer.status_code == 400 and answer.headers["content-type"].startswith("text/html")
    assert "page: Input should be greater than or equal to 0" in answer.text
    assert "content-security-policy" in answer.headers


def source_rows(page: str) -> dict[str, tuple[int, int, str]]:
    """The Overview's table of sources: source -> (waiting, running, weight)."""
    table = re.search(r'<table id="sources">(.*?)</table>', page, re.S)
    assert table, page
    rows = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td>(\d+)</td><td>[^<]*</td><td>([^<]+)</td>", table[1])
    return {s: (int(w), int(r), weight) for s, w, r, weight in rows}


async def test_the_overview_shows_each_sources_queue_as_llm_router_sources_does(console_settings, make_producer):
    """FAIR_SHARE on, jobs of two sources waiting and no worker: the operator sees both sources'
    counts (and a source SOURCE_WEIGHTS names with nothing waiting); a source token its own row."""
    settings = console_settings.model_copy(update={"fair_share": True, "source_weights": {"team-a": 3, "idle": 2}})
    a = await make_producer(settings, source="team-a", own_settings=True)
    b = await make_producer(settings, source="team-b", own_settings=True)
    for i in range(2):
        await a.chat("gpt-4.1", "hi", job_id=f"team-a@w{i}")
    await b.chat("gpt-4.1", "hi", job_id="team-b@w0")
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        sign_in(client, "tok-op")
        assert source_rows(client.get("/console/").text) == {
            "team-a": (2, 0, "3"),
            "team-b": (1, 0, "1"),
            "idle": (0, 0, "2"),
        }
        client.cookies.clear()
        sign_in(client, "tok-a")
        assert source_rows(client.get("/console/").text) == {"team-a": (2, 0, "3")}


def recent_rows(page: str) -> list[tuple[str, str]]:
    """The Jobs page's table of jobs that ended: (job id, status), as listed."""
    table = re.search(r'<table id="recent">(.*?)</table>', page, re.S)
    assert table, page
    return re.findall(
        r'<tr><td><a href="[^"]+"><code>([^<]+)</code></a></td><td><span class="[^"]+">([^<]+)<', table[1]
    )


async def test_the_jobs_page_lists_the_jobs_that_ended_newest_first_by_source_and_paged(
    http, settings, make_producer, monkeypatch
):
    a, b = await make_producer(settings, source="team-a"), await make_producer(settings, source="team-b")
    await a.chat("gpt-4.1", "hi", job_id="team-a@r1")
    await run_worker(settings)
    await b.chat("gpt-4.1", "hi", job_id="team-b@r1")
    await run_worker(settings)
    dead = await dead_letter("team-a", settings, make_producer)
    sign_in(http, "tok-a")
    # a source token: its own jobs, whatever source it asks for
    mine = [("team-a@dead-1", "dead-lettered"), ("team-a@r1", "succeeded")]
    assert dead == "team-a@dead-1"
    assert recent_rows(http.get("/console/jobs").text) == mine
    assert recent_rows(http.get("/console/jobs", params={"source": "team-b"}).text) == mine
    http.cookies.clear()
    sign_in(http, "tok-op")
    assert recent_rows(http.get("/console/jobs").text) == [mine[0], ("team-b@r1", "succeeded"), mine[1]]
    assert recent_rows(http.get("/console/jobs", params={"source": "team-b"}).text) == [("team-b@r1", "succeeded")]
    # paged: each page's Older link leads to the next, down to the first job that ended
    monkeypatch.setattr("producers.console.views.PAGE", 1)
    seen, path = [], "/console/jobs?source=team-a"
    while path:
        page = http.get(path).text
        seen += recent_rows(page)
        older = re.search(r'<a href="(/console/jobs\?[^"]*before=[^"]+)">Older</a>', page)
        path = older[1].replace("&amp;", "&") if older else ""
    assert seen == mine
    assert http.get("/console/jobs", params={"before": "x"}).status_code == 400


def table_rows(page: str, table_id: str) -> dict[str, tuple[str, str, str]]:
    """A Spend table's rows: name -> (USD, calls, cache saved)."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S)
    assert table, page
    rows = re.findall(
        r"<tr[^>]*><t[dh][^>]*>([^<]+)</t[dh]><td>([^<]+)</td><td>(\d+)</td><td>\d+</td><td>\d+</td><td>([^<]+)</td>",
        table[1],
    )
    return {name: (usd, calls, saved) for name, usd, calls, saved in rows}


async def test_the_spend_page_shows_a_sources_spend_by_model_with_the_caches_savings(http, settings, make_producer):
    """team-a calls two models, one twice with the same temperature-0 request (the second answered
    by the cache); team-b one: team-a's token sees its own by model, savings included; the
    operator any source's it asks for."""
    a, b = await make_producer(settings, source="team-a"), await make_producer(settings, source="team-b")
    await a.chat("gpt-4.1", "same", temperature=0)
    await a.chat("claude-3-sonnet", "hi")
    await b.chat("gpt-4.1", "hi")
    await run_worker(settings)
    await a.chat("gpt-4.1", "same", temperature=0)  # a hit: costs nothing, saves the first's cost
    await run_worker(settings)
    sign_in(http, "tok-a")
    page = http.get("/console/spend").text
    mine = table_rows(page, "source-by-model")
    assert set(mine) == {"gpt-4.1", "claude-3-sonnet", "total"}, mine
    usd, calls, saved = mine["gpt-4.1"]
    assert calls == "1" and float(saved) == pytest.approx(float(usd)) and float(usd) > 0
    assert float(mine["claude-3-sonnet"][2]) == 0 and mine["total"][1] == "2"
    assert "team-b" not in page
    # a source token cannot ask for another's
    assert "team-b" not in http.get("/console/spend", params={"source": "team-b"}).text
    http.cookies.clear()
    sign_in(http, "tok-op")
    assert 'id="source-by-model"' not in http.get("/console/spend").text
    theirs = table_rows(http.get("/console/spend", params={"source": "team-b"}).text, "source-by-model")
    assert set(theirs) == {"gpt-4.1", "total"} and theirs["gpt-4.1"][1] == "1"
    # by source, each source's savings are its models' together
    by_source = http.get("/console/spend", params={"by": "source"}).text
    assert re.search(
        r"<tr><td>team-a</td><td>[^<]+</td><td>2</td><td>\d+</td><td>\d+</td><td>" + re.escape(saved), by_source
    )


def walk(client: TestClient, path: str, link: str, pattern: str) -> list[str]:
    """Every page of a list from `path` on, following the link named `link`: what `pattern`
    finds on each page, in order."""
    seen: list[str] = []
    while path:
        answer = client.get(path)
        assert answer.status_code == 200, (path, answer.text[:300])
        seen += re.findall(pattern, answer.text)
        follow = re.search(rf'<a href="([^"]+)">{link}</a>', answer.text)
        path = html.unescape(follow[1]) if follow else ""
    return seen


async def test_large_lists_are_paged_each_row_on_one_page(http, settings, make_producer, redis, monkeypatch):
    """A page of one row: each list's next link leads through every row once, in order (queue,
    dead letters, quarantine, batches, spend rows)."""
    monkeypatch.setattr("producers.console.views.PAGE", 1)
    a = await make_producer(settings, source="team-a")
    for i in range(2):
        await a.chat("no-such-model", "dead", fallbacks=[], job_id=f"team-a@dead-{i}")
    await a.chat("gpt-4.1", "hi", job_id="team-a@ok")
    await a.chat("claude-3-sonnet", "hi", job_id="team-a@ok2")
    await run_worker(settings)
    queued = [await a.chat("gpt-4.1", "hi", job_id=f"team-a@q{i}") for i in range(3)]
    await (await make_producer(settings, source="team-b")).chat("gpt-4.1", "hi", job_id="team-b@q0")
    line = {
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]},
    }
    batches = [(await a.batches.submit([line | {"custom_id": "x"}])).id for _ in range(2)]
    quarantine = Quarantine(redis, settings.queue_name, settings.quarantine_max)
    for i in range(3):
        await redis.zadd(settings.queue_name, {f"bad id {i}": 0})
        await quarantine.add(f"bad id {i}".encode(), "test")
    sign_in(http, "tok-op")
    in_queue = walk(
        http, "/console/jobs?source=team-a", "Later in the queue", r"<code>(team-a@q\d)</code></a></td><td>q"
    )
    assert in_queue == queued
    every = walk(http, "/console/jobs", "Later in the queue", r"<code>(team-\w@q\d)</code></a></td><td>q")
    assert sorted(every) == sorted([*queued, "team-b@q0"])
    assert walk(http, "/console/dlq", "Older", r"<code>(team-a@dead-\d)</code>") == ["team-a@dead-1", "team-a@dead-0"]
    assert walk(http, "/console/quarantine", "Older", r"<code>(bad id \d)</code>") == [f"bad id {i}" for i in (2, 1, 0)]
    assert walk(http, "/console/batches", "Older", r"<code>(batch_\w+)</code>") == batches[::-1]
    models = walk(http, "/console/spend?by=model", "Next", r"<tr><td>(gpt-4.1|claude-3-sonnet)</td>")
    assert sorted(models) == ["claude-3-sonnet", "gpt-4.1"]


async def test_a_source_token_reaches_none_of_anothers_objects_by_any_console_path(http, settings, make_producer):
    """Every console path that names an object, asked by team-a for team-b's: 404 (its batch's
    page, progress, files and cancel; its job's page and live events; its dead letter), and
    nothing of team-b's on team-a's lists."""
    b = await make_producer(settings, source="team-b")
    job_id = await b.chat("gpt-4.1", "theirs", job_id="team-b@private", stream=True)
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": body}
    sign_in(http, "tok-b")  # team-b makes a batch through the console's ingress, as its token does
    with_token = {"Authorization": "Bearer tok-b"}
    uploaded = http.post(
        "/v1/files",
        files={"file": ("in.jsonl", json.dumps(line).encode())},
        data={"purpose": "batch"},
        headers=with_token,
    )
    made = http.post(
        "/v1/batches",
        json={"input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers=with_token,
    )
    batch_id = made.json()["id"]
    dead = await dead_letter("team-b", settings, make_producer)
    http.cookies.clear()
    sign_in(http, "tok-a")
    for path in (
        f"/console/batches/{batch_id}",
        f"/console/batches/{batch_id}/progress",
        f"/console/batches/{batch_id}/output.jsonl",
        f"/console/batches/{batch_id}/errors.jsonl",
        f"/console/jobs?id={job_id}",
        f"/console/jobs/events?id={job_id}",
        f"/console/jobs?id={dead}",
        f"/console/dlq/show?id={dead}",
    ):
        assert http.get(path).status_code == 404, path
    assert http.post(f"/console/batches/{batch_id}/cancel", data={"csrf": csrf_of(http)}).status_code == 404
    for path in ("/console/", "/console/jobs", "/console/batches", "/console/dlq", "/console/spend"):
        shown = http.get(path).text
        assert "team-b" not in shown and batch_id not in shown, path
    http.cookies.clear()
    sign_in(http, "tok-b")  # (each path is there for its owner)
    assert http.get(f"/console/batches/{batch_id}/progress").status_code == 200
    assert http.get(f"/console/dlq/show?id={dead}").status_code == 200


async def test_replay_all_and_the_quarantine_purge_change_redis_as_the_cli_does(http, settings, make_producer, redis):
    """`dlq replay --all`: every dead letter back in the queue under its id; `quarantine purge`,
    once confirmed: the quarantine gone, only for an operator."""
    a = await make_producer(settings, source="team-a")
    dead = [await a.chat("no-such-model", "dead", fallbacks=[], job_id=f"team-a@all-{i}") for i in range(2)]
    await run_worker(settings)
    assert await redis.hlen(DLQ) == 2
    await redis.zadd(settings.queue_name, {"bad id": 0})
    await Quarantine(redis, settings.queue_name, settings.quarantine_max).add(b"bad id", "test")
    sign_in(http, "tok-a")
    assert http.post("/console/quarantine/purge", data={"csrf": csrf_of(http), "confirm": "purge"}).status_code == 403
    assert http.post("/console/dlq/replay", data={"csrf": csrf_of(http), "all": "true"}).status_code == 403
    http.cookies.clear()
    sign_in(http, "tok-op")
    done = http.post("/console/dlq/replay", data={"csrf": csrf_of(http), "all": "true"})
    assert "replayed 2 jobs" in done.text and not await redis.exists(DLQ)
    assert all([await redis.zscore(settings.queue_name, j) is not None for j in dead])
    assert all([await redis.exists(job_key(j)) for j in dead])
    assert "This forgets 1 quarantined entries" in http.get("/console/quarantine/purge").text
    assert await redis.exists(QUARANTINE)
    purged = http.post("/console/quarantine/purge", data={"csrf": csrf_of(http), "confirm": "purge"})
    assert "purged 1 quarantined entries" in purged.text and not await redis.exists(QUARANTINE)
