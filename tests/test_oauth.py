"""The code exchange against a mocked token endpoint: the B3 response matrix and transport.

Battery B3 is that of docs/threat-model.rst.
"""

from __future__ import annotations

import codecs
import email.utils
import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
import time_machine
from django.test import override_settings
from django.utils import timezone
from urllib3.exceptions import MaxRetryError, NewConnectionError

from slice_connect import oauth
from slice_connect.exceptions import (
    ConfigurationError,
    InvalidTokenResponse,
    ResponseLost,
    SliceConnectError,
    TokenRequestFailed,
    TransientError,
)
from tests.conftest import TOKEN_URL
from tests.helpers import fingerprint

from .conftest import certificate_error

REDIRECT_URI = "https://app.test/slice/callback/"
STATE = "S" * 20 + "tate-value-for-the-oauth-tests"
CODE = "CODE-CANARY-0123456789"
ACCESS = "ACCESS-CANARY-abcdefghijklmnop"
REFRESH = "REFRESH-CANARY-qrstuvwxyz012345"
SECRET = "test-client-secret"
JSON = "application/json"


@pytest.fixture
def slice_http(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    return slice_mock


def token_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "token_type": "bearer",
        "expires_in": 3600,
    }
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


_DROP = object()


def exchange(use_pkce: bool = True) -> oauth.TokenSet:
    return oauth.exchange_code(code=CODE, redirect_uri=REDIRECT_URI, state=STATE, use_pkce=use_pkce)


def token_calls(mock: responses.RequestsMock) -> list[Any]:
    return [c for c in mock.calls if c.request.url == TOKEN_URL]


def form(call: Any) -> dict[str, list[str]]:
    body = call.request.body
    return parse_qs(body if isinstance(body, str) else body.decode())


def assert_no_secret_in(exc: BaseException) -> None:
    text = f"{exc!s} {exc!r} {getattr(exc, 'code', '')}"
    for secret in (CODE, ACCESS, REFRESH, SECRET, STATE, oauth.pkce_verifier(STATE)):
        assert secret not in text


# -- valid answers ------------------------------------------------------------------------


def test_valid_response(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, json=token_body(), status=200)
    with time_machine.travel("2030-01-01 00:00:00+00:00", tick=False):
        tokens = exchange()
        now = timezone.now()
    assert tokens.access_token == ACCESS
    assert tokens.refresh_token == REFRESH
    assert tokens.token_type == "bearer"
    assert tokens.expires_in == 3600
    assert tokens.received_at == now
    assert tokens.access_token_expires_at == now + timedelta(hours=1)
    assert tokens.refresh_token_expires_at == now + timedelta(days=14)
    assert len(token_calls(slice_http)) == 1


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"expires_in": _DROP}, "expires_in", 3600),
        ({"expires_in": "3600"}, "expires_in", 3600),
        ({"expires_in": 1}, "expires_in", 1),
        ({"expires_in": 366 * 24 * 3600}, "expires_in", 366 * 24 * 3600),
        ({"token_type": _DROP}, "token_type", "bearer"),
        ({"token_type": "Bearer"}, "token_type", "bearer"),
        ({"token_type": "BEARER"}, "token_type", "bearer"),
        ({"refresh_token_expires_in": 600}, "refresh_expires_in", 600),
        ({"refresh_token_expires_in": "bogus"}, "refresh_expires_in", None),
        ({"scope": "read", "id_token": "ignored"}, "access_token", ACCESS),
    ],
    ids=[
        "expires_in-missing",
        "expires_in-string",
        "expires_in-1",
        "expires_in-max",
        "token_type-missing",
        "token_type-Bearer",
        "token_type-BEARER",
        "refresh-lifetime",
        "refresh-lifetime-bogus",
        "extra-fields",
    ],
)
def test_accepted_variants(
    slice_http: responses.RequestsMock, changes: dict[str, Any], field: str, expected: Any
) -> None:
    slice_http.post(TOKEN_URL, json=token_body(**changes))
    tokens = exchange()
    assert getattr(tokens, field) == expected
    assert tokens.access_token == ACCESS and tokens.refresh_token == REFRESH


def test_json_content_type_variants(slice_http: responses.RequestsMock) -> None:
    slice_http.post(
        TOKEN_URL,
        body=json.dumps(token_body()),
        content_type="application/json; charset=UTF-8",
    )
    assert exchange().access_token == ACCESS


# -- invalid 200 answers: Slice may have issued tokens, so the response counts as lost ----


BIG = b'{"access_token": "' + b"A" * (10 * 1024 * 1024) + b'"}'


@pytest.mark.parametrize(
    ("body", "content_type", "code"),
    [
        (token_body(refresh_token=_DROP), JSON, "no_refresh_token"),
        (token_body(refresh_token=None), JSON, "no_refresh_token"),
        (token_body(refresh_token=""), JSON, "bad_refresh_token"),
        (token_body(refresh_token=12), JSON, "bad_refresh_token"),
        (token_body(refresh_token="r" * (16 * 1024 + 1)), JSON, "bad_refresh_token"),
        (token_body(refresh_token="a\r\nb"), JSON, "bad_refresh_token"),
        (b"<html><body>Bad gateway</body></html>", "text/html", "not_json"),
        (b"", JSON, "malformed_json"),
        (b'{"access_token": "abc", "refresh_tok', JSON, "malformed_json"),
        (b"[1, 2, 3]", JSON, "malformed_json"),
        (b'"just a string"', JSON, "malformed_json"),
        (b"\xff\xfe{}", JSON, "malformed_json"),
        (b"[" * 20_000 + b"]" * 20_000, JSON, "malformed_json"),
        (BIG, JSON, "response_too_large"),
    ],
    ids=[
        "no-refresh-token",
        "refresh-token-null",
        "refresh-token-empty",
        "refresh-token-int",
        "refresh-token-too-long",
        "refresh-token-crlf",
        "html",
        "empty",
        "truncated",
        "array",
        "string",
        "not-utf8",
        "deeply-nested",
        "10MB",
    ],
)
def test_invalid_200_is_response_lost(
    slice_http: responses.RequestsMock, body: Any, content_type: str, code: str
) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    slice_http.post(TOKEN_URL, body=raw, status=200, content_type=content_type)
    with pytest.raises(SliceConnectError) as excinfo:
        exchange()
    assert type(excinfo.value) is ResponseLost
    assert excinfo.value.code == code
    assert len(token_calls(slice_http)) == 1  # never retried
    assert_no_secret_in(excinfo.value)


# -- odd 200 answers that carry a usable refresh token: kept, what is odd is not trusted ----

#: (changes, content type, expected expires_in, access token kept)
ODD_ANSWERS: dict[str, tuple[Any, str, int, bool]] = {
    "expires_in-0": (token_body(expires_in=0), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in--1": (token_body(expires_in=-1), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in-fraction": (token_body(expires_in=3599.5), JSON, 3599, True),
    "expires_in-10e12": (token_body(expires_in=10**12), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in-str-neg": (token_body(expires_in="-1"), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in-word": (token_body(expires_in="soon"), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in-bool": (token_body(expires_in=True), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in-null": (token_body(expires_in=None), JSON, oauth.ODD_EXPIRES_IN, True),
    "expires_in-missing": (token_body(expires_in=_DROP), JSON, oauth.DEFAULT_EXPIRES_IN, True),
    "token_type-lower": (token_body(token_type="bearer"), JSON, 3600, True),
    "token_type-mac": (token_body(token_type="mac"), JSON, 0, False),
    "token_type-dpop": (token_body(token_type="DPoP"), JSON, 0, False),
    "token_type-null": (token_body(token_type=None), JSON, 0, False),
    "access-empty": (token_body(access_token=""), JSON, 0, False),
    "access-missing": (token_body(access_token=_DROP), JSON, 0, False),
    "access-int": (token_body(access_token=12345), JSON, 0, False),
    "access-null": (token_body(access_token=None), JSON, 0, False),
    "access-list": (token_body(access_token=["a"]), JSON, 0, False),
    "access-crlf": (token_body(access_token="a\r\nb"), JSON, 0, False),
    "access-not-latin-1": (token_body(access_token="jeton-\u20ac"), JSON, 0, False),
    "access-too-long": (token_body(access_token="x" * (16 * 1024 + 1)), JSON, 0, False),
    "text-plain": (token_body(), "text/plain", 3600, True),
    "text-html": (token_body(), "text/html; charset=utf-8", 3600, True),
    "no-content-type": (token_body(), "", 3600, True),
}


@pytest.mark.parametrize(
    ("body", "content_type", "expires_in", "access_kept"),
    ODD_ANSWERS.values(),
    ids=ODD_ANSWERS.keys(),
)
def test_odd_200_keeps_the_refresh_token(
    slice_http: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    body: Any,
    content_type: str,
    expires_in: int,
    access_kept: bool,
) -> None:
    slice_http.post(TOKEN_URL, body=json.dumps(body).encode(), content_type=content_type)
    tokens = exchange()
    assert tokens.refresh_token == REFRESH
    assert tokens.expires_in == expires_in
    assert tokens.access_token == (ACCESS if access_kept else "")
    if not access_kept:
        assert tokens.access_token_expires_at == tokens.received_at  # renewed on first use
    assert len(token_calls(slice_http)) == 1
    if "token_type-lower" not in caplog.text:
        odd = [r for r in caplog.records if "odd answer" in r.getMessage()]
        assert len(odd) == (0 if body == token_body() and content_type == JSON else 1)
    for record in caplog.records:
        assert REFRESH not in record.getMessage() and ACCESS not in record.getMessage()


def test_bom_and_long_jwt_sized_tokens_are_kept(slice_http: responses.RequestsMock) -> None:
    jwt_sized = "eyJ" + "a" * 8000
    raw = codecs.BOM_UTF8 + json.dumps(token_body(refresh_token=jwt_sized)).encode()
    slice_http.post(TOKEN_URL, body=raw, content_type=JSON)
    tokens = exchange()
    assert tokens.refresh_token == jwt_sized
    assert tokens.access_token == ACCESS and "byte order mark" in tokens.odd


# -- refusals and failures --------------------------------------------------------------


def _error(status: int, body: Any = None, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"status": status, **kw}
    if body is not None:
        spec["json"] = body
    return spec


@pytest.mark.parametrize(
    ("spec", "exc_type", "code"),
    [
        (_error(400, {"error": "invalid_grant"}), TokenRequestFailed, "invalid_grant"),
        (
            _error(400, {"error": "invalid_grant", "error_description": "code expired"}),
            TokenRequestFailed,
            "invalid_grant",
        ),
        (_error(400, {"error": "invalid_request"}), ConfigurationError, "invalid_request"),
        (_error(400, {"error": "invalid_scope"}), ConfigurationError, "invalid_scope"),
        (
            _error(400, {"error": "unsupported_grant_type"}),
            ConfigurationError,
            "unsupported_grant_type",
        ),
        (_error(400, {"error": "unauthorized_client"}), ConfigurationError, "unauthorized_client"),
        (_error(400, {"error": "something_new"}), InvalidTokenResponse, "something_new"),
        (_error(400, {"error": "<script>" * 20}), InvalidTokenResponse, "http_400"),
        (_error(400), InvalidTokenResponse, "http_400"),
        (_error(401, {"error": "invalid_client"}), ConfigurationError, "invalid_client"),
        (_error(401), ConfigurationError, "http_401"),
        (_error(403), ConfigurationError, "http_403"),
        (_error(404), ConfigurationError, "http_404"),
        (_error(405), InvalidTokenResponse, "http_405"),
        (_error(500), ResponseLost, "http_500"),
        (_error(502), ResponseLost, "http_502"),
        (_error(503), ResponseLost, "http_503"),
        (_error(504), ResponseLost, "http_504"),
        (
            {"status": 502, "body": "<html>proxy</html>", "content_type": "text/html"},
            ResponseLost,
            "http_502",
        ),
    ],
    ids=[
        "400-invalid_grant",
        "400-invalid_grant-described",
        "400-invalid_request",
        "400-invalid_scope",
        "400-unsupported_grant_type",
        "400-unauthorized_client",
        "400-unknown-error",
        "400-hostile-error",
        "400-no-body",
        "401-invalid_client",
        "401-no-body",
        "403",
        "404",
        "405",
        "500",
        "502",
        "503",
        "504",
        "502-html",
    ],
)
def test_error_statuses(
    slice_http: responses.RequestsMock, spec: dict[str, Any], exc_type: type, code: str
) -> None:
    slice_http.post(TOKEN_URL, **spec)
    with pytest.raises(SliceConnectError) as excinfo:
        exchange()
    assert type(excinfo.value) is exc_type
    assert excinfo.value.code == code
    assert len(token_calls(slice_http)) == 1  # a request that reached Slice is never repeated
    assert_no_secret_in(excinfo.value)


def test_429_retry_after_seconds(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, status=429, headers={"Retry-After": "120"})
    with pytest.raises(TransientError) as excinfo:
        exchange()
    assert type(excinfo.value) is TransientError
    assert excinfo.value.code == "http_429"
    assert excinfo.value.retry_after == 120.0
    assert len(token_calls(slice_http)) == 1


def test_429_retry_after_http_date(slice_http: responses.RequestsMock) -> None:
    with time_machine.travel("2030-01-01 00:00:00+00:00", tick=False):
        when = timezone.now() + timedelta(seconds=90)
        slice_http.post(
            TOKEN_URL,
            status=429,
            headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)},
        )
        with pytest.raises(TransientError) as excinfo:
            exchange()
    assert excinfo.value.retry_after == 90.0


def test_429_retry_after_date_in_the_past_is_zero(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, status=429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    with pytest.raises(TransientError) as excinfo:
        exchange()
    assert excinfo.value.retry_after == 0.0


@pytest.mark.parametrize("header", [None, "", "soon", "-5", "1.5"])
def test_429_retry_after_absent_or_unparsable(
    slice_http: responses.RequestsMock, header: str | None
) -> None:
    headers = {} if header is None else {"Retry-After": header}
    slice_http.post(TOKEN_URL, status=429, headers=headers)
    with pytest.raises(TransientError) as excinfo:
        exchange()
    assert excinfo.value.code == "http_429"
    assert excinfo.value.retry_after is None


def test_503_carries_retry_after(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, status=503, headers={"Retry-After": "7"})
    with pytest.raises(TransientError) as excinfo:
        exchange()
    assert excinfo.value.retry_after == 7.0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_never_followed(slice_http: responses.RequestsMock, status: int) -> None:
    elsewhere = "https://evil.example/steal"
    slice_http.post(TOKEN_URL, status=status, headers={"Location": elsewhere})
    slice_http.post(elsewhere, json=token_body())
    slice_http.get(elsewhere, json=token_body())
    with pytest.raises(SliceConnectError) as excinfo:
        exchange()
    assert type(excinfo.value) is InvalidTokenResponse
    assert excinfo.value.code == "redirect"
    assert [c.request.url for c in slice_http.calls] == [TOKEN_URL]


# -- what is sent ---------------------------------------------------------------------------


@pytest.fixture
def post_spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every request the transport sends (then send it)."""
    seen: list[dict[str, Any]] = []
    real = requests.Session.request

    def spy(self: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
        seen.append({"url": url, **kwargs})
        return real(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", spy)
    return seen


def test_request_shape(slice_http: responses.RequestsMock, post_spy: list[dict[str, Any]]) -> None:
    slice_http.post(TOKEN_URL, json=token_body())
    exchange()
    (call,) = token_calls(slice_http)
    sent = form(call)
    assert sent == {
        "grant_type": ["authorization_code"],
        "code": [CODE],
        "redirect_uri": [REDIRECT_URI],
        "code_verifier": [oauth.pkce_verifier(STATE)],
        "client_id": ["test-client-id"],
        "client_secret": [SECRET],
    }
    assert "Authorization" not in call.request.headers
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert call.request.headers["Accept"] == JSON
    assert call.request.method == "POST"
    (kwargs,) = post_spy
    assert kwargs["allow_redirects"] is False
    assert kwargs["timeout"] == (3.05, 10.0)
    assert kwargs.get("verify", True) is not False
    assert kwargs["stream"] is True  # read by slice_connect.http: deadline and cap
    assert call.request.req_kwargs["timeout"] == (3.05, 10.0)
    assert call.request.req_kwargs["verify"] not in (False, None)


def test_verifier_matches_the_challenge_sent_to_slice(slice_http: responses.RequestsMock) -> None:
    url = oauth.authorization_url(state=STATE, redirect_uri=REDIRECT_URI, use_pkce=True)
    challenge = parse_qs(url.split("?", 1)[1])["code_challenge"][0]
    slice_http.post(TOKEN_URL, json=token_body())
    exchange()
    verifier = form(token_calls(slice_http)[0])["code_verifier"][0]
    assert oauth.pkce_challenge(verifier) == challenge
    assert verifier not in url


def test_no_verifier_without_pkce(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, json=token_body())
    exchange(use_pkce=False)
    assert "code_verifier" not in form(token_calls(slice_http)[0])


def test_timeout_from_settings(
    slice_http: responses.RequestsMock, post_spy: list[dict[str, Any]]
) -> None:
    slice_http.post("https://other.test/token", json=token_body())
    config = {
        "CLIENT_ID": "cid",
        "CLIENT_SECRET": "csecret",
        "TOKEN_URL": "https://other.test/token",
        "HTTP_TIMEOUT": (1.5, 4),
    }
    with override_settings(SLICE_CONNECT=config):
        exchange()
    assert post_spy[0]["timeout"] == (1.5, 4.0)
    assert post_spy[0]["url"] == "https://other.test/token"
    sent = form(slice_http.calls[0])
    assert sent["client_id"] == ["cid"] and sent["client_secret"] == ["csecret"]


# -- retries --------------------------------------------------------------------------------


def refused() -> requests.ConnectionError:
    reason = NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, TOKEN_URL, reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failure",
    [lambda: requests.ConnectTimeout("connect timed out"), refused],
    ids=["connect-timeout", "connection-refused"],
)
def test_connect_failure_is_retried_exactly_once(
    slice_http: responses.RequestsMock, failure: Any
) -> None:
    slice_http.post(TOKEN_URL, body=failure())
    slice_http.post(TOKEN_URL, json=token_body())
    assert exchange().access_token == ACCESS
    assert len(token_calls(slice_http)) == 2


def test_two_connect_failures_give_up(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, body=requests.ConnectTimeout("connect timed out"))
    with pytest.raises(TransientError) as excinfo:
        exchange()
    assert type(excinfo.value) is TransientError
    assert excinfo.value.code == "connect_error"
    assert len(token_calls(slice_http)) == 2


@pytest.mark.parametrize(
    "failure",
    [
        lambda: requests.ReadTimeout("read timed out"),
        lambda: requests.ConnectionError("Connection reset by peer"),
        lambda: requests.exceptions.ChunkedEncodingError("cut mid-body"),
    ],
    ids=["read-timeout", "reset-after-send", "cut-mid-body"],
)
def test_failure_after_send_is_never_retried(
    slice_http: responses.RequestsMock, failure: Any
) -> None:
    slice_http.post(TOKEN_URL, body=failure())
    slice_http.post(TOKEN_URL, json=token_body())
    with pytest.raises(ResponseLost) as excinfo:
        exchange()
    assert excinfo.value.code in ("timeout", "connection_error")
    assert len(token_calls(slice_http)) == 1


def test_invalid_200_is_never_retried(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, json=token_body(refresh_token=_DROP))
    slice_http.post(TOKEN_URL, json=token_body())
    with pytest.raises(ResponseLost):
        exchange()
    assert len(token_calls(slice_http)) == 1


def test_5xx_after_a_connect_failure_is_not_retried_again(
    slice_http: responses.RequestsMock,
) -> None:
    slice_http.post(TOKEN_URL, body=requests.ConnectTimeout("connect timed out"))
    slice_http.post(TOKEN_URL, status=503)
    slice_http.post(TOKEN_URL, json=token_body())
    with pytest.raises(TransientError) as excinfo:
        exchange()
    assert excinfo.value.code == "http_503"
    assert len(token_calls(slice_http)) == 2


def test_tls_failure_is_logged_as_security_event(
    slice_http: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    slice_http.post(TOKEN_URL, body=certificate_error())
    with pytest.raises(TransientError):
        exchange()
    assert any(
        r.levelname == "ERROR" and "TLS verification" in r.getMessage() for r in caplog.records
    )


# -- refresh and revoke share the transport ---------------------------------------------------


def test_refresh_does_not_require_a_new_refresh_token(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, json=token_body(refresh_token=_DROP))
    tokens = oauth.refresh(REFRESH)
    assert tokens.refresh_token is None
    sent = form(slice_http.calls[0])
    assert sent["grant_type"] == ["refresh_token"] and sent["refresh_token"] == [REFRESH]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"status": 200}, True),
        ({"status": 400, "json": {"error": "unsupported_token_type"}}, False),
        ({"status": 503}, False),
        ({"body": requests.ReadTimeout("slow")}, False),
    ],
    ids=["200", "400", "503", "timeout"],
)
def test_revoke(
    slice_http: responses.RequestsMock,
    post_spy: list[dict[str, Any]],
    spec: dict[str, Any],
    expected: bool,
) -> None:
    slice_http.post("https://slice.test/oauth/revoke", **spec)
    assert oauth.revoke(REFRESH) is expected
    sent = form(slice_http.calls[0])
    assert sent == {
        "token": [REFRESH],
        "token_type_hint": ["refresh_token"],
        "client_id": ["test-client-id"],
        "client_secret": [SECRET],
    }
    assert "Authorization" not in slice_http.calls[0].request.headers
    assert post_spy[0]["allow_redirects"] is False
    assert post_spy[0]["timeout"] == (3.05, 10.0)


def test_revoke_without_url_sends_nothing(slice_http: responses.RequestsMock) -> None:
    with override_settings(
        SLICE_CONNECT={"CLIENT_ID": "a", "CLIENT_SECRET": "b", "REVOKE_URL": ""}
    ):
        assert oauth.revoke(REFRESH) is False
    assert len(slice_http.calls) == 0


# -- no secrets in text forms -----------------------------------------------------------------


def test_tokenset_repr_has_no_token(slice_http: responses.RequestsMock) -> None:
    slice_http.post(TOKEN_URL, json=token_body())
    tokens = exchange()
    for text in (repr(tokens), str(tokens), f"{tokens!r}"):
        assert ACCESS not in text and REFRESH not in text
    assert repr(tokens) == "<TokenSet token_type=bearer expires_in=3600 refresh_token=yes>"


def test_authorization_url_shape() -> None:
    url = oauth.authorization_url(state=STATE, redirect_uri=REDIRECT_URI, use_pkce=True)
    assert url.startswith("https://slice.test/oauth/authorize?")
    params = parse_qs(url.split("?", 1)[1])
    assert params == {
        "response_type": ["code"],
        "client_id": ["test-client-id"],
        "redirect_uri": [REDIRECT_URI],
        "state": [STATE],
        "code_challenge": [oauth.pkce_challenge(oauth.pkce_verifier(STATE))],
        "code_challenge_method": ["S256"],
    }
    assert SECRET not in url
    plain = oauth.authorization_url(state=STATE, redirect_uri=REDIRECT_URI, use_pkce=False)
    assert "code_challenge" not in plain


def test_fingerprint_is_short_and_not_the_secret() -> None:
    label = fingerprint(ACCESS)
    assert len(label) == 12 and label not in ACCESS and ACCESS not in label
    assert label == fingerprint(ACCESS) != fingerprint(REFRESH)
