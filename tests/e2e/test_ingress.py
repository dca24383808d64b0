"""The HTTP ingress (`llm-router api`) as a client sees it: a real `llm-router api` process and
a real `llm-router worker` against a private redis-server and the simulator, driven by the
official `openai` SDK, a Node client (`fetch`) and plain HTTP. In-process apps (TestClient)
cover the queue-depth 429 and /readyz through a Redis restart."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from harness.redis_server import PrivateRedis
from harness.wait import wait_until, wait_until_async
from producers.api import JobRejected, validate
from producers.http.app import create_app
from tests.helpers import sim_admin
from tests.ingress import TOKENS, Ingress, ingress_settings, running
from worker.contract.keys import file_key, job_key, source_files_key
from worker.contract.models import ChatJob, JobResult
from worker.contract.settings import Settings
from worker.contract.store import ResultStore

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack(redis_server, sim_server, tmp_path_factory):
    settings = ingress_settings(
        redis_server, sim_server.base_url, "llm-router:ingress-test", ingress_max_body_bytes=64 * 1024
    )
    with running(settings, tmp_path_factory.mktemp("ingress")) as url:
        yield Ingress(url, settings)


def test_openai_sdk_chat_completion_and_models(stack, sim):
    client = stack.client()
    answer = client.chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "Hi there"}], max_tokens=50
    )
    assert answer.object == "chat.completion" and answer.model == "gpt-4.1"
    assert answer.choices[0].message.content == "[gpt-4.1] You said: Hi there"
    assert answer.choices[0].finish_reason == "stop"
    cost = answer.usage.model_extra["cost"]
    assert cost == pytest.approx(sim_admin(sim, "/_sim/stats")["charged"]["gpt-4.1"], abs=1e-9)
    job_id = answer.id.removeprefix("chatcmpl-")
    record = stack.http().get(f"/v1/jobs/{job_id}").json()
    assert record["source"] == "team-a" and record["status"] == "succeeded"

    # our options ride under llm_router: a fallback past a model that is down
    sim_admin(sim, "/_sim/config", {"model": "claude-3-sonnet", "down": True})
    answer = client.chat.completions.create(
        model="claude-3-sonnet", messages=HELLO, extra_body={"llm_router": {"fallbacks": ["gpt-4o"]}}
    )
    assert answer.model == "gpt-4o" and answer.choices[0].message.content == "[gpt-4o] You said: hello"
    assert "gpt-4.1" in {m.id for m in client.models.list()}


def write_lines(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def line(i: int, model: str = "gpt-4.1") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": f"prompt {i}"}], "max_tokens": 20}
    return {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_openai_sdk_batch_flow_to_completion(stack, sim, tmp_path):
    client = stack.client()
    lines = [line(i, "no-such-model" if i == 2 else "gpt-4.1") for i in range(5)]
    uploaded = client.files.create(file=write_lines(tmp_path / "in.jsonl", lines).open("rb"), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == (tmp_path / "in.jsonl").stat().st_size
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "7"}
    )
    assert batch.input_file_id == uploaded.id and batch.metadata == {"run": "7"}
    batch = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, 60, "the batch to complete"
    )
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (5, 4, 1)
    output = [json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in output] == ["r0", "r1", "r3", "r4"]  # input order
    assert output[3]["response"]["body"]["choices"][0]["message"]["content"] == "[gpt-4.1] You said: prompt 4"
    errors = [json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()]
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("r2", "not_found")]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert client.files.content(uploaded.id).text == (tmp_path / "in.jsonl").read_text()
    assert batch.id in [b.id for b in client.batches.list(limit=5)]

    other = stack.client("tok-b")  # another token sees none of it
    for read in (
        lambda: other.files.retrieve(uploaded.id),
        lambda: other.batches.retrieve(batch.id),
        lambda: other.files.content(batch.output_file_id),
    ):
        with pytest.raises(openai.NotFoundError):
            read()
    assert batch.id not in [b.id for b in other.batches.list()]
    assert client.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_openai_sdk_lists_only_its_own_files(stack, tmp_path):
    """`client.files.list()`: the token's uploads, newest first, paged by the SDK's cursor."""
    client, other = stack.client("tok-c"), stack.client("tok-a")
    path = write_lines(tmp_path / "in.jsonl", [line(0)])
    theirs = other.files.create(file=path.open("rb"), purpose="batch")
    ours = [client.files.create(file=path.open("rb"), purpose="batch").id for _ in range(5)]
    newest_first = ours[::-1]
    assert [f.id for f in client.files.list()] == newest_first
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == newest_first  # the SDK follows `after`
    assert [f.id for f in client.files.list(order="asc", after=ours[1]).data] == ours[2:]
    assert [f.id for f in client.files.list(purpose="batch")] == newest_first
    assert list(client.files.list(purpose="batch_output")) == []
    listed = client.files.list(limit=1).data[0]
    assert listed == client.files.retrieve(listed.id) and listed.bytes == path.stat().st_size
    assert theirs.id not in [f.id for f in client.files.list()]
    assert theirs.id in [f.id for f in other.files.list()]

    client.files.delete(ours[4])
    Redis.from_url(stack.settings.redis_url).delete(file_key(ours[2]))  # as if it had expired
    assert [f.id for f in client.files.list(limit=1)] == [ours[3], ours[1], ours[0]]
    assert Redis.from_url(stack.settings.redis_url).zcard(source_files_key("team-c")) == 3  # the expired one forgotten
    unknown = stack.http("tok-c").get("/v1/files", params={"after": theirs.id})
    assert unknown.json() == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    refused = stack.http("tok-c").get("/v1/files", params={"order": "sideways"})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "order"


def test_openai_sdk_batch_cancel(stack, sim, tmp_path):
    sim_admin(sim, "/_sim/config", {"model": "gpt-4o-mini", "latency_ms": 300})
    client = stack.client()
    uploaded = client.files.create(
        file=write_lines(tmp_path / "in.jsonl", [line(i, "gpt-4o-mini") for i in range(300)]).open("rb"),
        purpose="batch",
    )
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    batch = wait_until(
        lambda: (b := client.batches.retrieve(batch.id)).status == "cancelled" and b, 60, "the batch to cancel"
    )
    counts = batch.request_counts
    assert counts.total == 300 and counts.completed + counts.failed == 300 and counts.model_extra["cancelled"] > 0
    errors = client.files.content(batch.error_file_id).text.splitlines()
    assert sum(json.loads(e)["error"]["code"] == "batch_cancelled" for e in errors) == counts.model_extra["cancelled"]


NODE_CLIENT = """
const [base, token] = process.argv.slice(2);
const headers = {"Authorization": `Bearer ${token}`, "Content-Type": "application/json", "Idempotency-Key": "node-1"};
const job = {kind: "chat", model: "gpt-4.1", messages: [{role: "user", content: "from node"}]};
const queued = await fetch(`${base}/v1/jobs`, {method: "POST", headers, body: JSON.stringify(job)});
if (queued.status !== 202) throw new Error(`enqueue: ${queued.status}`);
const {id} = await queued.json();
let result;
do {
  result = await (await fetch(`${base}/v1/jobs/${encodeURIComponent(id)}?wait=10`, {headers})).json();
} while (result.status === "queued" || result.status === "running");
console.log(JSON.stringify({id, status: result.status, content: result.content, cost: result.cost}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_a_node_client_enqueues_long_polls_and_reads_a_result(stack, tmp_path):
    script = tmp_path / "client.mjs"
    script.write_text(NODE_CLIENT)
    out = subprocess.run(["node", str(script), stack.url, "tok-a"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["id"] == "team-a@node-1" and got["status"] == "succeeded" and got["cost"] > 0
    assert got["content"] == "[gpt-4.1] You said: from node"


# The `openai` npm package, installed once into the environment's prefix (reused by later runs).
OPENAI_NPM = "openai@6"  # 7.x needs Node.js 22; the machines' Node.js is 20 (Debian's is 18)
NPM_CLIENT = """
import OpenAI, {toFile} from "openai";
const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({baseURL, apiKey, maxRetries: 0});
const answer = await client.chat.completions.create(
  {model: "gpt-4.1", messages: [{role: "user", content: "from the npm package"}], max_tokens: 50});
const lines = [0, 1, 2].map((i) => JSON.stringify({custom_id: `n${i}`, method: "POST", url: "/v1/chat/completions",
  body: {model: "gpt-4.1", messages: [{role: "user", content: `node line ${i}`}]}})).join("\\n") + "\\n";
const file = await client.files.create({file: await toFile(Buffer.from(lines), "node.jsonl"), purpose: "batch"});
let batch = await client.batches.create(
  {input_file_id: file.id, endpoint: "/v1/chat/completions", completion_window: "24h"});
const deadline = Date.now() + 60000;
while (!["completed", "failed", "expired", "cancelled"].includes(batch.status) && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 200));
  batch = await client.batches.retrieve(batch.id);
}
const output = (await (await client.files.content(batch.output_file_id)).text()).trim().split("\\n");
const listed = [];
for await (const f of client.files.list()) listed.push(f.id);
console.log(JSON.stringify({
  id: answer.id, content: answer.choices[0].message.content, cost: answer.usage.cost, status: batch.status,
  counts: batch.request_counts, output: output.map((l) => JSON.parse(l).response.body.choices[0].message.content),
  listed: listed.includes(file.id),
}));
"""


@pytest.fixture(scope="module")
def openai_npm() -> Path:
    """A folder whose node_modules holds the `openai` npm package (`npm install`, once)."""
    folder = Path(sys.prefix) / "npm-openai"
    if not (folder / "node_modules" / "openai" / "package.json").exists():
        folder.mkdir(exist_ok=True)
        install = ["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent", OPENAI_NPM]
        done = subprocess.run(install, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"npm install {OPENAI_NPM} failed: {done.stderr[-2000:]}"
    return folder


@pytest.mark.skipif(shutil.which("node") is None or shutil.which("npm") is None, reason="node/npm not installed")
def test_the_openai_npm_package_chat_and_batch_flow(stack, openai_npm):
    """`new OpenAI({baseURL, apiKey: token})`: a chat completion, then files + batches to completion."""
    script = openai_npm / "ingress-client.mjs"  # beside node_modules, so `import "openai"` resolves
    script.write_text(NPM_CLIENT)
    out = subprocess.run(["node", str(script), f"{stack.url}/v1", "tok-b"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["content"] == "[gpt-4.1] You said: from the npm package" and got["id"].startswith("chatcmpl-team-b@")
    record = stack.http("tok-b").get(f"/v1/jobs/{got['id'].removeprefix('chatcmpl-')}").json()
    assert record["source"] == "team-b" and got["cost"] == record["cost"] > 0
    counts = {k: got["counts"][k] for k in ("total", "completed", "failed")}
    assert got["status"] == "completed" and counts == {"total": 3, "completed": 3, "failed": 0}
    assert got["output"] == [f"[gpt-4.1] You said: node line {i}" for i in range(3)]  # input order
    assert got["listed"]


def test_auth_and_tenancy_refusals(stack):
    job = {"kind": "chat", "model": "gpt-4.1", "messages": HELLO}
    for token in (None, "wrong"):
        refused = stack.http(token).post("/v1/jobs", json=job)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert refused.headers["www-authenticate"] == "Bearer"
    job_id = stack.http().post("/v1/jobs", json=job).json()["id"]
    assert job_id.startswith("team-a@")
    assert stack.http().get(f"/v1/jobs/{job_id}?wait=10").json()["status"] == "succeeded"
    other = stack.http("tok-b").get(f"/v1/jobs/{job_id}")
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"
    stolen = stack.http().post("/v1/jobs", json={**job, "source": "team-b"})
    assert stolen.status_code == 422 and stolen.json()["error"]["param"] == "source"


def test_413_422_and_409(stack):
    http = stack.http()
    big = {"kind": "chat", "model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 70_000}]}
    assert http.post("/v1/jobs", json=big).status_code == 413  # declared length
    chunked = http.post("/v1/jobs", content=iter([b"{" + b" " * 40_000, b" " * 40_000 + b"}"]))  # no length given
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "body_too_large"

    bad = {"kind": "chat", "model": "gpt-4.1", "messages": HELLO, "temperature": 5}
    refused = http.post("/v1/jobs", json=bad)
    with pytest.raises(JobRejected) as producer_says:
        validate(ChatJob, **bad)
    assert refused.status_code == 422
    assert refused.json()["error"] | {} == {
        "message": producer_says.value.message,
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
    sdk = stack.client()
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        sdk.chat.completions.create(model="gpt-4.1", messages=HELLO, top_p=3)
    assert exc.value.body["param"] == "top_p"

    job = {"kind": "chat", "model": "gpt-4.1", "messages": HELLO}
    first = http.post("/v1/jobs", json=job, headers={"Idempotency-Key": "same"})
    again = http.post("/v1/jobs", json=job, headers={"Idempotency-Key": "same"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    other = http.post("/v1/jobs", json={**job, "temperature": 1}, headers={"Idempotency-Key": "same"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"


def test_openapi_health_and_request_metrics(stack):
    http = stack.http(None)
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/chat/completions", "/v1/files", "/v1/batches"} <= set(paths)
    assert http.get("/healthz").json() == {"ok": True} and http.get("/readyz").json() == {"ready": True}
    stack.http().get("/v1/jobs/team-a@nope")
    metrics = http.get("/metrics").text
    assert 'llm_router_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status_class="4xx"}' in metrics


async def test_one_process_holds_a_thousand_long_polls(stack):
    """1,000 concurrent `?wait=` requests on one ingress process: one pub/sub connection for all."""
    redis = Redis.from_url(stack.settings.redis_url)
    ids = [f"team-a@poll-{i}" for i in range(1000)]
    for job_id in ids:  # pending jobs that no worker will take (not in the queue)
        redis.set(job_key(job_id), b"{}", ex=120)
    before = len(redis.client_list())
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    headers = {"Authorization": "Bearer tok-a"}
    async with httpx.AsyncClient(base_url=stack.url, headers=headers, limits=limits, timeout=60) as client:
        polls = [asyncio.create_task(client.get(f"/v1/jobs/{job_id}?wait=60")) for job_id in ids]

        async def all_waiting() -> bool:  # (on a connection of its own: the polls hold all of the client's)
            async with httpx.AsyncClient(base_url=stack.url) as scraper:
                return "llm_router_http_waiting 1000.0" in (await scraper.get("/metrics")).text

        await wait_until_async(all_waiting, 50, "the ingress to hold all 1,000 waits")
        clients = len(redis.client_list()) - before
        started = time.monotonic()
        await asyncio.to_thread(asyncio.run, save_results(stack.settings.redis_url, ids))  # off this busy loop
        saved = time.monotonic() - started
        answers_ = await asyncio.gather(*polls)
        waited = time.monotonic() - started
    bad = [(a.status_code, a.text) for a in answers_ if a.status_code != 200 or a.json().get("content") != "done"]
    assert not bad, (saved, len(bad), bad[:3])
    assert clients < 80  # a pool of 64 for commands and one pub/sub connection for every wait
    # every answer is "done", not a wait that ran out (?wait=60 would answer "queued"): each was woken
    assert waited < 60, waited


async def save_results(url: str, ids: list[str]) -> None:
    """What a worker does when each job ends: store its result and publish `done`."""
    redis = AsyncRedis.from_url(url)
    store = ResultStore(redis, 60)
    for job_id in ids:
        await store.save(JobResult(job_id=job_id, status="succeeded", content="done"))
    await redis.aclose()


def test_queue_depth_429_in_process(redis_url):
    settings = Settings(redis_url=redis_url, ingress_tokens=TOKENS, ingress_max_queue_depth=2, _env_file=None)
    job = {"kind": "chat", "model": "gpt-4.1", "messages": HELLO}
    with TestClient(create_app(settings), headers={"Authorization": "Bearer tok-a"}) as client:
        assert [client.post("/v1/jobs", json=job).status_code for _ in range(3)] == [202, 202, 429]
        refused = client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": HELLO})
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"


def test_readyz_follows_redis_down_and_back():
    server = PrivateRedis().start()
    settings = Settings(redis_url=server.url, ingress_tokens=TOKENS, _env_file=None)
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").json() == {"ready": True}
            server.stop()
            down = client.get("/readyz")
            assert down.status_code == 503 and down.json() == {"ready": False}
            assert client.get("/healthz").status_code == 200
            failed = client.post(
                "/v1/jobs", json={"model": "gpt-4.1", "messages": HELLO}, headers={"Authorization": "Bearer tok-a"}
            )
            assert failed.status_code == 503 and failed.json()["error"]["code"] == "unavailable"
            server.start()
            wait_until(lambda: client.get("/readyz").status_code == 200, 10, "/readyz to say ready again")
    finally:
        server.stop()
