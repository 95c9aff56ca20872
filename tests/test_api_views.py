"""The JSON endpoints for single-page apps: status, authorize and unlink.

Driven with Django's test client (Slice mocked with ``responses``, so every request to it
is recorded), then once end to end over real HTTP against the sandbox.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from slice_connect import api_views, oauth, services, signals, states
from slice_connect.models import SliceCredential
from tests.conftest import REVOKE_URL, TOKEN_URL

from .conftest import query_of
from .flow import consent
from .raw import raw_tokens, write_raw_tokens

pytestmark = pytest.mark.django_db

STATUS = "/slice/api/status/"
AUTHORIZE = "/slice/api/authorize/"
UNLINK = "/slice/api/unlink/"
CALLBACK = "/slice/callback/"
STATUS_FIELDS = {
    "linked",
    "status",
    "reason",
    "linked_at",
    "access_token_expires_at",
    "refresh_token_expires_at",
    "last_renewed_at",
}
TIME_FIELDS = (
    "linked_at",
    "access_token_expires_at",
    "refresh_token_expires_at",
    "last_renewed_at",
)
ENDPOINTS = [(STATUS, "get"), (AUTHORIZE, "post"), (UNLINK, "post")]


def canary(kind: str) -> str:
    return f"{kind}-CANARY-{secrets.token_hex(10)}"


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def slice_api(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    """Slice, mocked: a token endpoint with canary tokens and a revocation endpoint."""
    mock = slice_mock
    mock.post(
        TOKEN_URL,
        json={
            "access_token": canary("NEWACCESS"),
            "refresh_token": canary("NEWREFRESH"),
            "token_type": "bearer",
            "expires_in": 3600,
        },
    )
    mock.post(REVOKE_URL, status=200)
    return mock


def calls_to(mock: responses.RequestsMock, url: str) -> list[Any]:
    return [c for c in mock.calls if c.request.url.startswith(url)]


@pytest.fixture
def client(user: Any) -> Client:
    """Logged in, CSRF not enforced (Django's default for the test client)."""
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def strict(user: Any) -> Client:
    """Logged in, CSRF enforced as a browser meets it."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = []
    for name in ("credential_linked", "credential_unlinked"):

        def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            seen.append((_name, kwargs))

        getattr(signals, name).connect(receiver, weak=False)
        receivers.append((name, receiver))
    yield seen
    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver)


def body_of(response: Any) -> dict[str, Any]:
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    data = json.loads(response.content)
    assert isinstance(data, dict)
    return data


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    assert not response.has_header("Location")
    data = body_of(response)
    assert set(data) == {"error", "detail"}
    assert data["error"] == code
    assert isinstance(data["detail"], str) and data["detail"]
    return data


def csrf_of(client: Client) -> str:
    """What a single-page app does first: read the token the status endpoint hands out."""
    response = client.get(STATUS)
    assert response.status_code == 200
    token = response[api_views.CSRF_HEADER]
    assert token
    return token


def state_of(authorize_url: str) -> str:
    return query_of(authorize_url)["state"][0]


def pending(client: Client) -> list[dict[str, Any]]:
    return list(client.session.get(states.SESSION_KEY, []))


# -- the URLs -------------------------------------------------------------------------------


def test_routes_are_in_the_namespace() -> None:
    assert reverse("slice_connect:api-status") == STATUS
    assert reverse("slice_connect:api-authorize") == AUTHORIZE
    assert reverse("slice_connect:api-unlink") == UNLINK


# -- status ---------------------------------------------------------------------------------


def test_status_when_not_linked(client: Client) -> None:
    response = client.get(STATUS)
    assert response.status_code == 200
    assert body_of(response) == {
        "linked": False,
        "status": None,
        "reason": None,
        "linked_at": None,
        "access_token_expires_at": None,
        "refresh_token_expires_at": None,
        "last_renewed_at": None,
    }


def test_status_of_an_active_link(
    client: Client, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    linked = datetime(2026, 11, 20, 8, 30, 15, 123456, tzinfo=dt_timezone.utc)
    renewed = datetime(2026, 11, 27, 9, 0, tzinfo=dt_timezone.utc)
    access = datetime(2026, 12, 2, 10, 0, tzinfo=dt_timezone.utc)
    refresh = datetime(2026, 12, 11, 9, 0, 0, 5, tzinfo=dt_timezone.utc)
    make_credential(
        user,
        linked_at=linked,
        last_renewed_at=renewed,
        access_token_expires_at=access,
        refresh_token_expires_at=refresh,
    )
    data = body_of(client.get(STATUS))
    assert data == {
        "linked": True,
        "status": "active",
        "reason": None,
        "linked_at": "2026-11-20T08:30:15.123456+00:00",
        "access_token_expires_at": "2026-12-02T10:00:00+00:00",
        "refresh_token_expires_at": "2026-12-11T09:00:00.000005+00:00",
        "last_renewed_at": "2026-11-27T09:00:00+00:00",
    }
    # What a front end does with them: each parses back to the stored instant.
    parsed = {name: datetime.fromisoformat(data[name]) for name in TIME_FIELDS}
    assert parsed == {
        "linked_at": linked,
        "access_token_expires_at": access,
        "refresh_token_expires_at": refresh,
        "last_renewed_at": renewed,
    }
    assert all(value.utcoffset() == timedelta(0) for value in parsed.values())


def test_status_never_renewed_has_null_last_renewed_at(
    client: Client, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    make_credential(user)
    data = body_of(client.get(STATUS))
    assert set(data) == STATUS_FIELDS
    assert data["linked"] is True and data["last_renewed_at"] is None
    for name in ("linked_at", "access_token_expires_at", "refresh_token_expires_at"):
        assert isinstance(data[name], str)
        assert datetime.fromisoformat(data[name]).tzinfo is not None


@pytest.mark.parametrize(
    "reason", [r.value for r in SliceCredential.Reason if r != SliceCredential.Reason.NONE]
)
def test_status_of_a_link_that_needs_reauth(
    client: Client, user: Any, make_credential: Callable[..., SliceCredential], reason: str
) -> None:
    make_credential(user, status=SliceCredential.Status.NEEDS_REAUTH, status_reason=reason)
    data = body_of(client.get(STATUS))
    assert (data["linked"], data["status"], data["reason"]) == (True, "needs_reauth", reason)


def test_status_shows_only_the_users_own_link(
    client: Client,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
) -> None:
    make_credential(make_user("bob"))
    assert body_of(client.get(STATUS))["linked"] is False


def test_status_never_reads_the_token_columns(
    client: Client, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    credential = make_credential(user)
    with CaptureQueriesContext(connection) as queries:
        data = body_of(client.get(STATUS))
    assert data["linked"] is True
    selects = [q["sql"] for q in queries if SliceCredential._meta.db_table in q["sql"]]
    assert len(selects) == 1
    assert "access_token_expires_at" in selects[0]
    for column in ("access_token", "refresh_token"):
        assert f'"{column}"' not in selects[0] and f"`{column}`" not in selects[0]
    # Proof by consequence: tokens that cannot be decrypted do not disturb the status.
    write_raw_tokens(credential.pk, b"not-fernet", b"not-fernet")
    assert body_of(client.get(STATUS))["status"] == "active"


def test_status_hands_out_the_csrf_token(client: Client) -> None:
    response = client.get(STATUS)
    token = response[api_views.CSRF_HEADER]
    assert len(token) == 64  # Django's masked form
    assert response.cookies["csrftoken"].value  # set on the first visit


# -- errors as JSON -------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "method"), ENDPOINTS)
def test_anonymous_gets_401_json_not_a_login_redirect(
    url: str, method: str, slice_api: responses.RequestsMock
) -> None:
    anonymous = Client(enforce_csrf_checks=True)
    response = getattr(anonymous, method)(url)
    assert assert_error(response, 401, "not_authenticated") == {
        "error": "not_authenticated",
        "detail": "Log in first.",
    }
    assert not response.cookies.get("sessionid")
    assert list(slice_api.calls) == []


@pytest.mark.parametrize(
    ("url", "wrong", "allow"),
    [
        (STATUS, "post", "GET"),
        (STATUS, "put", "GET"),
        (STATUS, "delete", "GET"),
        (AUTHORIZE, "get", "POST"),
        (AUTHORIZE, "put", "POST"),
        (UNLINK, "get", "POST"),
        (UNLINK, "delete", "POST"),
    ],
)
def test_wrong_method_is_405_json(
    client: Client,
    url: str,
    wrong: str,
    allow: str,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
) -> None:
    make_credential(user)
    response = getattr(client, wrong)(url)
    assert_error(response, 405, "method_not_allowed")
    assert response["Allow"] == allow
    assert SliceCredential.objects.filter(user=user).exists()
    assert pending(client) == []
    assert list(slice_api.calls) == []


def test_wrong_method_is_405_even_when_anonymous() -> None:
    assert_error(Client().get(UNLINK), 405, "method_not_allowed")


@pytest.mark.parametrize("url", [AUTHORIZE, UNLINK])
def test_post_without_csrf_token_is_403_json(
    strict: Client,
    url: str,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user)
    csrf_of(strict)  # the cookie is there, the header is not
    with django_capture_on_commit_callbacks(execute=True):
        assert_error(strict.post(url), 403, "csrf_failed")
        assert_error(
            strict.post(url, {"next": "/x/"}, HTTP_X_CSRFTOKEN="wrong" * 8), 403, "csrf_failed"
        )
    assert SliceCredential.objects.filter(pk=credential.pk).exists()
    assert pending(strict) == []
    assert list(slice_api.calls) == []


@pytest.mark.parametrize("url", [AUTHORIZE, UNLINK])
def test_csrf_is_checked_without_the_middleware(
    strict: Client,
    url: str,
    settings: Any,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
) -> None:
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "CsrfViewMiddleware" not in m]
    make_credential(user)
    assert_error(strict.post(url), 403, "csrf_failed")
    assert SliceCredential.objects.filter(user=user).exists()
    assert pending(strict) == []
    token = csrf_of(strict)
    assert strict.post(url, HTTP_X_CSRFTOKEN=token).status_code == 200


def test_csrf_header_from_status_is_accepted(
    strict: Client, slice_api: responses.RequestsMock
) -> None:
    token = csrf_of(strict)
    response = strict.post(
        AUTHORIZE, {"next": "/after/"}, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 200
    assert body_of(response)["authorize_url"].startswith("https://slice.test/oauth/authorize?")


def test_another_origin_needs_csrf_trusted_origins(
    strict: Client, settings: Any, slice_api: responses.RequestsMock
) -> None:
    token = csrf_of(strict)
    post = lambda: strict.post(  # noqa: E731
        AUTHORIZE, HTTP_X_CSRFTOKEN=token, HTTP_ORIGIN="https://app.example.com"
    )
    assert_error(post(), 403, "csrf_failed")
    assert pending(strict) == []
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com"]
    assert post().status_code == 200


def test_unexpected_error_is_500_json_without_internals(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_credential(user)
    secret = canary("INTERNAL")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"database exploded: {secret}")

    monkeypatch.setattr(services, "unlink", broken)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    response = client.post(UNLINK)
    data = assert_error(response, 500, "server_error")
    assert secret not in response.content.decode()
    assert "RuntimeError" not in json.dumps(data)
    # Reported where Django reports its own 500s (with the traceback), not swallowed.
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.levelname == "ERROR" and record.exc_info is not None


def test_unexpected_error_rolls_back_under_atomic_requests(
    user: Any, make_credential: Callable[..., SliceCredential], monkeypatch: pytest.MonkeyPatch
) -> None:
    credential = make_credential(user)
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    real_unlink = services.unlink

    def fails_after_deleting(credential: SliceCredential, request: Any = None) -> None:
        real_unlink(credential, request=request)
        raise RuntimeError("after the delete")

    monkeypatch.setattr(services, "unlink", fails_after_deleting)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    assert_error(client.post(UNLINK), 500, "server_error")
    # As if the error had reached Django: the request's transaction is rolled back.
    assert SliceCredential.objects.filter(pk=credential.pk).exists()


# -- authorize ------------------------------------------------------------------------------


def test_authorize_starts_the_same_attempt_as_the_html_view(
    client: Client, slice_api: responses.RequestsMock
) -> None:
    response = client.post(AUTHORIZE, {"next": "/after/"}, content_type="application/json")
    assert response.status_code == 200
    data = body_of(response)
    assert set(data) == {"authorize_url"}
    url = data["authorize_url"]
    assert url.startswith("https://slice.test/oauth/authorize?")
    state = state_of(url)
    assert query_of(url) == {
        "response_type": ["code"],
        "client_id": ["test-client-id"],
        "redirect_uri": ["http://testserver/slice/callback/"],
        "state": [state],
        "code_challenge": [oauth.pkce_challenge(oauth.pkce_verifier(state))],
        "code_challenge_method": ["S256"],
    }
    (entry,) = pending(client)
    assert entry["state_hash"] == sha256(state)
    assert entry["next_url"] == "/after/"
    assert state not in json.dumps(dict(client.session.items()))  # only its hash is kept

    # The HTML view stores an attempt of exactly the same shape.
    html = client.post("/slice/authorize/", {"next": "/after/"})
    html_entry = pending(client)[-1]
    assert html_entry["state_hash"] == sha256(state_of(html["Location"]))
    assert {k: v for k, v in html_entry.items() if k not in ("state_hash", "created")} == {
        k: v for k, v in entry.items() if k not in ("state_hash", "created")
    }
    assert list(slice_api.calls) == []  # nothing is sent to Slice before the callback


def test_authorize_reads_next_from_a_form(client: Client) -> None:
    response = client.post(AUTHORIZE, {"next": "/from/form/?tab=1"})
    assert response.status_code == 200
    assert pending(client)[0]["next_url"] == "/from/form/?tab=1"


@pytest.mark.parametrize(
    "body",
    [None, {}, {"next": None}, {"next": ""}, {"other": "ignored"}],
    ids=["no-body", "empty-object", "null", "empty-string", "other-keys"],
)
def test_authorize_without_next(client: Client, body: Any) -> None:
    if body is None:
        response = client.post(AUTHORIZE)
    else:
        response = client.post(AUTHORIZE, body, content_type="application/json")
    assert response.status_code == 200
    assert pending(client)[0]["next_url"] is None


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "http://testserver/after/",  # absolute, even to this host: the HTML rule drops it too
        "after/",
        "/tab\tnewline\n",
        "/" + "a" * 3000,
    ],
)
def test_authorize_refuses_an_unsafe_next(client: Client, target: str) -> None:
    response = client.post(AUTHORIZE, {"next": target}, content_type="application/json")
    data = assert_error(response, 400, "invalid_next")
    assert target not in data["detail"]
    assert pending(client) == []


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe", "application/json"),
        (b"[1, 2]", "application/json"),
        (b'"just a string"', "application/json"),
        (b'{"next": 5}', "application/json"),
        (b'{"next": ["/a/"]}', "application/json"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),
        (b'{"next": "/a/", "pad": "' + b"x" * 9000 + b'"}', "application/json"),
        (b"next=/a/&next=/b/", "application/x-www-form-urlencoded"),
    ],
    ids=[
        "malformed",
        "not-utf8",
        "array",
        "string",
        "number-next",
        "list-next",
        "deep-nesting",
        "too-large",
        "repeated-form-next",
    ],
)
def test_authorize_refuses_bad_input_clearly(client: Client, raw: bytes, content_type: str) -> None:
    response = client.generic("POST", AUTHORIZE, raw, content_type=content_type)
    assert_error(response, 400, "invalid_request")
    assert pending(client) == []


def test_authorize_state_completes_at_the_callback_and_lands_on_next(
    client: Client,
    user: Any,
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    url = body_of(
        client.post(AUTHORIZE, {"next": "/spa/#linked"}, content_type="application/json")
    )["authorize_url"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.get(CALLBACK, {"code": "the-code", "state": state_of(url)})
    assert response.status_code == 302
    assert response["Location"] == "/spa/#linked"
    (token_call,) = calls_to(slice_api, TOKEN_URL)
    sent = parse_qs(token_call.request.body)
    assert sent["code"] == ["the-code"]
    assert sent["code_verifier"] == [oauth.pkce_verifier(state_of(url))]
    assert SliceCredential.objects.get(user=user).is_active
    assert [name for name, _ in events] == ["credential_linked"]
    # Single use: the same state is refused the second time.
    again = client.get(CALLBACK, {"code": "the-code", "state": state_of(url)})
    assert 400 <= again.status_code < 500
    assert len(calls_to(slice_api, TOKEN_URL)) == 1


def test_authorize_without_next_lands_on_link_success_url(
    client: Client, slice_settings: Callable[..., None], slice_api: responses.RequestsMock
) -> None:
    slice_settings(LINK_SUCCESS_URL="/linked/")
    url = body_of(client.post(AUTHORIZE))["authorize_url"]
    response = client.get(CALLBACK, {"code": "c", "state": state_of(url)})
    assert response["Location"] == "/linked/"


# -- unlink ---------------------------------------------------------------------------------


def test_unlink_revokes_and_signals_with_the_request(
    client: Client,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user, refresh_token=canary("OLDREFRESH"))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(UNLINK)
    assert response.status_code == 200
    assert body_of(response) == {"linked": False}
    assert not SliceCredential.objects.filter(pk=credential.pk).exists()
    assert events == [] and calls_to(slice_api, REVOKE_URL) == []  # both wait for the commit
    for callback in callbacks:
        callback()
    (call,) = calls_to(slice_api, REVOKE_URL)
    sent = parse_qs(call.request.body)
    assert sent["token"] == [credential.refresh_token]
    assert sent["token_type_hint"] == ["refresh_token"]
    assert [name for name, _ in events] == ["credential_unlinked"]
    kwargs = events[0][1]
    assert kwargs["user"] == user
    assert kwargs["request"].path == UNLINK
    assert body_of(client.get(STATUS))["linked"] is False


def test_unlink_when_nothing_is_linked(
    client: Client,
    slice_api: responses.RequestsMock,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(UNLINK)
    assert response.status_code == 200
    assert body_of(response) == {"linked": False}
    assert list(slice_api.calls) == [] and events == []


def test_unlink_of_a_link_that_needs_reauth(
    client: Client,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_credential(user, status=SliceCredential.Status.NEEDS_REAUTH, status_reason="invalid_grant")
    with django_capture_on_commit_callbacks(execute=True):
        assert body_of(client.post(UNLINK)) == {"linked": False}
    assert not SliceCredential.objects.filter(user=user).exists()


def test_unlink_leaves_other_users_alone(
    client: Client,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    other = make_credential(make_user("bob"))
    with django_capture_on_commit_callbacks(execute=True):
        assert body_of(client.post(UNLINK)) == {"linked": False}
    assert SliceCredential.objects.filter(pk=other.pk).exists()
    assert calls_to(slice_api, REVOKE_URL) == []


# -- no secret in any body ------------------------------------------------------------------


def test_no_token_or_ciphertext_in_any_body(
    strict: Client,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    access, refresh = canary("ACCESS"), canary("REFRESH")
    credential = make_credential(user, access_token=access, refresh_token=refresh)
    stored = raw_tokens(credential.pk)
    secrets_ = [
        access,
        refresh,
        *(c.decode() for c in stored),
        *(c.decode()[:24] for c in stored),
        settings.SLICE_CONNECT["CLIENT_SECRET"],
        settings.FERNET_KEYS[0],
    ]
    responses_: list[Any] = []
    token = csrf_of(strict)
    with django_capture_on_commit_callbacks(execute=True):
        responses_ += [
            strict.get(STATUS),
            strict.post(AUTHORIZE, HTTP_X_CSRFTOKEN=token),
            strict.post(
                AUTHORIZE,
                {"next": "//evil"},
                content_type="application/json",
                HTTP_X_CSRFTOKEN=token,
            ),
            strict.post(AUTHORIZE, b"{", content_type="application/json", HTTP_X_CSRFTOKEN=token),
            strict.post(UNLINK),  # refused: no CSRF header
            strict.get(UNLINK),
            Client().get(STATUS),
            strict.post(UNLINK, HTTP_X_CSRFTOKEN=token),
            strict.get(STATUS),
        ]
    assert [r.status_code for r in responses_] == [200, 200, 400, 400, 403, 405, 401, 200, 200]
    assert len(calls_to(slice_api, REVOKE_URL)) == 1
    for response in responses_:
        text = response.serialize().decode("utf-8", "replace")  # headers and body
        for value in secrets_:
            assert value not in text, (response.status_code, value[:12])


# -- end to end over real HTTP against the sandbox ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_api_flow_against_the_sandbox(
    slice_server: Any,
    user: Any,
    browser_session: Callable[[Any], requests.Session],
    events: list[tuple[str, dict[str, Any]]],
) -> None:
    """What a single-page app does, with a real cookie jar: status, link, status, unlink."""
    from oauth2_provider.models import RefreshToken

    base = slice_server.url
    session = browser_session(user)
    api = {name: f"{base}/slice/api/{name}/" for name in ("status", "authorize", "unlink")}

    first = session.get(api["status"], timeout=10)
    assert first.status_code == 200 and first.json()["linked"] is False
    headers = {api_views.CSRF_HEADER: first.headers[api_views.CSRF_HEADER]}
    refused = session.post(api["authorize"], json={"next": "/after/"}, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"] == "csrf_failed"

    started = session.post(api["authorize"], json={"next": "/after/"}, headers=headers, timeout=10)
    assert started.status_code == 200
    authorize_url = started.json()["authorize_url"]
    assert authorize_url.startswith(f"{base}/oauth/authorize?")
    callback_url = consent(session, authorize_url, allow=True)
    landed = session.get(callback_url, allow_redirects=False, timeout=30)
    assert landed.status_code == 302
    assert landed.headers["Location"] == "/after/"
    assert slice_server.token_requests("authorization_code") == 1

    status = session.get(api["status"], timeout=10).json()
    assert status["linked"] is True and status["status"] == "active"
    stored = SliceCredential.objects.get(user=user)
    assert datetime.fromisoformat(status["linked_at"]) == stored.linked_at
    assert datetime.fromisoformat(status["refresh_token_expires_at"]) == (
        stored.refresh_token_expires_at
    )
    assert RefreshToken.objects.filter(revoked__isnull=True).count() == 1

    gone = session.post(api["unlink"], headers=headers, timeout=30)
    assert gone.status_code == 200 and gone.json() == {"linked": False}
    assert not SliceCredential.objects.filter(user=user).exists()
    # Revoked at the sandbox (after the commit) and announced with the request.
    assert RefreshToken.objects.filter(revoked__isnull=True).count() == 0
    assert [name for name, _ in events] == ["credential_linked", "credential_unlinked"]
    assert events[1][1]["request"].path == "/slice/api/unlink/"
    assert session.get(api["status"], timeout=10).json()["linked"] is False
    for response in (first, started, landed, gone):
        for value in (stored.access_token, stored.refresh_token, slice_server.client_secret):
            assert value not in response.text


# -- the example project's single-page page (its browser test: test_browser_spa) -------------


@pytest.mark.urls("tests.urls_example")
def test_example_spa_page_is_static_and_needs_login(
    client: Client, user: Any, make_credential: Callable[..., SliceCredential], settings: Any
) -> None:
    from pathlib import Path

    templates = Path(__file__).resolve().parent.parent / "example_project" / "templates"
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [templates]}]
    anonymous = Client().get("/spa/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/")
    assert 'href="/spa/"' in client.get("/").content.decode()  # the home page links to it
    make_credential(user)
    page = client.get("/spa/").content.decode()
    # The endpoints come from the URL names; the link itself is not rendered by the server.
    assert f'data-status-url="{STATUS}"' in page
    assert f'data-authorize-url="{AUTHORIZE}"' in page
    assert f'data-unlink-url="{UNLINK}"' in page
    assert "fetch(" in page and "<form" not in page.split('id="spa"')[1]
    assert 'id="spa-status">Loading' in page
