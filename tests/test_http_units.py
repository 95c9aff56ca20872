"""Units of slice_connect.http that mutation testing found unchecked (docs/development.rst).

The async transport on an in-memory httpx transport (exact size cap, decoded bytes bounded
by the cap, the call's budget, the timeouts and headers sent, redirects never followed, log
lines), the bounded decoder's codings and its raw-deflate fallback, the shared TLS context,
media types, and the classification of TLS errors without arguments.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import ssl
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import requests
from urllib3.exceptions import DecodeError, MaxRetryError
from urllib3.exceptions import SSLError as Urllib3SSLError

from slice_connect import http
from slice_connect.exceptions import ResponseLost, ResponseTooLarge, TransientError

URL = "https://slice.test/api/v1/users/self"
LIMIT = 100


def asend(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    timeout: tuple[float, float] = (2.0, 5.0),
    limit: int = LIMIT,
    follow_redirects: bool = False,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    async def scenario() -> httpx.Response:
        transport = httpx.MockTransport(handler)
        async with httpx.AsyncClient(
            transport=transport, follow_redirects=follow_redirects, headers=headers
        ) as client:
            return await http.asend(
                "GET", URL, timeout=timeout, limit=limit, what="API call", client=client
            )

    return asyncio.run(scenario())


def logged(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "slice_connect.http" and r.levelno == level
    ]


def chunks(*parts: bytes, pause: float = 0.0) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for part in parts:
            if pause:
                await asyncio.sleep(pause)
            yield part

    return stream()


# -- the async transport ----------------------------------------------------------------------


@pytest.mark.parametrize("parts", [[b"x" * LIMIT], [b"x" * 60, b"y" * 40]], ids=["one", "two"])
def test_an_answer_of_exactly_the_cap_is_read_whole(parts: list[bytes]) -> None:
    response = asend(lambda request: httpx.Response(200, content=chunks(*parts)))
    assert response.content == b"".join(parts)


@pytest.mark.parametrize(
    "parts", [[b"x" * (LIMIT + 1)], [b"x" * 60, b"y" * 41]], ids=["one", "two"]
)
def test_one_byte_over_the_cap_is_refused(
    parts: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ResponseTooLarge) as excinfo:
        asend(lambda request: httpx.Response(203, content=chunks(*parts)))
    assert (excinfo.value.status_code, excinfo.value.limit) == (203, LIMIT)
    assert str(excinfo.value) == f"Slice's answer is larger than {LIMIT} bytes; not read further."
    assert logged(caplog) == [f"API call: the answer exceeded {LIMIT} bytes."]


def test_a_compressed_answer_is_decoded_no_further_than_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[int] = []
    decode = http._BoundedDecoder.decode

    def counting(self: Any, data: bytes, room: int) -> bytes:
        out = decode(self, data, room)
        decoded.append(len(out))
        return out

    monkeypatch.setattr(http._BoundedDecoder, "decode", counting)
    # Bytes that do not compress, so that the first part decodes to less than the cap.
    plain = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(8))
    body = gzip.compress(plain)
    parts = [body[:70], body[70:]]
    with pytest.raises(ResponseTooLarge):
        asend(
            lambda request: httpx.Response(
                200, headers={"Content-Encoding": "gzip"}, content=chunks(*parts)
            )
        )
    assert 0 < decoded[0] <= LIMIT
    assert sum(decoded) == LIMIT + 1


def test_the_budget_bounds_a_dripping_answer() -> None:
    # No read timeout applies in memory: only the call's budget (connect + read) ends it.
    started = asyncio.run(_monotonic())
    with pytest.raises(ResponseLost) as excinfo:
        asend(
            lambda request: httpx.Response(200, content=chunks(*[b"."] * 40, pause=0.05)),
            timeout=(0.1, 0.2),
        )
    assert excinfo.value.code == "timeout"
    assert asyncio.run(_monotonic()) - started < 1.5


async def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def test_what_is_sent_timeouts_and_codings() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=chunks(b"{}"))

    # Only the codings decoded here, whatever the client would ask for by default.
    asend(handler, timeout=(2.0, 7.0), headers={"Accept-Encoding": "br, zstd"})
    (request,) = seen
    assert request.headers["Accept-Encoding"] == "gzip, deflate"
    assert request.extensions["timeout"] == {"connect": 2.0, "read": 7.0, "write": 7.0, "pool": 7.0}


def test_a_redirect_is_returned_even_by_a_client_that_follows_them() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/elsewhere"):
            return httpx.Response(200, content=chunks(b"followed"))
        return httpx.Response(
            302, headers={"Location": "https://slice.test/elsewhere"}, content=chunks()
        )

    response = asend(handler, follow_redirects=True)
    assert response.status_code == 302


@pytest.mark.parametrize(
    ("error", "kind", "code", "message"),
    [
        (httpx.ConnectError("refused"), TransientError, "connect_error",
         "Could not reach Slice (ConnectError)."),
        (httpx.ReadTimeout("slow"), ResponseLost, "timeout",
         "No usable answer from Slice (ReadTimeout)."),
        (httpx.RemoteProtocolError("closed"), ResponseLost, "connection_error",
         "No usable answer from Slice (RemoteProtocolError)."),
        (UnicodeEncodeError("ascii", "\u00e9", 0, 1, "not ASCII"), TransientError,
         "unencodable_request", "Could not reach Slice (UnicodeEncodeError)."),
    ],
    ids=["connect", "timeout", "protocol", "unencodable"],
)  # fmt: skip
def test_async_failures_are_classified_and_logged(
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    kind: type[Exception],
    code: str,
    message: str,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(TransientError) as excinfo:
        asend(handler)
    assert type(excinfo.value) is kind
    assert (excinfo.value.code, str(excinfo.value)) == (code, message)
    name = type(error).__name__
    sent = "not sent" if kind is TransientError else "sent, but no answer"
    assert logged(caplog) == [f"API call: {sent} ({name})."]
    assert logged(caplog, logging.ERROR) == []


def test_an_untrusted_certificate_is_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")

    with pytest.raises(TransientError):
        asend(handler)
    assert logged(caplog, logging.ERROR) == [
        "TLS verification of API call failed: the request was not sent."
    ]


def test_async_clients_share_one_tls_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "_async_tls", None)

    async def two() -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
        return await http.new_async_client(), await http.new_async_client()

    first, second = asyncio.run(two())
    context = http._async_tls
    assert isinstance(context, ssl.SSLContext)
    assert http._build_async_tls() is context
    for client in (first, second):
        assert client.trust_env is False
        assert client._transport._pool._ssl_context is context  # type: ignore[attr-defined]
        asyncio.run(client.aclose())


# -- the bounded decoder ----------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["", "identity", "IDENTITY", " gzip , identity", "x-gzip"])
def test_decoder_codings(encoding: str) -> None:
    body = b"hello" * 10
    data = gzip.compress(body) if "gzip" in encoding else body
    assert http._BoundedDecoder(encoding).decode(data, 1000) == body


@pytest.mark.parametrize("encoding", ["br", "gzip, gzip", "gzip, deflate"])
def test_decoder_refuses_codings_it_cannot_bound(encoding: str) -> None:
    with pytest.raises(DecodeError) as excinfo:
        http._BoundedDecoder(encoding)
    assert str(excinfo.value) == f"Unsupported content coding {encoding!r}."


def test_decoder_returns_at_most_room() -> None:
    decoder = http._BoundedDecoder("gzip")
    assert decoder.decode(gzip.compress(b"a" * 5000), 10) == b"a" * 10


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_raw_deflate_is_accepted_as_deflate_only() -> None:
    assert http._BoundedDecoder("deflate").decode(raw_deflate(b"raw" * 10), 1000) == b"raw" * 10
    with pytest.raises(DecodeError) as excinfo:
        http._BoundedDecoder("gzip").decode(raw_deflate(b"raw" * 10), 1000)
    assert str(excinfo.value) == "Undecodable gzip body."


def test_undecodable_deflate_is_an_error_not_a_loop() -> None:
    with pytest.raises(DecodeError) as excinfo:
        http._BoundedDecoder("deflate").decode(b"\xff" * 64, 1000)
    assert str(excinfo.value) == "Undecodable deflate body."


def test_deflate_falls_back_to_raw_only_on_the_first_chunk() -> None:
    wrapped = zlib.compress(b"w" * 1000)
    decoder = http._BoundedDecoder("deflate")
    assert decoder.decode(wrapped[:10], 1000) == zlib.decompressobj().decompress(wrapped[:10])
    with pytest.raises(DecodeError):
        decoder.decode(b"\xff" + raw_deflate(b"tail"), 1000)


# -- media types, JSON, TLS errors, sessions ----------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/json; charset=utf-8; q=1", True),
        ("application/vnd.slice+json", True),
        ("application/problem+JSON", True),
        ("application/jsonp", False),
        ("text/json-ish", False),
        ("text/plain; note=application/json", False),
        ("", False),
    ],
)
def test_json_media_types(content_type: str, expected: bool) -> None:
    assert http.is_json_media_type(content_type) is expected


def test_undecodable_json_says_why_without_the_body() -> None:
    with pytest.raises(ValueError) as excinfo:
        http.decode_json(b"\xff\xfe secret")
    assert str(excinfo.value) == "Undecodable JSON (UnicodeDecodeError)."


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.SSLError(),
        requests.exceptions.SSLError(MaxRetryError(None, "https://slice.test/", Urllib3SSLError())),  # type: ignore[arg-type]
    ],
    ids=["bare", "no-reason"],
)
def test_a_tls_error_without_details_may_have_been_sent(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    lost = http._classify(error, "Token request")
    assert (type(lost), lost.code) == (ResponseLost, "tls_error")
    assert str(lost) == "No usable answer from Slice (SSLError)."
    assert logged(caplog, logging.ERROR) == [
        "TLS failure on Token request after the request was sent."
    ]


@pytest.mark.parametrize(
    ("error", "code", "message", "log"),
    [
        (requests.ConnectTimeout("connect"), "connect_error",
         "Could not reach Slice (ConnectTimeout).", "Token request: not sent (ConnectTimeout)."),
        (UnicodeEncodeError("latin-1", "\u20ac", 0, 1, "no"), "unencodable_request",
         "The request to Slice could not be encoded.",
         "Token request: not sent, the request could not be encoded (UnicodeEncodeError)."),
    ],
    ids=["connect-timeout", "unencodable"],
)  # fmt: skip
def test_requests_never_sent_are_classified_and_logged(
    caplog: pytest.LogCaptureFixture, error: Exception, code: str, message: str, log: str
) -> None:
    never_sent = http._classify(error, "Token request")
    assert type(never_sent) is TransientError
    assert (never_sent.code, str(never_sent)) == (code, message)
    assert logged(caplog) == [log]


def test_each_thread_gets_its_own_oauth_session() -> None:
    main = http._oauth_session()
    assert http._oauth_session() is main
    other: list[requests.Session] = []
    thread = threading.Thread(target=lambda: other.append(http._oauth_session()))
    thread.start()
    thread.join()
    assert other and other[0] is not main
    other[0].close()


def test_proxy_managers_keep_the_deadline_and_the_arguments_given() -> None:
    manager = http.DeadlineAdapter().proxy_manager_for(
        "http://proxy.test:3128", source_address=("127.0.0.1", 0)
    )
    assert manager.pool_classes_by_scheme is http.POOL_CLASSES
    assert manager.connection_pool_kw["source_address"] == ("127.0.0.1", 0)
