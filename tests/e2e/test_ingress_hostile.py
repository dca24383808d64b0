"""The HTTP ingress under hostile clients, as a real `llm-router api` process (no worker: the
jobs waited for stay pending) sees them over real sockets: slow headers and bodies closed by
their deadlines, connections bounded (the oldest idle ones shed, `/healthz` answered when every
connection is busy, 503 with Retry-After for the rest), long-polls and stream readers ended when
their client leaves, request bodies bounded in total, uploads bounded per token, deep JSON and
an endless completion window refused naming the field. The tests assert what is closed and
answered, not how fast (bench/slow_clients.py measures that)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from redis import Redis
from redis.exceptions import BusyLoadingError, ReadOnlyError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from harness.processes import answers, llm_router, settings_env
from harness.redis_server import free_port
from harness.wait import wait_until
from producers.http.app import create_app
from producers.http.conns import OVERFLOW
from producers.http.errors import error_response
from tests.ingress import ingress_settings, running
from worker.contract.keys import batch_key, job_key
from worker.contract.settings import ConfigError, Settings

# Tokens of their own: the sources' keys (files, jobs) meet no other test's on the session's Redis.
HOSTILE_TOKENS = {"tok-h1": "hostile-1", "tok-h2": "hostile-2", "tok-h3": "hostile-3"}
AUTH = "Authorization: Bearer tok-h1\r\n"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def quick(redis_server, sim_server, tmp_path_factory):
    """An ingress with short deadlines (1 s for headers, 1.5 s for a body, 1 s for a client to
    read) and long waits."""
    settings = ingress_settings(
        redis_server,
        sim_server.base_url,
        "llm-router:hostile-quick",
        ingress_tokens=HOSTILE_TOKENS,
        ingress_header_timeout_s=1,
        ingress_body_timeout_s=1.5,
        ingress_send_timeout_s=1,
        ingress_wait_s=60,
    )
    with running(settings, tmp_path_factory.mktemp("quick"), worker=False) as url:
        yield url


LIMIT = 20


@pytest.fixture(scope="module")
def bounded(redis_server, sim_server, tmp_path_factory):
    """An ingress holding at most LIMIT connections and 64 KiB of bodies, 2 files of 4 KiB a token."""
    settings = ingress_settings(
        redis_server,
        sim_server.base_url,
        "llm-router:hostile-bounded",
        ingress_tokens=HOSTILE_TOKENS,
        ingress_max_connections=LIMIT,
        ingress_header_timeout_s=60,
        ingress_wait_s=60,
        ingress_max_body_bytes=64 * 1024,
        ingress_max_bodies_bytes=64 * 1024,
        files_max_per_source=2,
        files_max_bytes_per_source=4096,
    )
    with running(settings, tmp_path_factory.mktemp("bounded"), worker=False) as url:
        yield url


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """Whether the ingress closed `sock` (its data read and dropped), waiting up to `wait` s."""
    sock.settimeout(wait or 0.001)
    try:
        while data := sock.recv(65536):
            del data
        return True
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:  # reset
        return True


def answer(sock: socket.socket, timeout: float = 15) -> bytes:
    """Everything the ingress sends until it closes the connection."""
    sock.settimeout(timeout)
    out = b""
    with contextlib.suppress(ConnectionResetError):
        while data := sock.recv(65536):
            out += data
    return out


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def closed_for(url: str, reason: str) -> float:
    """Connections the ingress closed for `reason` so far (0 before the first)."""
    try:
        return metric(url, f'llm_router_http_connections_closed_total{{reason="{reason}"}}')
    except AssertionError:
        return 0.0


def whole_answer(sock: socket.socket, timeout: float = 15) -> bytes:
    """Everything the ingress sends until its FIN; a reset (the answer destroyed unread) fails."""
    sock.settimeout(timeout)
    out = b""
    while data := sock.recv(65536):
        out += data
    return out


def keep_sending(sock: socket.socket, chunk: bytes, times: int) -> None:
    """Send `chunk` `times` times, as a client that does not look at the answer would (stopping
    once the ingress no longer takes them)."""
    with contextlib.suppress(OSError):
        for _ in range(times):
            sock.sendall(chunk)


def pending_jobs(redis_url: str, ids: list[str]) -> None:
    """Jobs that exist and never end (no worker, not in the queue): a `?wait=` waits them out."""
    redis = Redis.from_url(redis_url)
    for job_id in ids:
        redis.set(job_key(job_id), b"{}", ex=600)


# ---------------------------------------------------------------- deadlines


def test_headers_that_trickle_in_are_closed_at_the_total_deadline(quick):
    """A header byte every 0.2 s would cancel any idle timer forever: the deadline counts from the
    accept, so the ingress closes the connection (HEADER_TIMEOUT_S is 1 s here)."""
    sock = connect(quick)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    deadline = time.monotonic() + 20
    while not closed(sock, 0.2):
        assert time.monotonic() < deadline, "a header byte every 0.2 s kept the connection open for 20 s"
        sock.sendall(b"x")
    silent = connect(quick)  # one that sends nothing at all
    wait_until(lambda: closed(silent, 0.2), 20, "the ingress to close a connection that sent nothing")


def test_the_next_request_on_a_kept_alive_connection_has_a_deadline_too(quick):
    sock = connect(quick)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    sock.settimeout(10)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
    deadline = time.monotonic() + 30  # header deadline + uvicorn's 5 s keep-alive
    while not closed(sock, 0.2):
        assert time.monotonic() < deadline, "a header byte every 0.2 s kept the connection open for 30 s"
        sock.sendall(b"x")


def test_a_body_that_trickles_in_is_answered_408_and_closed(quick):
    sock = connect(quick)
    sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n{AUTH}Content-Length: 1000\r\n\r\n".encode())
    deadline = time.monotonic() + 20
    while not closed(sock, 0.2):  # (the answer is read by `closed` and dropped: asked again below)
        assert time.monotonic() < deadline, "a body byte every 0.2 s kept the request open for 20 s"
        sock.sendall(b" ")
    again = connect(quick)
    again.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n{AUTH}Content-Length: 1000\r\n\r\n{{".encode())
    reply = answer(again)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    error = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and "INGRESS_BODY_TIMEOUT_S=1.5" in error["message"]


def test_headers_past_the_bound_are_answered_431_and_closed(quick):
    sock = connect(quick)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    with contextlib.suppress(OSError):  # (the ingress may close it while this still sends)
        for _ in range(100):
            sock.sendall(b"X-Filler: " + b"y" * 1000 + b"\r\n")  # 100 KB, INGRESS_MAX_HEADER_BYTES is 64 KiB
    reply = answer(sock)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert b"INGRESS_MAX_HEADER_BYTES=65536" in reply


# ---------------------------------------------------------------- answers before the request was read whole


def test_a_body_over_the_limit_is_answered_413_then_fin_not_a_reset(bounded):
    """Content-Length says 10 MB (INGRESS_MAX_BODY_BYTES is 64 KiB) and the client sends 1 MB of it
    before it reads: it gets the 413 and the end of the connection, not a reset and not a wait."""
    before = closed_for(bounded, "answered_early")
    sock = connect(bounded)
    sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n{AUTH}Content-Length: 10000000\r\n\r\n".encode())
    keep_sending(sock, b" " * 65536, 16)
    reply = whole_answer(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"body_too_large" in reply and b"INGRESS_MAX_BODY_BYTES=65536" in reply
    assert closed_for(bounded, "answered_early") >= before + 1


def test_headers_over_the_bound_are_answered_431_then_fin_not_a_reset(quick):
    sock = connect(quick)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    keep_sending(sock, b"X-Filler: " + b"y" * 1000 + b"\r\n", 1000)  # 1 MB, INGRESS_MAX_HEADER_BYTES is 64 KiB
    reply = whole_answer(sock)
    assert reply.startswith(b"HTTP/1.1 431") and b"INGRESS_MAX_HEADER_BYTES=65536" in reply, reply[:200]


def test_a_request_that_is_not_http_is_answered_400_in_openais_shape(quick):
    sock = connect(quick)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Header\r\n\r\n")
    keep_sending(sock, b"z" * 65536, 16)
    reply = whole_answer(sock)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "invalid_request"


# ---------------------------------------------------------------- clients that do not read their answer


def test_a_client_that_reads_nothing_of_its_answer_is_cut(quick):
    """A 16 MB file (or more: past what the kernel buffers) asked for by a client that reads none
    of it (a 4 KiB receive buffer): the ingress's buffers fill, and INGRESS_SEND_TIMEOUT_S (1 s
    here) later the connection is cut."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])  # what the kernel may buffer
    data = b"x" * max(16 * 1024 * 1024, 2 * wmem_max + (1 << 20))
    upload = httpx.post(
        f"{quick}/v1/files", headers=_auth(), data={"purpose": "batch"}, files={"file": data}, timeout=60
    )
    assert upload.status_code == 200, upload.text
    before = closed_for(quick, "send_timeout")
    host, port = quick.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/files/{upload.json()['id']}/content HTTP/1.1\r\nHost: test\r\n{AUTH}\r\n".encode())
    wait_until(
        lambda: closed_for(quick, "send_timeout") > before, 30, "the ingress to cut the client that reads nothing"
    )
    got = 0
    sock.settimeout(15)
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    assert got < len(data)  # cut: not the whole answer
    httpx.delete(f"{quick}/v1/files/{upload.json()['id']}", headers=_auth())


# ---------------------------------------------------------------- long-polls and streams whose client left


def test_long_polls_and_stream_readers_end_when_their_client_leaves(quick, redis_server):
    """Each would wait 60 s (INGRESS_WAIT_S): a client gone ends it now, not then."""
    ids = [f"hostile-1@abandoned-{i}" for i in range(3)]
    pending_jobs(redis_server, ids)
    requests = [f"GET /v1/jobs/{ids[0]}?wait=60", f"GET /v1/jobs/{ids[1]}?wait=60", f"GET /v1/jobs/{ids[2]}/events"]
    socks = []
    for request in requests:
        sock = connect(quick)
        sock.sendall(f"{request} HTTP/1.1\r\nHost: test\r\n{AUTH}\r\n".encode())
        socks.append(sock)
    body = json.dumps({"model": "gpt-4.1", "messages": HELLO}).encode()
    chat = connect(quick)  # a chat completion waiting for its job (no worker takes it)
    chat.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n{AUTH}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    socks.append(chat)
    wait_until(lambda: metric(quick, "llm_router_http_waiting") == 4, 20, "the ingress to hold the 4 waits")
    for sock in socks:
        sock.close()
    wait_until(lambda: metric(quick, "llm_router_http_waiting") == 0, 20, "the waits of clients gone to end")


def test_pipelined_long_polls_all_end_when_their_client_leaves(quick, redis_server):
    """Two long-polls sent at once on one connection: the first runs, the second waits behind it.
    When the client leaves, the running one ends too (uvicorn told only the newest request)."""
    ids = [f"hostile-1@pipelined-{i}" for i in range(2)]
    pending_jobs(redis_server, ids)
    sock = connect(quick)
    sock.sendall(b"".join(f"GET /v1/jobs/{i}?wait=60 HTTP/1.1\r\nHost: test\r\n{AUTH}\r\n".encode() for i in ids))
    wait_until(lambda: metric(quick, "llm_router_http_waiting") == 1, 20, "the ingress to hold the first wait")
    sock.close()
    wait_until(lambda: metric(quick, "llm_router_http_waiting") == 0, 20, "the pipelined wait of a client gone to end")


def test_a_request_pipelined_behind_an_answered_one_is_not_answered_early(quick):
    """A POST pipelined behind a GET, its body still coming when the GET is answered: the
    connection goes on (only an answer to the request whose body is unread ends it early)."""
    job = json.dumps({"model": "gpt-4.1", "messages": HELLO}).encode()
    sock = connect(quick)
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n{AUTH}Content-Length: {len(job)}\r\n\r\n".encode()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n" + head + job[:10])
    sock.settimeout(10)
    got = b""
    while b'{"ok":true}' not in got:
        got += sock.recv(65536)
    sock.sendall(job[10:])
    while b"HTTP/1.1 202" not in got:
        data = sock.recv(65536)
        assert data, f"the connection was closed before the pipelined POST was answered: {got!r}"
        got += data


# ---------------------------------------------------------------- the connection limit


def test_past_the_limit_the_oldest_idle_connections_are_shed_and_healthz_answers(bounded):
    socks = []
    for _ in range(3 * LIMIT):
        sock = connect(bounded)
        sock.sendall(b"GET /v1/jobs HTTP/1.1\r\nHost: test\r\nX-Slow: ")  # never finished (60 s deadline)
        socks.append(sock)
    try:
        assert httpx.get(f"{bounded}/healthz", timeout=10).json() == {"ok": True}
        wait_until(lambda: sum(closed(s) for s in socks) >= 2 * LIMIT, 20, "the ingress to shed the oldest connections")
        assert not any(closed(s) for s in socks[-LIMIT // 2 :])  # the newest are held
        assert metric(bounded, "llm_router_http_connections") <= LIMIT + OVERFLOW
        assert metric(bounded, 'llm_router_http_connections_closed_total{reason="shed"}') >= 2 * LIMIT
    finally:
        for sock in socks:
            sock.close()


def test_with_every_connection_busy_healthz_answers_and_the_rest_get_503(bounded, redis_server):
    ids = [f"hostile-1@busy-{i}" for i in range(LIMIT)]
    pending_jobs(redis_server, ids)
    polls = []
    for job_id in ids:
        sock = connect(bounded)
        sock.sendall(f"GET /v1/jobs/{job_id}?wait=60 HTTP/1.1\r\nHost: test\r\n{AUTH}\r\n".encode())
        polls.append(sock)
    try:
        wait_until(lambda: metric(bounded, "llm_router_http_waiting") == LIMIT, 20, "every connection to be busy")
        assert httpx.get(f"{bounded}/healthz", timeout=10).json() == {"ok": True}
        refused = httpx.post(f"{bounded}/v1/jobs", json={"model": "gpt-4.1", "messages": HELLO}, headers=_auth())
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1", refused.text
        assert refused.json()["error"]["code"] == "overloaded" and "INGRESS_MAX_CONNECTIONS=20" in refused.text
    finally:
        for sock in polls:
            sock.close()
    wait_until(lambda: metric(bounded, "llm_router_http_waiting") == 0, 20, "the long-polls to end")
    accepted = httpx.post(f"{bounded}/v1/jobs", json={"model": "gpt-4.1", "messages": HELLO}, headers=_auth())
    assert accepted.status_code == 202, accepted.text


def _auth(token: str = "tok-h1") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_too_many_connections_for_the_file_limit_refuse_the_start(redis_server, sim_server, tmp_path):
    """256 files at most: INGRESS_MAX_CONNECTIONS=1000 set refuses the start, naming the fixes;
    the default is lowered to fit, and said so."""
    env = {
        **os.environ,
        **settings_env(
            ingress_settings(redis_server, sim_server.base_url, "llm-router:nofile", ingress_max_connections=1000)
        ),
    }
    port = free_port()
    command = [llm_router(), "api", "--port", str(port)]
    run = subprocess.run(command, env=env, preexec_fn=low_file_limit, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "INGRESS_MAX_CONNECTIONS=1000 needs 1160 file descriptors" in run.stderr, run.stderr
    assert "set INGRESS_MAX_CONNECTIONS=96 or less" in run.stderr, run.stderr
    del env["INGRESS_MAX_CONNECTIONS"]
    with (tmp_path / "api.log").open("wb") as log:
        proc = subprocess.Popen(command, env=env, preexec_fn=low_file_limit, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 30, "the api to start")
        assert "INGRESS_MAX_CONNECTIONS: 96 (not the default 1000" in (tmp_path / "api.log").read_text()
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------- bodies and uploads


def test_the_bodies_all_requests_hold_are_bounded(bounded):
    """INGRESS_MAX_BODIES_BYTES is 64 KiB here: while one request holds 50,000 bytes of its body,
    another's 30,000 do not fit (503, Retry-After); once it has gone they do."""
    job = json.dumps({"model": "gpt-4.1", "messages": HELLO}).encode()
    big = connect(bounded)
    big.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\n{AUTH}Content-Length: 60000\r\n\r\n".encode())
    big.sendall(b" " * 50_000)  # and the rest never

    def post() -> httpx.Response:
        return httpx.post(f"{bounded}/v1/jobs", content=job + b" " * (30_000 - len(job)), headers=_auth(), timeout=10)

    try:
        refused = wait_until(lambda: (r := post()).status_code == 503 and r, 20, "a body past the total to be refused")
        assert refused.headers["Retry-After"] == "1" and "INGRESS_MAX_BODIES_BYTES=65536" in refused.text
    finally:
        big.close()
    wait_until(lambda: post().status_code == 202, 20, "the room to come back once the big body has gone")


def test_uploads_are_bounded_per_token(bounded, redis_server):
    """2 files and 4 KiB a source here: the third file, or one past the bytes, is refused (403,
    naming the setting) and nothing of it is kept; deleting a file makes room."""

    def upload(data: bytes, token: str = "tok-h2") -> httpx.Response:
        return httpx.post(
            f"{bounded}/v1/files", headers=_auth(token), data={"purpose": "batch"}, files={"file": data}, timeout=30
        )

    first, second = upload(b"a" * 1000), upload(b"b" * 1000)
    assert first.status_code == second.status_code == 200
    third = upload(b"c")
    assert third.status_code == 403, third.text
    assert third.json()["error"]["param"] == "file" and "FILES_MAX_PER_SOURCE=2" in third.text
    assert httpx.delete(f"{bounded}/v1/files/{first.json()['id']}", headers=_auth("tok-h2")).status_code == 200
    redis = Redis.from_url(redis_server)
    kept = set(redis.keys("llm-router:file:*"))
    too_big = upload(b"d" * 3500)
    assert too_big.status_code == 403 and "FILES_MAX_BYTES_PER_SOURCE=4096" in too_big.text
    assert set(redis.keys("llm-router:file:*")) == kept  # nothing of the refused one
    assert upload(b"e" * 3000).status_code == 200  # 4,000 bytes: fits
    assert upload(b"f", token="tok-h3").status_code == 200  # another source's room is its own


# ---------------------------------------------------------------- refused input never gets a 5xx


def deep_tools_body(depth: int) -> bytes:
    """A job whose tool's parameters nest `depth` schemas (2 JSON levels each), as text: no JSON
    library writes it past a few hundred levels."""
    schema = '{"type":"object","properties":{"a":' * depth + '{"type":"string"}' + "}}" * depth
    tools = '[{"type":"function","function":{"name":"f","parameters":' + schema + "}}]"
    return f'{{"model":"gpt-4.1","messages":{json.dumps(HELLO)},"tools":{tools}}}'.encode()


@pytest.mark.parametrize("depth", [40, 150, 2000])
def test_deep_json_is_refused_naming_the_field(quick, depth):
    for path in ("/v1/jobs", "/v1/chat/completions"):
        refused = httpx.post(f"{quick}{path}", content=deep_tools_body(depth), headers=_auth(), timeout=30)
        assert refused.status_code in (400, 422), (path, refused.status_code, refused.text[:300])
        error = refused.json()["error"]
        if refused.status_code == 422:
            assert error["param"] == "tools" and "MAX_JSON_DEPTH=64" in error["message"]
        else:  # past orjson's 1024 levels the body is not read as JSON at all
            assert error["code"] == "invalid_json" and "depth" in error["message"]


def test_a_job_body_too_big_to_be_a_job_is_a_413_before_any_parse(quick):
    """6 MB of tools (MAX_JOB_BYTES is 4 MiB) and no closing brace: measured before it is parsed,
    so the answer is the size (413), not the JSON (400). A body as big whose bytes are an inline
    image is a job (images have MAX_IMAGE_BYTES)."""
    tool = {"type": "function", "function": {"name": "f", "description": "d" * 60_000}}
    tools = json.dumps([tool] * 100)
    for path in ("/v1/jobs", "/v1/chat/completions"):
        body = f'{{"model":"gpt-4.1","messages":{json.dumps(HELLO)},"tools":{tools}'.encode()  # (no closing brace)
        refused = httpx.post(f"{quick}{path}", content=body, headers=_auth(), timeout=30)
        assert refused.status_code == 413, (path, refused.status_code, refused.text[:300])
        error = refused.json()["error"]
        assert error["code"] == "body_too_large" and "MAX_JOB_BYTES=4194304" in error["message"], error
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x01" * 6_000_000).decode()
    content = [{"type": "text", "text": "what is it?"}, {"type": "image_url", "image_url": {"url": image}}]
    job = {"model": "gpt-4.1", "messages": [{"role": "user", "content": content}]}
    accepted = httpx.post(f"{quick}/v1/jobs", json=job, headers=_auth(), timeout=30)
    assert accepted.status_code == 202, accepted.text[:300]


def test_lists_past_their_bound_are_refused_naming_the_field_and_the_limit(quick):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}] * 129
    for path in ("/v1/jobs", "/v1/chat/completions"):
        for field, value, limit in (("tools", tools, "MAX_TOOLS=128"), ("stop", ["x"] * 17, "MAX_STOP=16")):
            body = {"model": "gpt-4.1", "messages": HELLO, field: value}
            refused = httpx.post(f"{quick}{path}", json=body, headers=_auth(), timeout=30)
            assert refused.status_code == 422, (path, refused.text)
            error = refused.json()["error"]
            assert error["param"] == field and limit in error["message"], (path, error)


def test_an_endless_completion_window_is_refused_before_anything_is_written(quick, redis_server):
    body = {"model": "gpt-4.1", "messages": HELLO}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    file = httpx.post(
        f"{quick}/v1/files", headers=_auth(), data={"purpose": "batch"}, files={"file": json.dumps(line).encode()}
    ).json()
    redis = Redis.from_url(redis_server)
    before = set(redis.keys(batch_key("*")))
    for window in ("99999999999999999999d", "8d", "9" * 400 + "s"):
        body = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": window}
        refused = httpx.post(f"{quick}/v1/batches", json=body, headers=_auth(), timeout=30)
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "completion_window" and "BATCH_MAX_WINDOW_S=604800" in error["message"]
    assert set(redis.keys(batch_key("*"))) == before  # no batch written, none left without a TTL


BATCH_WRONG_TYPES = [
    ("completion_window", 86400),
    ("metadata", ["a", "b"]),
    ("endpoint", {"url": "/v1/chat/completions"}),
    ("callback_url", 5),
    ("budget_usd", "10"),
    ("input_file_id", 5),
]


def test_a_batch_option_of_the_wrong_type_is_a_400_naming_it(quick):
    body = {"model": "gpt-4.1", "messages": HELLO}
    line = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    file = httpx.post(
        f"{quick}/v1/files", headers=_auth(), data={"purpose": "batch"}, files={"file": json.dumps(line).encode()}
    ).json()
    for option, value in BATCH_WRONG_TYPES:
        request = {"input_file_id": file["id"], "endpoint": "/v1/chat/completions", option: value}
        refused = httpx.post(f"{quick}/v1/batches", json=request, headers=_auth(), timeout=30)
        assert refused.status_code == 400, (option, refused.status_code, refused.text)
        assert refused.json()["error"]["param"] == option, (option, refused.text)


def test_a_bodies_bound_under_one_body_refuses_the_start():
    settings = Settings(
        ingress_tokens={"t": "s"}, ingress_max_body_bytes=8192, ingress_max_bodies_bytes=4096, _env_file=None
    )
    with pytest.raises(ConfigError, match="INGRESS_MAX_BODIES_BYTES=4096 is under INGRESS_MAX_BODY_BYTES=8192"):
        create_app(settings)


def test_503_means_redis_is_unavailable_not_that_it_refused_a_command():
    """(A window Redis could not expire used to be answered "Redis is unavailable".)"""
    for outage in (RedisConnectionError("down"), ReadOnlyError("READONLY replica"), BusyLoadingError("loading")):
        answer = error_response(outage)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1", outage
    refused = error_response(ResponseError("ERR invalid expire time in 'expireat' command"))
    assert refused.status_code == 500 and json.loads(refused.body)["error"]["code"] == "internal_error"
