"""AISA_BASE_URL's check (worker.contract.setting_types.base_url_problem): it refuses exactly the URLs
httpx, the gateway client, cannot call, and those with a port no connection can use (httpx reads
any number), although it reads a plain URL without importing httpx."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.contract import setting_types
from worker.contract.setting_types import base_url_problem, plain_http_url


def httpx_calls(url: str) -> bool:
    """The reference: httpx reads `url` as an http(s) URL with a host, and a port in 1-65535 if any."""
    try:
        parsed = httpx.URL(url)
        port_ok = parsed.port is None or 0 < parsed.port <= 65535
        return parsed.scheme in ("http", "https") and bool(parsed.host) and port_ok
    except (httpx.InvalidURL, UnicodeError):
        return False


PLAIN = [
    "https://api.aisa.one/v1",
    "http://127.0.0.1:8700/v1",
    "http://sim:8700/v1",
    "http://localhost",
    "https://gateway.example.com:443/",
    "http://10.0.0.1/openai/v1/",
    "https://a-b.c/v1/x@y:z/%41;p=1",
    "https://api.aisa.one:65535/v1",
    "https://1.2.3/v1",  # not a dotted quad: a name to httpx
]
# fine, but not plain: read by httpx itself
NOT_PLAIN_FINE = [
    "HTTPS://api.aisa.one/v1",
    "https://[::1]:8080/v1",
    "https://api.aisa.one/v1?org=1",
    "https://api.aisa.one/v1#x",
    "https://user:pw@api.aisa.one/v1",
    "https://例え.jp/v1",
    "https://xn--r8jz45g.jp/v1",  # a valid A-label
    "https://api.aisa.one./v1",
]
REFUSED = [
    "api.aisa.one/v1",
    "https:///v1",
    "ftp://api.aisa.one/v1",
    "https://999.1.1.1/v1",  # a dotted quad that is no IPv4 address
    "http://01.2.3.4/v1",
    "https://xn--zz.com/v1",  # an A-label idna cannot decode
    "https://[::g]/v1",
    "https://api.aisa.one:port/v1",
    "https://api.aisa.one/v1\n",
    "https://api.aisa .one/v1\t",
    "",
    "https://" + "a" * 70000,
]


@pytest.mark.parametrize("url", PLAIN)
def test_a_plain_url_is_taken_without_httpx(url):
    assert plain_http_url(url) and httpx_calls(url)
    assert base_url_problem(url) is None


@pytest.mark.parametrize("url", NOT_PLAIN_FINE + REFUSED)
def test_any_other_url_is_read_by_httpx(url):
    assert not plain_http_url(url)
    assert (base_url_problem(url) is None) is httpx_calls(url) is (url in NOT_PLAIN_FINE)


def test_an_undecodable_a_label_is_refused_with_a_reason():
    assert "is not a URL" in (base_url_problem("https://xn--zz.com/v1") or "")


@given(st.from_regex(setting_types._PLAIN_URL, fullmatch=True))
def test_every_url_the_plain_pattern_takes_httpx_takes(url):
    if plain_http_url(url):
        parsed = httpx.URL(url)
        assert parsed.scheme in ("http", "https") and parsed.host, url


@pytest.mark.parametrize(
    "url", ["https://api.aisa.one:99999/v1", "http://127.0.0.1:0/v1", "https://[::1]:70000/v1", "HTTP://a:65536"]
)
def test_a_port_no_connection_can_use_is_refused_naming_it(url):
    # httpx reads any port number: the client would fail every job, so the start fails instead
    assert "outside 1-65535" in (base_url_problem(url) or "")


URLISH = st.text(alphabet="aZ09-._~:/?#[]@!$&'()*+,;=% x\tÄ", max_size=40)


@given(st.sampled_from(["http://", "https://", "HTTP://", "ftp://", ""]), URLISH)
def test_the_check_refuses_what_httpx_refuses_and_nothing_else(scheme, rest):
    url = scheme + rest
    assert (base_url_problem(url) is None) is httpx_calls(url), url
