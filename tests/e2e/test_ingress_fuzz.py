"""A schema-based fuzz run of the HTTP ingress: schemathesis generates requests from
`/openapi.json` (valid and invalid bodies, queries and paths) and sends them, with a valid
bearer token, to a real `llm-router api` process with a worker behind it. Every response must
be no 5xx and match the schema: its status is one the operation declares, its content type
too, and its body validates against the declared schema (errors in OpenAI's shape).

Then every route gets hostile JSON bodies the schema would never generate (arrays and objects
nested up to 3,000 deep, strings past the body limit, objects of 20,000 keys; whole, or as a
field of a job, or as an uploaded batch file): no 5xx either. And every field of every route's
body (the jobs', the chat completion's, a message's and a content part's, a batch's, the upload
form's) gets a value of every JSON type: no 5xx.

The example count is bounded (FUZZ_EXAMPLES per operation, derandomized: the same examples every
run) so the run takes seconds; `FUZZ_EXAMPLES=500 pytest tests/e2e/test_ingress_fuzz.py` searches
further, and FUZZ_RANDOM=1 draws new ones."""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from producers.http.app import create_app
from tests.ingress import ingress_settings, running
from worker.contract.settings import Settings

TOKEN = "tok-fuzz"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
# The fuzz runs' settings, over the profile tests/conftest.py loads (no deadline, no database):
# FUZZ_EXAMPLES each, the same examples every run unless FUZZ_RANDOM is set.
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=list(HealthCheck),
)
BODY_LIMIT = 256 * 1024  # the fuzzed ingress's INGRESS_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def ingress_url(redis_server, sim_server, tmp_path_factory):
    config = ingress_settings(
        redis_server,
        sim_server.base_url,
        "llm-router:fuzz",
        request_timeout_s=2,
        max_wait_s=1,
        ingress_tokens={TOKEN: "fuzz"},
        ingress_max_body_bytes=BODY_LIMIT,
        ingress_wait_s=2,  # a chat completion (or ?wait=) answers within 2 s: 202 past it
    )
    with running(config, tmp_path_factory.mktemp("fuzz")) as url:
        yield url


# The schema the app builds (no Redis needed for that): the test checks the live process serves it.
OPENAPI = create_app(Settings(ingress_tokens={TOKEN: "fuzz"}, _env_file=None)).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
HELLO = [{"role": "user", "content": "hello"}]


def test_the_process_serves_the_schema_fuzzed(ingress_url):
    assert httpx.get(f"{ingress_url}/openapi.json").json() == OPENAPI


def test_the_success_answers_match_the_schema(ingress_url, tmp_path):
    """What the fuzzer rarely reaches (a model the simulator knows): each answer validated. (It runs
    before the fuzz run, whose jobs would queue ahead of these.)"""

    def call(method: str, path: str, **parts) -> dict:
        case = schema[path][method].Case(**parts)
        answer = case.call_and_validate(base_url=ingress_url, headers=AUTH, checks=CHECKS, timeout=30)
        assert answer.status_code < 300, answer.text
        return answer.json()

    job = call("POST", "/v1/jobs", body={"kind": "compare", "models": ["gpt-4.1", "gpt-4o"], "messages": HELLO})
    done = call("GET", "/v1/jobs/{job_id}", path_parameters={"job_id": job["id"]}, query={"wait": 2})
    assert done["status"] == "succeeded" and len(done["answers"]) == 2
    answer = call("POST", "/v1/chat/completions", body={"model": "gpt-4.1", "messages": HELLO, "max_tokens": 5})
    assert answer["object"] == "chat.completion"
    files = httpx.post(f"{ingress_url}/v1/files", headers=AUTH, data={"purpose": "batch"}, files={"file": b"{}\n"})
    assert call("GET", "/v1/files", query={"limit": 1})["data"] == [files.json()]
    assert call("GET", "/v1/models")["data"]


@schema.parametrize()
@FUZZ
def test_every_response_is_no_5xx_and_matches_the_schema(case, ingress_url):
    case.call_and_validate(
        base_url=ingress_url,
        headers=AUTH,
        checks=CHECKS,
        timeout=30,
    )


def test_many_bodies_the_schema_calls_valid_are_accepted(ingress_url):
    """The schema is close to the validators: of the job bodies generated as valid for
    `POST /v1/jobs` many are enqueued (the gaps: a rule across fields, an image's base64, and
    JSON Schema's integer 1.0 which the contract's strict ints refuse), the rest are 422s."""
    statuses: list[int] = []

    @given(case=schema["/v1/jobs"]["POST"].as_strategy(generation_mode=GenerationMode.POSITIVE))
    @settings(FUZZ, max_examples=40, derandomize=True)
    def enqueue(case):
        fresh = {**AUTH, "Idempotency-Key": uuid.uuid4().hex}  # not a key an earlier test used
        answer = case.call(base_url=ingress_url, headers=fresh, timeout=30)
        statuses.append(answer.status_code)
        if answer.status_code != 202:
            refusals.append(answer.json()["error"]["message"])

    refusals: list[str] = []
    enqueue()
    assert set(statuses) <= {202, 422}
    assert statuses.count(202) >= len(statuses) / 3, refusals  # ~1/2 alone, 0.42 seen in the full suite


# ---------------------------------------------------------------- deep and huge JSON on every route

OPERATIONS = [(method.upper(), path) for path, item in OPENAPI["paths"].items() for method in item]
PATH_VALUES = {"job_id": "fuzz@hostile", "file_id": "file-" + "0" * 32, "batch_id": "batch_" + "0" * 32}
# Where a hostile value {v} goes in a body: the body itself, or each hole of the job contract that
# holds any JSON (tools' schemas, a message's extra keys, the objects passed through to the gateway)
# and the batch's fields.
JOB = '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],'
PASSED_THROUGH = ["tool_choice", "function_call", "functions", "audio", "prediction", "web_search_options"]
PASSED_THROUGH += ["moderation", "prompt_cache_options", "metadata", "logit_bias", "stop", "llm_router"]
HOLES = {
    "body": "{v}",
    "tools": JOB + '"tools":[{"type":"function","function":{"name":"f","parameters":{v}}}]}',
    "messages": '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi","tool_calls":{v}}]}',
    "response_format": JOB + '"response_format":{"type":"json_object","x":{v}}}',
    **{field: JOB + f'"{field}":' + "{v}}" for field in PASSED_THROUGH},
    "batch": '{"input_file_id":{v},"endpoint":"/v1/chat/completions","completion_window":{v},"metadata":{v}}',
}
DEPTHS = [64, 65, 128, 129, 253, 254, 255, 300, 1023, 1024, 1025, 3000]


def deep(depth: int, array: bool) -> str:
    return "[" * depth + "0" + "]" * depth if array else '{"a":' * depth + "0" + "}" * depth


@st.composite
def hostile_json(draw: st.DrawFn) -> bytes:
    """A JSON text no schema-based generator makes: deep, long or wide, whole or in a hole of the
    contract (built as text: JSON libraries stop at a few hundred levels)."""
    shape = draw(st.sampled_from(["deep array", "deep object", "long string", "long array", "wide object"]))
    if shape.startswith("deep"):
        value = deep(draw(st.one_of(st.sampled_from(DEPTHS), st.integers(1, 3000))), shape == "deep array")
    elif shape == "long string":
        value = '"' + "x" * draw(st.sampled_from([BODY_LIMIT - 1000, BODY_LIMIT + 1])) + '"'
    elif shape == "long array":
        value = "[" + ",".join(["0"] * draw(st.integers(1, 100_000))) + "]"
    else:
        value = "{" + ",".join(f'"k{i}":{i}' for i in range(draw(st.integers(1, 20_000)))) + "}"
    return HOLES[draw(st.sampled_from(list(HOLES)))].replace("{v}", value).encode()


def hostile_sweep() -> list[bytes]:
    """Every hole with the values that broke something once: past MAX_JSON_DEPTH, past what
    pydantic and orjson write (~250 levels), past orjson's parser (1,024), a string past the body limit."""
    values = [deep(d, a) for d in (100, 300, 2000) for a in (True, False)] + ['"' + "x" * (BODY_LIMIT + 1) + '"']
    return [hole.replace("{v}", v).encode() for hole in HOLES.values() for v in values]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_deep_and_huge_json_on_every_route_is_no_5xx(ingress_url, method, path):
    url = ingress_url + path.format(**PATH_VALUES)
    json_headers = {**AUTH, "Content-Type": "application/json"}

    def send(body: bytes) -> httpx.Response:
        if (method, path) == ("POST", "/v1/files"):  # the hostile text as a batch file
            return httpx.post(url, headers=AUTH, data={"purpose": "batch"}, files={"file": body}, timeout=30)
        if (method, path) == ("POST", "/v1/batches"):  # ...and a batch of it
            upload = httpx.post(
                f"{ingress_url}/v1/files", headers=AUTH, data={"purpose": "batch"}, files={"file": body}, timeout=30
            )
            assert upload.status_code < 500, upload.text[:300]
            if upload.status_code == 200:
                request = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions"}
                answer = httpx.post(url, headers=AUTH, json=request, timeout=30)
                httpx.delete(f"{ingress_url}/v1/files/{upload.json()['id']}", headers=AUTH, timeout=30)
                return answer
        return httpx.request(method, url, headers=json_headers, content=body, timeout=30)

    for body in hostile_sweep() if method == "POST" else ():
        answer = send(body)
        assert answer.status_code < 500, (method, path, body[:200], answer.status_code, answer.text[:300])

    @given(body=hostile_json())
    @FUZZ
    def hostile(body: bytes) -> None:
        answer = send(body)
        assert answer.status_code < 500, (method, path, len(body), answer.status_code, answer.text[:300])
        if answer.status_code >= 400:  # errors in OpenAI's shape, whatever came in
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"}

    hostile()


# ---------------------------------------------------------------- wrong types in every field of every body

# A value of each JSON type (and the edges of a few): each field of each body gets every one.
WRONG_TYPES: list[object] = [None, True, False, 0, -1, 1.5, 2**70, "", "x", "9" * 40, [], [1], ["x"], {}, {"a": 1}]
IMAGE = "data:image/png;base64," + (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
# (path, a valid body, the schema whose top-level fields are swept)
JOB_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/jobs", {"kind": "chat", "model": "gpt-4.1", "messages": HELLO}, "ChatJob"),
    ("/v1/jobs", {"kind": "vision", "model": "gpt-4o", "image": IMAGE, "prompt": "what?"}, "VisionJob"),
    ("/v1/jobs", {"kind": "compare", "models": ["gpt-4.1", "gpt-4o"], "messages": HELLO}, "CompareJob"),
    ("/v1/chat/completions", {"model": "gpt-4.1", "messages": HELLO}, "ChatCompletionRequest"),
]
PARTS: list[dict[str, Any]] = [
    {"type": "text", "text": "hi"},
    {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
]


def wrong_typed_bodies() -> list[tuple[str, dict]]:
    """(path, body) with one field of a valid body replaced by a value of another type: every
    top-level field of each job body, a message's fields, a content part's and an image URL's."""
    out = []
    for path, base, name in JOB_BODIES:
        for field in OPENAPI["components"]["schemas"][name]["properties"]:
            out += [(path, {**base, field: value}) for value in WRONG_TYPES]
    for field in ("role", "content", "name", "tool_calls", "tool_call_id"):
        out += [("/v1/jobs", {"model": "gpt-4.1", "messages": [{**HELLO[0], field: v}]}) for v in WRONG_TYPES]
    for i, part in enumerate(PARTS):
        for field in part:
            for value in WRONG_TYPES:
                swapped = [{**p, field: value} if j == i else p for j, p in enumerate(PARTS)]
                out.append(("/v1/jobs", {"model": "gpt-4o", "messages": [{"role": "user", "content": swapped}]}))
    for field in ("url", "detail"):
        for value in WRONG_TYPES:
            part = {"type": "image_url", "image_url": {"url": IMAGE, field: value}}
            out.append(("/v1/jobs", {"model": "gpt-4o", "messages": [{"role": "user", "content": [part]}]}))
    return out


BATCH_FIELDS = ["input_file_id", "endpoint", "completion_window", "metadata", "callback_url", "budget_usd"]


def test_a_wrong_type_in_any_field_of_any_body_is_no_5xx(ingress_url):
    """Every field of every route's JSON body (the jobs', the chat completion's, a batch's) and the
    upload's form fields, each given a value of every JSON type: a 4xx naming it, or accepted;
    never a 5xx (a list for a batch's metadata was a 500)."""
    body = {"model": "gpt-4.1", "messages": HELLO}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    for kept in httpx.get(f"{ingress_url}/v1/files", headers=AUTH).json()["data"]:  # room under the upload quota
        httpx.delete(f"{ingress_url}/v1/files/{kept['id']}", headers=AUTH)
    upload = httpx.post(
        f"{ingress_url}/v1/files", headers=AUTH, data={"purpose": "batch"}, files={"file": json.dumps(line).encode()}
    )
    assert upload.status_code == 200, upload.text
    batch = {"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    requests = wrong_typed_bodies()
    requests += [("/v1/batches", {**batch, field: v}) for field in BATCH_FIELDS for v in WRONG_TYPES]

    def send(request: tuple[str, dict]) -> tuple[str, dict, httpx.Response]:
        path, body = request
        content = json.dumps(body).encode()  # (not orjson: 2**70 is JSON, and no 64-bit int)
        return path, body, http.post(path, content=content, headers={"Content-Type": "application/json"})

    with httpx.Client(base_url=ingress_url, headers=AUTH, timeout=30) as http, ThreadPoolExecutor(8) as pool:
        for path, body, answer in pool.map(send, requests):
            assert answer.status_code < 500, (path, str(body)[:300], answer.status_code, answer.text[:300])
            if answer.status_code >= 400:
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}, answer.text[:300]
        for purpose in ("", "x" * 10_000, "batch\x00"):
            form = http.post("/v1/files", data={"purpose": purpose}, files={"file": b"{}"})
            assert form.status_code < 500, (purpose[:20], form.text[:300])
        no_file = http.post("/v1/files", data={"purpose": "batch", "file": "not a file"})
        assert no_file.status_code < 500, no_file.text[:300]
