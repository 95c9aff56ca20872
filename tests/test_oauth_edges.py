"""Edges of slice_connect.oauth that mutation testing found unchecked (docs/development.rst).

What an odd token answer is noted as (the ``odd`` names, logged for operators), the exact
limits (lengths and lifetimes accepted at the boundary), the error each refusal becomes
with its message, the log lines of a failed revocation, and the PKCE verifier derivation
staying the same across releases.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timezone
from typing import Any

import pytest
import requests
import responses

from slice_connect import oauth
from slice_connect.exceptions import (
    ConfigurationError,
    InvalidTokenResponse,
    ResponseLost,
    SliceConnectError,
    TokenRequestFailed,
    TransientError,
)
from tests.conftest import REVOKE_URL, TOKEN_URL

ACCESS = "ACCESS-CANARY-abcdefghijklmnop"
REFRESH = "REFRESH-CANARY-qrstuvwxyz012345"
WHEN = datetime(2030, 1, 1, tzinfo=timezone.utc)
MAX_EXPIRES_IN = 366 * 24 * 3600  # SLICE_CONNECT["MAX_EXPIRES_IN"]'s default
JSON = "application/json"


def parse(
    body: dict[str, Any] | bytes, content_type: str = JSON, *, required: bool = True
) -> oauth.TokenSet:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return oauth.parse_token_response(
        raw, content_type=content_type, require_refresh_token=required, received_at=WHEN
    )


def answer(**fields: Any) -> dict[str, Any]:
    body = {"access_token": ACCESS, "refresh_token": REFRESH, "token_type": "Bearer"}
    body.update(expires_in=3600)
    for key, value in fields.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


# -- what is odd, by name -----------------------------------------------------------------

ODD: dict[str, tuple[dict[str, Any], str, int, tuple[str, ...]]] = {
    "plain": (answer(), JSON, 3600, ()),
    "no-expiry-no-type": (
        answer(expires_in=None, token_type=None),
        JSON,
        oauth.DEFAULT_EXPIRES_IN,
        ("token_type missing", "expires_in missing"),
    ),
    "expiry-string": (answer(expires_in="60"), JSON, 60, ("expires_in is a string",)),
    "expiry-1.0": (answer(expires_in=1.0), JSON, 1, ()),
    "expiry-1.5": (answer(expires_in=1.5), JSON, 1, ("expires_in is fractional",)),
    "expiry-0.5": (
        answer(expires_in=0.5),
        JSON,
        oauth.ODD_EXPIRES_IN,
        ("expires_in out of range",),
    ),
    "expiry-max": (answer(expires_in=MAX_EXPIRES_IN), JSON, MAX_EXPIRES_IN, ()),
    "expiry-over-max": (
        answer(expires_in=MAX_EXPIRES_IN + 1),
        JSON,
        oauth.ODD_EXPIRES_IN,
        ("expires_in out of range",),
    ),
    "text-plain": (answer(), "text/plain", 3600, ("content type is not JSON",)),
    "problem-json": (answer(), "application/problem+json", 3600, ()),
    "token-type-mac": (answer(token_type="mac"), JSON, 0, ("token_type not Bearer",)),
    "no-access-token": (answer(access_token=None), JSON, 0, ("no usable access_token",)),
    "refresh-lifetime-bogus": (
        answer(refresh_token_expires_in="bogus"),
        JSON,
        3600,
        ("refresh_token_expires_in out of range",),
    ),
    "refresh-lifetime-fine": (answer(refresh_token_expires_in=600), JSON, 3600, ()),
}


@pytest.mark.parametrize(
    ("body", "content_type", "expires_in", "odd"), ODD.values(), ids=ODD.keys()
)
def test_what_is_odd_about_an_answer_is_named(
    body: dict[str, Any], content_type: str, expires_in: int, odd: tuple[str, ...]
) -> None:
    tokens = parse(body, content_type)
    assert tokens.refresh_token == REFRESH
    assert tokens.expires_in == expires_in
    assert tokens.odd == odd


def test_a_byte_order_mark_is_named_too() -> None:
    tokens = parse(b"\xef\xbb\xbf" + json.dumps(answer()).encode())
    assert tokens.odd == ("byte order mark",)


# -- limits, at their boundaries ----------------------------------------------------------


@pytest.mark.parametrize("length", [1, oauth.MAX_TOKEN_LENGTH])
def test_tokens_of_the_shortest_and_longest_length_are_kept(length: int) -> None:
    tokens = parse(answer(access_token="a" * length, refresh_token="r" * length))
    assert tokens.access_token == "a" * length
    assert tokens.refresh_token == "r" * length
    assert tokens.odd == ()


@pytest.mark.parametrize(
    ("stated", "expected"),
    [(1, 1), ("1", 1), (MAX_EXPIRES_IN, MAX_EXPIRES_IN), (0, None), (MAX_EXPIRES_IN + 1, None)],
)
def test_refresh_token_lifetime_limits(stated: Any, expected: int | None) -> None:
    tokens = parse(answer(refresh_token_expires_in=stated))
    assert tokens.refresh_expires_in == expected
    assert ("refresh_token_expires_in out of range" in tokens.odd) is (expected is None)


def test_an_answer_without_tokens_is_refused_by_name() -> None:
    with pytest.raises(InvalidTokenResponse) as excinfo:
        parse(answer(access_token=None, refresh_token=None), required=False)
    assert excinfo.value.code == "no_token"
    assert str(excinfo.value) == "Token response has no usable access_token."


def test_a_non_bearer_answer_without_refresh_token_is_refused_by_name() -> None:
    with pytest.raises(InvalidTokenResponse) as excinfo:
        parse(answer(token_type="mac", refresh_token=None), required=False)
    assert excinfo.value.code == "bad_token_type"
    assert str(excinfo.value) == "Token response has token_type not Bearer."


@pytest.mark.parametrize(
    ("body", "required", "code", "message"),
    [
        (b"<html></html>", True, "not_json", "Token response is not a JSON object."),
        (answer(refresh_token=12), True, "bad_refresh_token", "refresh_token is not a token."),
        (
            answer(refresh_token=None),
            True,
            "no_refresh_token",
            "Token response has no refresh_token.",
        ),
    ],
    ids=["not-json", "bad-refresh-token", "no-refresh-token"],
)
def test_unusable_answers_say_why(
    body: dict[str, Any] | bytes, required: bool, code: str, message: str
) -> None:
    with pytest.raises(InvalidTokenResponse) as excinfo:
        parse(body, "text/html" if isinstance(body, bytes) else JSON, required=required)
    assert (excinfo.value.code, str(excinfo.value)) == (code, message)


# -- refusals: type, code and message ---------------------------------------------------------

REFUSALS: dict[str, tuple[dict[str, Any], type[SliceConnectError], str, str]] = {
    "300": ({"status": 300}, InvalidTokenResponse, "redirect",
            "Slice's token endpoint redirected (HTTP 300); not followed."),
    "399": ({"status": 399}, InvalidTokenResponse, "redirect",
            "Slice's token endpoint redirected (HTTP 399); not followed."),
    "429": ({"status": 429}, TransientError, "http_429",
            "Slice's token endpoint answered HTTP 429."),
    "503": ({"status": 503}, ResponseLost, "http_503", "Slice's token endpoint answered HTTP 503."),
    "invalid_grant": ({"status": 400, "json": {"error": "invalid_grant"}}, TokenRequestFailed,
                      "invalid_grant", "Slice refused the grant (invalid_grant)."),
    "invalid_client": ({"status": 401, "json": {"error": "invalid_client"}}, ConfigurationError,
                       "invalid_client", "Slice rejected the client (invalid_client)."),
    "unknown-error": ({"status": 400, "json": {"error": "e" * 64}}, InvalidTokenResponse,
                      "e" * 64, f"Slice answered HTTP 400 ({'e' * 64})."),
    "error-too-long": ({"status": 400, "json": {"error": "e" * 65}}, InvalidTokenResponse,
                       "http_400", "Slice answered HTTP 400."),
    "403": ({"status": 403}, ConfigurationError, "http_403",
            "Slice's token endpoint answered HTTP 403."),
}  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "exc_type", "code", "message"), REFUSALS.values(), ids=REFUSALS.keys()
)
def test_refusals_keep_their_kind_code_and_message(
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    spec: dict[str, Any],
    exc_type: type[SliceConnectError],
    code: str,
    message: str,
) -> None:
    slice_mock.post(TOKEN_URL, **spec)
    with pytest.raises(SliceConnectError) as excinfo:
        oauth.refresh(REFRESH)
    assert type(excinfo.value) is exc_type
    assert (excinfo.value.code, str(excinfo.value)) == (code, message)
    status = spec["status"]
    assert f"Token request (refresh_token) refused: HTTP {status}, {code}" in caplog.messages


def test_an_unusable_200_is_logged_with_the_grant_type(
    slice_mock: responses.RequestsMock, caplog: pytest.LogCaptureFixture
) -> None:
    slice_mock.post(TOKEN_URL, json={"token_type": "bearer"})
    with pytest.raises(ResponseLost):
        oauth.refresh(REFRESH)
    assert "Token request (refresh_token) got an unusable 200 answer: no_token" in caplog.messages


def test_a_refresh_answer_may_omit_the_refresh_token(slice_mock: responses.RequestsMock) -> None:
    slice_mock.post(TOKEN_URL, json=answer(refresh_token=None))
    tokens = oauth.refresh(REFRESH)
    assert (tokens.access_token, tokens.refresh_token) == (ACCESS, None)
    assert repr(tokens) == "<TokenSet token_type=bearer expires_in=3600 refresh_token=no>"


# -- revocation's log lines ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "logged"),
    [
        ({"status": 503}, "Revoking a Slice token failed: HTTP 503"),
        (
            {"body": requests.ConnectionError("refused")},
            "Revoking a Slice token failed: connection_error",
        ),
    ],
    ids=["503", "no-answer"],
)
def test_a_failed_revocation_is_logged_without_the_token(
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    spec: dict[str, Any],
    logged: str,
) -> None:
    slice_mock.post(REVOKE_URL, **spec)
    assert oauth.revoke(REFRESH) is False
    assert logged in caplog.messages
    assert all(m.startswith(("Revoking", "Token revocation")) for m in caplog.messages)
    assert REFRESH not in caplog.text


# -- PKCE -------------------------------------------------------------------------------------


def test_the_pkce_verifier_derivation_is_stable_across_releases() -> None:
    # An attempt started before an upgrade is finished after it: the callback recomputes
    # the verifier, so the derivation (salt, key, encoding) must never change.
    state = "state-of-a-pending-attempt"
    assert oauth.pkce_verifier(state) == "FdSllsLFujWH52LEXsPtUFgc_2-iDojGY2-8nlASm8M"
    key = hashlib.sha256(b"slice_connect.pkce" + b"slice-connect-tests-not-secret").digest()
    digest = hmac.new(key, state.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == oauth.pkce_verifier(state)
