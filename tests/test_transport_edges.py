"""The transport's and the clients' edges: decoding failures, TLS, proxies, redirects, odd
arguments (docs/threat-model.rst R39-R41, R45). The fault battery is tests/test_transport.py.
"""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import responses
from asgiref.sync import async_to_sync
from django.utils import timezone

from slice_connect import http, oauth
from slice_connect.client import AsyncSliceClient, SliceClient
from slice_connect.exceptions import (
    ApiError,
    InvalidTokenResponse,
    ResponseLost,
    TransientError,
)
from slice_connect.models import SliceCredential
from tests.conftest import API, TOKEN_URL
from tests.faulty_server import Fault, FaultyServer, make_tls_files, token_json

pytestmark = pytest.mark.django_db

MakeCredential = Callable[..., SliceCredential]


def _get(target: Any, path: str = "orders", **kwargs: Any) -> Any:
    async def scenario() -> Any:
        async with AsyncSliceClient(target, **kwargs) as client:
            return await client.get(path)

    return async_to_sync(scenario)()


# -- the deadline reader --------------------------------------------------------------------


def test_a_read_after_the_deadline_raises_at_once() -> None:
    left, right = socket.socketpair()
    try:
        reader = http._DeadlineReader(left, time.monotonic() - 1)
        started = time.monotonic()
        with pytest.raises(http.DeadlineExceeded):
            reader.readinto(bytearray(10))
        assert time.monotonic() - started < 0.1
        reader.close()
        reader.close()  # closing twice is harmless
    finally:
        left.close()
        right.close()


def test_proxied_connections_read_against_the_deadline_too() -> None:
    adapter = http.DeadlineAdapter()
    manager = adapter.proxy_manager_for("http://127.0.0.1:9")
    assert manager.pool_classes_by_scheme is http.POOL_CLASSES


# -- undecodable bodies: the answer is lost (it may have been processed) ---------------------


BAD_GZIP = b"\x1f\x8b\x08\x00 this is not gzip at all"


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_an_undecodable_compressed_token_answer_is_a_lost_answer(
    coding: str, settings: Any
) -> None:
    fault = Fault("answer", body=b"x")
    with FaultyServer(fault) as running:
        # The server says it compressed, but the bytes are not that coding.
        running.fault = Fault("answer", body=BAD_GZIP)
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "TOKEN_URL": f"{running.url}/t"}
        original = http._read_body

        def lie(response: requests.Response, limit: int) -> bytes:
            response.raw.headers["Content-Encoding"] = coding
            return original(response, limit)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(http, "_read_body", lie)
            with pytest.raises(ResponseLost) as excinfo:
                oauth.refresh("a-refresh-token")
    assert excinfo.value.code == "decode_error"


@pytest.mark.parametrize(
    ("encoding", "body", "code"),
    [
        ("gzip", BAD_GZIP, "decode_error"),
        ("br", b"whatever", "decode_error"),
        ("gzip, deflate", b"whatever", "decode_error"),
    ],
)
def test_async_undecodable_or_unsupported_coding_is_a_lost_answer(
    encoding: str, body: bytes, code: str, user: Any, make_credential: MakeCredential
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        stream = httpx.ByteStream(body)
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=stream)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    with pytest.raises(ResponseLost) as excinfo:
        _get(make_credential(user), client=client)
    assert excinfo.value.code == code


@pytest.mark.parametrize("wrapped", [True, False], ids=["zlib-deflate", "raw-deflate"])
def test_async_deflate_with_or_without_the_zlib_wrapper(
    wrapped: bool, user: Any, make_credential: MakeCredential
) -> None:
    data = b'{"result": {"id": 7}}'
    if wrapped:
        body = zlib.compress(data)
    else:
        raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        body = raw.compress(data) + raw.flush()

    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Encoding": "deflate"}
        return httpx.Response(200, headers=headers, stream=httpx.ByteStream(body))

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    assert _get(make_credential(user), client=client) == {"result": {"id": 7}}


def test_gzip_decoder_refuses_past_the_room_it_is_given() -> None:
    decoder = http._BoundedDecoder("gzip")
    out = decoder.decode(gzip.compress(bytes(100_000)), 1_000)
    assert len(out) == 1_000


# -- TLS: a certificate that fails verification was never sent -----------------------------


def test_async_untrusted_certificate_is_never_sent_and_logged(
    tmp_path: Path,
    settings: Any,
    user: Any,
    make_credential: MakeCredential,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tls = make_tls_files(tmp_path)
    with FaultyServer(Fault("answer"), ssl_context=tls.server_context()) as running:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "API_BASE_URL": f"{running.url}/"}
        with pytest.raises(TransientError) as excinfo:
            _get(make_credential(user))
        assert running.requests == []
    assert type(excinfo.value) is TransientError and excinfo.value.code == "connect_error"
    assert any("TLS verification" in r.getMessage() for r in caplog.records)


# -- Retry-After -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), ("Wed, 21 Oct 2015 07:28:00", None), ("-3", None), ("\u0661\u0662", None)],
    ids=["delta", "date-without-zone", "negative", "non-ascii-digits"],
)
def test_retry_after(value: str, seconds: float | None) -> None:
    response = requests.Response()
    response.headers["Retry-After"] = value
    assert http.retry_after_seconds(response) == seconds


# -- token answers: nothing usable left, odd numbers, oversized refusals -----------------------


def test_a_refresh_answer_with_nothing_usable_is_invalid() -> None:
    body = b'{"access_token": "a-token", "token_type": "mac"}'
    with pytest.raises(InvalidTokenResponse) as excinfo:
        oauth.parse_token_response(
            body,
            content_type="application/json",
            require_refresh_token=False,
            received_at=timezone.now(),
        )
    assert excinfo.value.code == "bad_token_type"


@pytest.mark.parametrize(
    ("value", "expected"), [(True, None), ("1209600", 1209600), ("-1", None), (0, None)]
)
def test_refresh_lifetime_values(value: Any, expected: int | None) -> None:
    assert oauth._positive_int(value, maximum=10**9) == expected


def test_an_oversized_refusal_is_judged_by_its_status(
    slice_mock: responses.RequestsMock,
) -> None:
    slice_mock.add(responses.POST, TOKEN_URL, status=400, body=b"x" * (100 * 1024))
    with pytest.raises(InvalidTokenResponse) as excinfo:
        oauth.refresh("a-refresh-token")
    assert excinfo.value.code == "http_400"


# -- clients: timeouts, tokens, methods, redirects ---------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "soon", (1, None)])
def test_an_unusable_timeout_falls_back_to_the_setting(timeout: Any) -> None:
    from slice_connect.client import _timeout_pair

    assert _timeout_pair(timeout) == (3.05, 10.0)
    assert _timeout_pair((1, 2)) == (1.0, 2.0)


def test_no_usable_access_token_even_after_renewal_is_transient(
    user: Any, make_credential: MakeCredential, slice_mock: responses.RequestsMock
) -> None:
    # Slice renews, but its access token is unusable (the refresh token is kept).
    slice_mock.add(
        responses.POST,
        TOKEN_URL,
        json={"access_token": "", "token_type": "Bearer", "refresh_token": "new-refresh-1"},
    )
    credential = make_credential(user, access_token_expires_at=timezone.now())
    with pytest.raises(TransientError) as excinfo:
        SliceClient(credential).get("orders")
    assert excinfo.value.code == "no_access_token"
    assert SliceCredential.objects.get(pk=credential.pk).refresh_token == "new-refresh-1"


def _answer(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> Any:
    """An httpx answer as from a real server (a stream; content= would be pre-read)."""
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


def test_post_and_303_become_a_get_without_the_body(
    user: Any, make_credential: MakeCredential, slice_mock: responses.RequestsMock
) -> None:
    seen: list[tuple[str, str]] = []

    def record(request: Any) -> tuple[int, dict[str, str], str]:
        body = request.body or ""
        seen.append((request.method, body if isinstance(body, str) else body.decode()))
        if request.method == "POST":
            return 303, {"Location": f"{API}done"}, ""
        return 200, {"Content-Type": "application/json"}, '{"ok": true}'

    slice_mock.add_callback(responses.POST, f"{API}notes", callback=record)
    slice_mock.add_callback(responses.GET, f"{API}done", callback=record)
    assert SliceClient(make_credential(user)).post("notes", {"text": "hi"}) == {"ok": True}
    assert seen == [("POST", "text=hi"), ("GET", "")]


def test_async_post_and_303_become_a_get_without_the_body(
    user: Any, make_credential: MakeCredential
) -> None:
    credential = make_credential(user)
    seen: list[tuple[str, bytes]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.read()))
        if request.method == "POST":
            return _answer(303, {"Location": f"{API}done"})
        return _answer(200, {"Content-Type": "application/json"}, b'{"ok": true}')

    async def scenario() -> Any:
        client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
        async with AsyncSliceClient(credential, client=client) as api:
            return await api.post("notes", {"text": "hi"})

    assert async_to_sync(scenario)() == {"ok": True}
    assert seen == [("POST", b"text=hi"), ("GET", b"")]


def test_too_many_redirects_stop(user: Any, make_credential: MakeCredential) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return _answer(302, {"Location": f"{API}again"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    with pytest.raises(ApiError) as excinfo:
        _get(make_credential(user), client=client)
    assert excinfo.value.code == "redirects"


def test_async_request_outside_async_with_is_refused(
    user: Any, make_credential: MakeCredential
) -> None:
    credential = make_credential(user)

    async def scenario() -> None:
        await AsyncSliceClient(credential).request("GET", "orders")

    with pytest.raises(RuntimeError, match="async with"):
        async_to_sync(scenario)()


def test_renewal_in_async_code_goes_through_the_locked_path(
    user: Any, make_credential: MakeCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(
        responses.POST, TOKEN_URL, body=token_json("async"), content_type="application/json"
    )
    credential = make_credential(
        user, access_token_expires_at=timezone.now() + timedelta(seconds=5)
    )

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer async-access-token-0123456789"
        return _answer(200, {"Content-Type": "application/json"}, b'{"ok": 1}')

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    assert _get(credential, client=client) == {"ok": 1}
    assert SliceCredential.objects.get(pk=credential.pk).version == 2


def test_the_oauth_session_reads_the_environment_once_per_origin(
    slice_mock: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY and friends are honoured, but looked up once, not on every token request."""
    for _ in range(2):
        slice_mock.add(responses.POST, TOKEN_URL, json={"ok": True})
    slice_mock.add(responses.POST, "https://other.test/revoke", json={"ok": True})
    lookups: list[str] = []
    real = requests.utils.get_environ_proxies

    def counted(url: str, no_proxy: Any = None) -> dict[str, str]:
        lookups.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.sessions, "get_environ_proxies", counted)
    monkeypatch.setenv("NO_PROXY", "*")
    for url in (TOKEN_URL, TOKEN_URL, "https://other.test/revoke"):
        answer = http.send("POST", url, timeout=(1, 1), limit=1024, what="test")
        assert answer.json() == {"ok": True}
    assert lookups == [TOKEN_URL, "https://other.test/revoke"]
