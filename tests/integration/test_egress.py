"""Outbound requests a client can aim (worker.calls.egress, worker.calls.pinned): which addresses are refused, a webhook
connection going to the address that was checked (a real TLS receiver, the name kept in SNI and
Host), and image URLs naming this side's own network refused at enqueue (Python, HTTP) and by the
worker, unless IMAGE_URLS_ALLOW_PRIVATE."""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from producers import JobRejected, Producer
from producers.http.app import create_app
from tests.helpers import run_worker, self_signed
from worker.calls import egress, pinned
from worker.contract.settings import ConfigError, load_settings

TOKEN = "tok-egress"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "a loopback"),
        ("127.254.0.9", "a loopback"),
        ("::1", "a loopback"),
        ("0.0.0.0", "an unspecified"),
        ("::", "an unspecified"),
        ("10.1.2.3", "a private"),
        ("172.16.0.1", "a private"),
        ("192.168.1.1", "a private"),
        ("fd00::1", "a private"),
        ("169.254.169.254", "a link-local"),  # a cloud's metadata service
        ("fe80::1", "a link-local"),
        ("224.0.0.1", "a multicast"),
        ("ff02::1", "a multicast"),
        ("100.64.0.1", "a non-public"),  # carrier-grade NAT
        ("192.0.2.1", "a private"),  # documentation (ipaddress counts it private)
        ("240.0.0.1", "a private"),  # reserved
        ("255.255.255.255", "a private"),  # broadcast
        ("::ffff:127.0.0.1", "a loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "a private"),
        ("::127.0.0.1", "a loopback"),  # IPv4-compatible
        ("2002:a9fe:a9fe::", "a link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::7f00:1", "a loopback"),  # NAT64 of 127.0.0.1
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),
    ],
)
def test_addresses_refused_by_default(address, kind):
    why = egress.problem(ipaddress.ip_address(address))
    assert (why is None) if kind is None else (why is not None and why.startswith(kind)), why


def test_allowed_networks_allow_their_addresses_only():
    allowed = egress.networks(["127.0.0.0/8", "10.96.0.0/12", "fd00::/8"])
    for ok in ("127.0.0.1", "::ffff:127.0.0.1", "10.100.0.1", "fd00::5"):
        assert egress.problem(ipaddress.ip_address(ok), allowed) is None, ok
    for refused in ("10.0.0.1", "::1", "169.254.169.254", "0.0.0.0"):
        assert egress.problem(ipaddress.ip_address(refused), allowed) is not None, refused


def test_ip_literals_in_any_form_a_resolver_reads():
    loopback = ipaddress.ip_address("127.0.0.1")
    for form in ("127.0.0.1", "127.1", "0x7f.1", "2130706433", "017700000001", "0x7f000001", "127.0.0.1."):
        assert egress.literal(form) == loopback, form
    assert egress.literal("[::1]") == ipaddress.ip_address("::1")
    for name in ("example.com", "deadbeef", "1.2.3.4.5", "localhost", "0x7f.example"):
        assert egress.literal(name) is None, name


# ---------------------------------------------------------------- webhooks: the address checked is the one called


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An HTTPS server on 127.0.0.1 with a certificate for `hooks.test` only, recording the SNI of
    every handshake and the Host of every request."""
    cert, key = self_signed(tmp_path, "hooks.test")
    seen: dict[str, Any] = {"sni": [], "hosts": [], "cert": str(cert)}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen["hosts"].append(self.headers["Host"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: seen["sni"].append(name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    seen["port"] = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield seen
    server.shutdown()
    server.server_close()


def dns(*answers: list[str]) -> tuple[Any, list[tuple[str, int]]]:
    """A resolver answering `answers` in turn (a rebinding one when they differ), and its calls;
    `hooks.test` has no address in the system's resolver, so only these answers can be called."""
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, Any, int, str, tuple[Any, ...]]]:
        calls.append((host, port))
        ips = answers[min(len(calls), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]

    return resolve, calls


async def test_a_webhook_connects_to_the_address_it_checked_with_the_name_in_sni_and_host(tls_receiver, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", tls_receiver["cert"])
    port = tls_receiver["port"]
    url = f"https://hooks.test:{port}/hook"
    resolve, calls = dns(["127.0.0.1"], ["10.0.0.1"])  # rebinding: the next answer is private
    async with pinned.client(5, egress.networks(["127.0.0.0/8"]), resolve) as client:
        assert (await client.post(url, content=b"{}")).status_code == 204
    assert calls == [("hooks.test", port)]  # resolved once; the connection went to that answer
    assert tls_receiver["sni"] == ["hooks.test"] and tls_receiver["hosts"] == [f"hooks.test:{port}"]

    # every address is checked: one refused among allowed ones refuses the name, before any connection
    resolve, calls = dns(["127.0.0.1", "10.0.0.1"])
    async with pinned.client(5, egress.networks(["127.0.0.0/8"]), resolve) as client:
        with pytest.raises(egress.Refused, match=re.escape("hooks.test resolves to 10.0.0.1, a private address")):
            await client.post(url, content=b"{}")
    # by default loopback is refused too
    resolve, calls = dns(["127.0.0.1"])
    async with pinned.client(5, (), resolve) as client:
        with pytest.raises(egress.Refused, match=re.escape("hooks.test resolves to 127.0.0.1, a loopback address")):
            await client.post(url, content=b"{}")
    assert tls_receiver["sni"] == ["hooks.test"]  # neither was connected


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",  # decimal
        "0x7f.1",  # hex, short
        "127.1",  # short
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[64:ff9b::a00:5]",  # NAT64 of 10.0.0.5
        "[2002:a00:5::1]",  # 6to4 of 10.0.0.5
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo of 127.0.0.1
        "localhost",
    ],
)
async def test_a_webhook_to_this_network_by_another_spelling_is_refused_unsent(host):
    # the system's own resolver (getaddrinfo, as httpx's connection would use) reads each form
    async with pinned.client(5, ()) as client:
        with pytest.raises(egress.Refused, match="address"):
            await client.post(f"http://{host}:9/hook", content=b"{}")
    with pytest.raises(httpx.InvalidURL):  # octal (0177.0.0.1) is no URL to httpx: never called
        async with pinned.client(5, ()) as client:
            await client.post("http://0177.0.0.1:9/hook", content=b"{}")


def test_webhook_allowed_networks_is_checked_when_settings_load(monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", json.dumps(["10.96.0.0/12", "10.0.0.1/8"]))
    with pytest.raises(ConfigError, match=r"WEBHOOK_ALLOWED_NETWORKS: .*'10.0.0.1/8' is not a network"):
        load_settings(_env_file=None)
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", json.dumps(["10.96.0.0/12", "fd00::/8", "127.0.0.1"]))
    assert load_settings(_env_file=None).webhook_allowed_networks == ["10.96.0.0/12", "fd00::/8", "127.0.0.1"]


# ---------------------------------------------------------------- image URLs

REFUSED_IMAGES = [
    "http://127.0.0.1/cat.png",
    "http://localhost:8080/cat.png",
    "http://LOCALHOST./cat.png",
    "http://metadata.localhost/cat.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.5/cat.png",
    "http://[::1]/cat.png",
    "http://[::ffff:192.168.0.1]/cat.png",
    "http://0.0.0.0:9/cat.png",
    "http://2130706433/cat.png",  # 127.0.0.1, as getaddrinfo reads it
    "http://0x7f.1/cat.png",
    "http://127.0.0.%31/cat.png",  # percent-encoded (a WHATWG parser decodes it)
    "http://\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11/cat.png",  # full-width 127.0.0.1
    "http://example.com\\@127.0.0.1/cat.png",  # parsers disagree on the host: both are checked
    "http://127.0.0.1\\@example.com/cat.png",
    "http://0177.0.0.1/cat.png",  # octal
    "http://127.1/cat.png",  # short
    "http://[::ffff:127.0.0.1]/cat.png",  # IPv4-mapped
    "http://[64:ff9b::a00:5]/cat.png",  # NAT64 of 10.0.0.5
    "http://[2002:a00:5::1]/cat.png",  # 6to4 of 10.0.0.5
    "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/cat.png",  # Teredo of 127.0.0.1
]
# names that lead into this side's network whatever public DNS says (the round before took them all)
INTERNAL_IMAGES = [
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",  # a single label: completed with the search domains
    "https://x/y.png",
    "http://printer.local/cat.png",
    "http://redis.default.svc.cluster.local:6379/",
    "http://redis.default.svc/",
    "http://nas.home.arpa/cat.png",
    "http://wiki.corp./cat.png",
    "http://INTRANET/cat.png",
]
REFUSED_IMAGES += INTERNAL_IMAGES
FINE_IMAGES = ["https://example.com/cat.png", "http://8.8.8.8/cat.png", "http://[2001:db9::1]/a.png"]
FINE_IMAGES += ["https://cdn.example.org./a.png", "https://local.example.com/a.png", "https://internal.example/a.png"]


@pytest.fixture
async def producer(make_producer, settings):
    return await make_producer(settings, own_settings=True)


def test_names_of_the_local_network_are_named_and_public_names_are_not():
    for url in INTERNAL_IMAGES:
        why = egress.image_url_problem(url)
        assert why is not None and ("a name of the local network" in why or "a single-label name" in why), url
    assert "(internal, *.internal)" in (egress.image_url_problem(INTERNAL_IMAGES[0]) or "")
    teredo = "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/cat.png"
    assert "a loopback address (in 2001:0:4136:e378:8000:63bf:80ff:fffe)" in (egress.image_url_problem(teredo) or "")
    for url in FINE_IMAGES:
        assert egress.image_url_problem(url) is None, url


async def test_image_urls_naming_this_network_are_refused_at_enqueue(producer, redis):
    for url in REFUSED_IMAGES:
        with pytest.raises(JobRejected) as refused:
            await producer.vision("gpt-4o", url, "What is it?")
        assert refused.value.field == "image", url
        assert "IMAGE_URLS_ALLOW_PRIVATE=true" in refused.value.message, url
        part = {"type": "image_url", "image_url": {"url": url}}
        with pytest.raises(JobRejected) as refused:
            await producer.chat("gpt-4o", messages=[{"role": "user", "content": [part]}])
        assert refused.value.field == "image", url
    assert await redis.dbsize() == 0
    for url in FINE_IMAGES:
        await producer.vision("gpt-4o", url, "What is it?")
    assert await redis.zcard(producer.settings.queue_name) == len(FINE_IMAGES)


async def test_image_urls_are_refused_over_http_and_by_the_worker_unless_allowed(settings, producer, redis):
    url = "http://169.254.169.254/latest/meta-data/"
    job = {"kind": "vision", "model": "gpt-4o", "image": url, "prompt": "What is it?"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(settings.model_copy(update={"ingress_tokens": {TOKEN: "t"}})), headers=auth) as http:
        answer = http.post("/v1/jobs", json=job)
        assert answer.status_code == 422
        error = answer.json()["error"]
        assert error["param"] == "image" and "a link-local address" in error["message"]
        chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": url}]}]}
        answer = http.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 422 and "IMAGE_URLS_ALLOW_PRIVATE" in answer.json()["error"]["message"]
    assert await redis.zcard(settings.queue_name) == 0

    # a record another writer left (no producer's check): the worker refuses it, uncalled
    await redis.set(b"arq:job:foreign", json.dumps({"f": "vision", "a": [job]}))
    await redis.zadd(settings.queue_name, {b"foreign": 1})
    await run_worker(settings)
    result = await producer.result("foreign")
    assert result.status == "failed" and result.error.type == "invalid_job" and result.error.field == "image"
    assert result.attempts == []

    # a self-hosted upstream on the operator's own network: allowed
    own = settings.model_copy(update={"image_urls_allow_private": True})
    async with Producer(settings=own, source=producer.source) as trusting:
        job_id = await trusting.vision("gpt-4o", url, "What is it?")
    await run_worker(own)
    result = await producer.result(job_id)
    assert result.status == "succeeded" and url in (result.content or "")
