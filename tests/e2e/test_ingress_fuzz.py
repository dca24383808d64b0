"""A schema-based fuzz run of the HTTP ingress: schemathesis generates requests from
`/openapi.json` (valid and invalid bodies, queries and paths) and sends them, with a valid
bearer token, to a real `llm-router api` process with a worker behind it. Every response must
be no 5xx and match the schema: its status is one the operation declares, its content type
too, and its body validates against the declared schema (errors in OpenAI's shape).

Then every route gets hostile JSON bodies the schema would never generate (arrays and objects
nested up to 3,000 deep, strings past the body limit, objects of 20,000 keys; whole, or as a
field of a job, or as an uploaded batch file): no 5xx either.

The example count is bounded (FUZZ_EXAMPLES per operation, derandomized: the same examples every
run) so the run takes seconds; `FUZZ_EXAMPLES=500 pytest tests/e2e/test_ingress_fuzz.py` searches
further, and FUZZ_RANDOM=1 draws new ones."""

from __future__ import annotations

import os
import uuid

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

from producers.http import create_app
from tests.ingress import ingress_settings, running
from worker.settings import Settings

TOKEN = "tok-fuzz"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
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
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    database=None,
    suppress_health_check=list(HealthCheck),
)
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
    @settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
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
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def hostile(body: bytes) -> None:
        answer = send(body)
        assert answer.status_code < 500, (method, path, len(body), answer.status_code, answer.text[:300])
        if answer.status_code >= 400:  # errors in OpenAI's shape, whatever came in
            assert set(answer.json()["error"]) == {"message", "type", "param", "code"}

    hostile()
