"""The operator console in a real browser: Playwright (Python) driving Debian's Chromium
(`/usr/bin/chromium`: `make test` installs it; Playwright's own browser downloads are not used)
against a private Redis, the simulator, a worker and `llm-router api` as processes.

Each page loads; each action (replay, purge, cancel, run now) changes Redis as its CLI verb
would; a source token neither sees nor acts on another source's objects; a forged form post
without the CSRF token is refused; a running job's text shows before the job ends; a batch's bar
moves. Screenshots of each page at a laptop and a phone width go to CONSOLE_SHOTS (default
`.artifacts/console/`, gitignored); `CONSOLE_SHOTS=docs/console` refreshes the committed set.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright import sync_api as playwright
from playwright.sync_api import expect
from pydantic import SecretStr
from redis import Redis

from harness.wait import wait_until
from tests.helpers import sim_admin
from tests.ingress import ingress_settings, running
from worker.contract.keys import DLQ, batch_key, job_key, result_key
from worker.contract.settings import TokenGrant

# Debian's build (`make test` installs the package): Playwright downloads no browser here
CHROMIUM = "/usr/bin/chromium"

SHOTS = Path(os.environ.get("CONSOLE_SHOTS", ".artifacts/console"))
WIDTHS = {"laptop": (1366, 900), "phone": (390, 844)}
TOKENS = {
    "tok-a": "team-a",
    "tok-b": "team-b",
    "tok-op": TokenGrant(role="operator"),
}
PROMPT = "one two three four five six seven eight nine ten"


@dataclass
class Stack:
    url: str
    redis: Redis
    schedules: Path

    def http(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def job(self, token: str, key: str, model: str = "gpt-4o", stream: bool = False, **extra: object) -> str:
        body = {"kind": "chat", "model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}
        if stream:
            body["stream"] = True
        with self.http(token) as http:
            answer = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        assert answer.status_code == 202, answer.text
        return str(answer.json()["id"])

    def dead(self, token: str, key: str) -> str:
        job_id = self.job(token, key, model="no-such-model", fallbacks=[])
        wait_until(lambda: self.redis.hexists(DLQ, job_id), 30, f"{job_id} dead-lettered")
        return job_id

    def batch(self, token: str, lines: int) -> str:
        rows = [
            {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"{PROMPT} {i}"}]},
            }
            for i in range(lines)
        ]
        data = "\n".join(json.dumps(r) for r in rows).encode()
        with self.http(token) as http:
            uploaded = http.post("/v1/files", files={"file": ("in.jsonl", io.BytesIO(data))}, data={"purpose": "batch"})
            assert uploaded.status_code == 200, uploaded.text
            made = http.post(
                "/v1/batches",
                json={
                    "input_file_id": uploaded.json()["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            )
        assert made.status_code == 200, made.text
        return str(made.json()["id"])


@pytest.fixture(scope="module")
def stack(redis_server: str, sim_server, tmp_path_factory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("console")
    requests = work / "requests.jsonl"
    requests.write_text(
        json.dumps(
            {
                "custom_id": "n1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "nightly"}]},
            }
        )
        + "\n"
    )
    schedules = work / "schedules.toml"
    schedules.write_text(f'[[schedule]]\nname = "nightly"\ncron = "0 2 * * *"\ninput = "{requests}"\n')
    settings = ingress_settings(
        redis_server,
        sim_server.base_url,
        "llm-router:console-test",
        ingress_tokens=TOKENS,
        console_secret=SecretStr("console-browser-secret-0123456789"),
        console_insecure_http=True,
        stream_events_ttl_s=600,
        schedules_file=str(schedules),
        # fair share on: the Overview's queue by source (team-a weighted, as its screenshot shows)
        fair_share=True,
        source_weights={"team-a": 2},
    )
    with running(settings, work) as url, Redis.from_url(redis_server) as redis:
        yield Stack(url, redis, schedules)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield found
        found.close()


def signed_in(browser, stack: Stack, token: str, width: str = "laptop", **context: str):
    """A new browser context (its own cookies; `context`: Playwright's options, e.g. its time
    zone) signed in with `token`: its page."""
    w, h = WIDTHS[width]
    page = browser.new_context(viewport={"width": w, "height": h}, **context).new_page()
    page.goto(f"{stack.url}/console/")
    assert "/console/login" in page.url
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{stack.url}/console/")
    return page


def shot(page, name: str, width: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)


def test_every_page_loads_at_laptop_and_phone_width(stack, browser, sim):
    sim_admin(sim, "/_sim/reset", {})
    job_id = stack.job("tok-a", "shown")
    with stack.http("tok-a") as http:
        assert http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()["status"] == "succeeded"
        # the same temperature-0 request twice: the second is the cache's (its saving on Spend)
        for key in ("cached-1", "cached-2"):
            again = stack.job("tok-a", key, temperature=0)
            assert http.get(f"/v1/jobs/{again}", params={"wait": 20}).json()["status"] == "succeeded"
    dead = stack.dead("tok-a", "dead-shown")
    batch_id = stack.batch("tok-a", 3)
    pages = {
        "overview": ("/console/", "Overview"),
        "jobs": (f"/console/jobs?id={job_id}", job_id),
        "jobs-list": ("/console/jobs", job_id),  # in the jobs that ended lately
        "batches": ("/console/batches", batch_id),
        "batch": (f"/console/batches/{batch_id}", "Progress"),
        "dlq": ("/console/dlq", dead),
        "dead-letter": (f"/console/dlq/show?id={dead}", "Payload"),
        "quarantine": ("/console/quarantine", "Quarantine"),
        "schedules": ("/console/schedules", "nightly"),
        "spend": ("/console/spend", "USD per day"),
        "spend-source": ("/console/spend?source=team-a", "Source team-a by model"),
    }
    errors: list[str] = []
    for width in WIDTHS:
        page = signed_in(browser, stack, "tok-op", width)
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        for name, (path, shows) in pages.items():
            answer = page.goto(f"{stack.url}{path}")
            assert answer is not None and answer.status == 200, (name, answer and answer.status)
            assert shows in page.inner_text("main"), name
            # times are shown in the viewer's zone by the script (their UTC form in the title)
            for t in page.locator("time[datetime]").all()[:3]:
                if t.get_attribute("datetime"):
                    assert t.get_attribute("title", timeout=5000), name
            shot(page, name, width)
        page.context.close()
    assert errors == []  # no script error, no CSP violation


def test_times_show_in_the_viewers_time_zone(stack, browser, sim):
    """A viewer in Kolkata (UTC+05:30, a half-hour zone) with British dates: a dead letter's time
    reads as their clock does, its UTC form in the title."""
    sim_admin(sim, "/_sim/reset", {})
    dead = stack.dead("tok-a", "dead-zone")
    page = signed_in(browser, stack, "tok-a", timezone_id="Asia/Kolkata", locale="en-GB")
    page.goto(f"{stack.url}/console/dlq")
    shown = page.locator("tr", has_text=dead).locator("time")
    utc = shown.get_attribute("datetime") or ""
    local = datetime.fromisoformat(utc.replace("Z", "+00:00")) + timedelta(hours=5, minutes=30)
    expect(shown).to_have_text(local.strftime("%d/%m/%Y, %H:%M:%S"))
    expect(shown).to_have_attribute("title", f"{utc} (UTC)")
    page.context.close()


def test_replay_and_purge_act_on_redis_as_the_cli(stack, browser, sim):
    sim_admin(sim, "/_sim/reset", {})
    job_id = stack.dead("tok-a", "dead-replay")
    page = signed_in(browser, stack, "tok-op")
    page.goto(f"{stack.url}/console/dlq")
    page.get_by_role("button", name=f"Replay {job_id}").click()
    expect(page.locator("main")).to_contain_text(f"replayed {job_id}")
    # back in the queue under the same id: it runs, fails again, and is a dead letter again
    wait_until(lambda: stack.redis.hexists(DLQ, job_id), 30, f"{job_id} dead-lettered again")
    page.goto(f"{stack.url}/console/dlq")
    page.get_by_role("link", name="Purge…").click()
    page.get_by_label("Type purge to confirm").fill("purge")
    page.get_by_role("button", name="Purge").click()
    expect(page.locator("main")).to_contain_text("purged")
    assert not stack.redis.exists(DLQ)
    page.context.close()


def test_cancel_and_the_batch_bar_moves(stack, browser, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "latency_per_token_ms": 150})
    moving = stack.batch("tok-a", 4)
    page = signed_in(browser, stack, "tok-a")
    page.goto(f"{stack.url}/console/batches/{moving}")
    bar = page.locator("#batch-bar")
    start = int(bar.get_attribute("value") or 0)
    assert start < 4, "the batch ended before its page loaded"
    # the page's script follows the batch: the bar reaches the end without a reload (the page's
    # CSP forbids eval, so the waits are Playwright's own assertions, not wait_for_function)
    expect(bar).to_have_attribute("value", "4", timeout=60_000)
    expect(page.locator("#batch-status")).to_have_text("completed")
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "latency_per_token_ms": 2000})
    cancelled = stack.batch("tok-a", 3)
    page.goto(f"{stack.url}/console/batches/{cancelled}")
    page.get_by_role("button", name="Cancel the batch").click()
    # (the answer is the batch's page again: its status says the cancel was taken)
    expect(page.locator("#batch-status")).to_have_text(re.compile("cancelling|cancelled"))
    status = stack.redis.hget(batch_key(cancelled), "status")
    assert status in (b"cancelling", b"cancelled"), status
    sim_admin(sim, "/_sim/reset", {})
    page.context.close()


def test_run_now_submits_the_schedules_batch(stack, browser):
    page = signed_in(browser, stack, "tok-op")
    page.goto(f"{stack.url}/console/schedules")
    page.get_by_role("button", name="Run nightly now").click()
    expect(page.locator("main")).to_contain_text("submitted")
    said = page.inner_text("main")
    assert "submitted batch_sched_nightly_" in said
    batch_id = said.split("submitted ", 1)[1].split()[0]
    assert stack.redis.exists(batch_key(batch_id))
    page.context.close()


def test_a_source_token_sees_and_acts_on_its_own_only(stack, browser, sim):
    sim_admin(sim, "/_sim/reset", {})
    theirs_job = stack.job("tok-b", "b-private")
    theirs_dead = stack.dead("tok-b", "b-dead")
    theirs_batch = stack.batch("tok-b", 1)
    page = signed_in(browser, stack, "tok-a")
    for path in (
        f"/console/jobs?id={theirs_job}",
        f"/console/dlq/show?id={theirs_dead}",
        f"/console/batches/{theirs_batch}",
    ):
        answer = page.goto(f"{stack.url}{path}")
        assert answer is not None and answer.status == 404, path
    page.goto(f"{stack.url}/console/dlq")
    assert theirs_dead not in page.inner_text("main")
    page.goto(f"{stack.url}/console/batches")
    assert theirs_batch not in page.inner_text("main")
    for path in ("/console/quarantine", "/console/schedules"):
        answer = page.goto(f"{stack.url}{path}")
        assert answer is not None and answer.status == 403, path
    # acting on another's batch with a valid session and CSRF token: refused, nothing changed
    csrf = page.goto(f"{stack.url}/console/") and page.locator("input[name=csrf]").first.get_attribute("value")
    before = stack.redis.hget(batch_key(theirs_batch), "status")
    answer = page.request.post(f"{stack.url}/console/batches/{theirs_batch}/cancel", form={"csrf": csrf or ""})
    assert answer.status == 404 and stack.redis.hget(batch_key(theirs_batch), "status") == before
    page.context.close()


def test_the_console_is_usable_by_keyboard_alone(stack, browser):
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    page.goto(f"{stack.url}/console/login")
    expect(page.get_by_label("Token")).to_be_focused()  # the sign-in field takes the keys at once
    page.keyboard.type("tok-op")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{stack.url}/console/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Overview")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the next link: Jobs
    page.wait_for_url(f"{stack.url}/console/jobs")
    page.get_by_label("Job id").focus()
    page.keyboard.type("team-a@nothing-here")
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_contain_text("no job team-a@nothing-here")
    page.context.close()


def test_a_forged_post_without_the_csrf_token_is_refused(stack, browser, sim):
    sim_admin(sim, "/_sim/reset", {})
    job_id = stack.dead("tok-a", "dead-forged")
    page = signed_in(browser, stack, "tok-op")
    # the signed-in browser's own cookie goes with it; only the CSRF field is missing
    answer = page.request.post(f"{stack.url}/console/dlq/replay", form={"id": job_id})
    assert answer.status == 403 and stack.redis.hexists(DLQ, job_id)
    assert not stack.redis.exists(job_key(job_id))
    page.context.close()


def test_a_running_jobs_text_shows_before_it_ends(stack, browser, sim):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o", "latency_per_token_ms": 300})
    job_id = stack.job("tok-a", "live-1", stream=True)
    page = signed_in(browser, stack, "tok-a")
    page.goto(f"{stack.url}/console/jobs?id={job_id}")
    expect(page.locator("#answer")).not_to_have_text("", timeout=30_000)
    shown = page.inner_text("#answer")
    # text on the page while the job has no result yet
    assert shown and not stack.redis.exists(result_key(job_id)), shown
    expect(page.locator("#answer")).to_have_attribute("data-done", "true", timeout=60_000)
    assert page.inner_text("#answer") == f"[gpt-4o] You said: {PROMPT}"
    sim_admin(sim, "/_sim/reset", {})
    page.context.close()


def test_the_committed_screenshots_are_a_full_set():
    """docs/console holds one current set for the docs (CONSOLE_SHOTS=docs/console refreshes it)."""
    committed = Path(__file__).resolve().parents[2] / "docs" / "console"
    if not committed.exists():
        pytest.skip("no committed set yet")
    names = {p.name for p in committed.glob("*.png")}
    shown = ("overview", "jobs", "jobs-list", "batch", "dlq", "spend", "spend-source")
    assert {f"{n}-{w}.png" for n in shown for w in WIDTHS} <= names
