"""services.renew(): when it calls Slice, what it stores, and the B3/B4/B11 fault batteries.

Rule and battery numbers are those of docs/threat-model.rst.

Slice is mocked with ``responses`` at https://slice.test/oauth/token (tests/settings.py).
Every failure case checks that the stored ciphertext and version are untouched, that the
right signal fires after commit, and that no secret reaches an exception or a log record.
"""

from __future__ import annotations

import email.utils
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
import time_machine
from django.db import connection
from django.db.models import F
from django.utils.timezone import now as tz_now
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from slice_connect import oauth, services, signals
from slice_connect.conf import app_settings
from slice_connect.exceptions import (
    ConfigurationError,
    CredentialUnreadable,
    InvalidTokenResponse,
    NeedsReauth,
    NotLinked,
    ResponseLost,
    SliceConnectError,
    TransientError,
)
from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL

from .conftest import certificate_error

pytestmark = pytest.mark.django_db


CLIENT_ID = "test-client-id"
CLIENT_SECRET = "test-client-secret"
T0 = datetime(2031, 3, 14, 9, 26, 53, tzinfo=timezone.utc)
NEW_ACCESS = "new-access-9f1c2e7a44d0b3"
NEW_REFRESH = "new-refresh-51aa0c6de8f27b"

Active = SliceCredential.Status.ACTIVE
NeedsReauthStatus = SliceCredential.Status.NEEDS_REAUTH
Reason = SliceCredential.Reason
CaptureOnCommit = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


# -- helpers -----------------------------------------------------------------------------


@dataclass
class Events:
    renewed: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def events() -> Iterator[Events]:
    captured = Events()

    def on_renewed(sender: Any, **kwargs: Any) -> None:
        assert sender is SliceCredential
        captured.renewed.append(kwargs)

    def on_failed(sender: Any, **kwargs: Any) -> None:
        assert sender is SliceCredential
        captured.failed.append(kwargs)

    signals.credential_renewed.connect(on_renewed, weak=False)
    signals.credential_renewal_failed.connect(on_failed, weak=False)
    yield captured
    signals.credential_renewed.disconnect(on_renewed)
    signals.credential_renewal_failed.disconnect(on_failed)


@pytest.fixture(autouse=True)
def no_request_loops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn a retry loop into a failure instead of a hang (no test needs 500 token requests)."""
    real = oauth.post_token_request
    sent = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal sent
        sent += 1
        if sent > 500:
            raise AssertionError("token request loop")
        return real(*args, **kwargs)

    monkeypatch.setattr(oauth, "post_token_request", counted)


@pytest.fixture
def frozen() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def canary_credential(
    user: Any, make_credential: Callable[..., SliceCredential], frozen: Any
) -> SliceCredential:
    """A credential whose access token is about to expire (so renew() calls Slice)."""
    return make_credential(
        user,
        access_token=f"canary-access-{secrets.token_hex(8)}",
        refresh_token=f"canary-refresh-{secrets.token_hex(8)}",
        access_token_expires_at=T0 + timedelta(seconds=30),
        refresh_token_expires_at=T0 + timedelta(days=10),
    )


def raw_row(pk: int) -> tuple[bytes, bytes, int]:
    """The stored ciphertext of both tokens and the version, read with raw SQL."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT access_token, refresh_token, version FROM slice_connect_slicecredential "
            "WHERE id = %s",
            [pk],
        )
        access, refresh, version = cursor.fetchone()
    return bytes(access), bytes(refresh), int(version)


def token_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": NEW_ACCESS,
        "refresh_token": NEW_REFRESH,
        "token_type": "Bearer",
        "expires_in": 3600,
    }
    for key, value in overrides.items():
        if value is _DROP:
            body.pop(key)
        else:
            body[key] = value
    return body


_DROP = object()


def add_json(
    mock: responses.RequestsMock,
    payload: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    mock.add(
        responses.POST,
        TOKEN_URL,
        body=json.dumps(payload),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def sent_refresh_tokens(mock: responses.RequestsMock) -> list[str]:
    tokens = []
    for call in mock.calls:
        if call.request.url == TOKEN_URL:
            body = call.request.body
            text = body.decode() if isinstance(body, bytes) else str(body)
            tokens.append(parse_qs(text)["refresh_token"][0])
    return tokens


def leaked(secret_values: list[str], texts: list[str]) -> list[str]:
    return [s for s in secret_values if any(s in text for text in texts)]


def assert_no_secrets(
    credential_tokens: tuple[str, str],
    exc: BaseException,
    caplog: pytest.LogCaptureFixture,
    events: Events,
) -> None:
    secrets_ = [*credential_tokens, CLIENT_SECRET, NEW_ACCESS, NEW_REFRESH]
    texts = [str(exc), repr(exc), repr(exc.args), caplog.text]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(e.get("error")) + str(e.get("error")) for e in events.failed]
    assert leaked(secrets_, texts) == []


def renew_capturing(
    capture: CaptureOnCommit, credential: SliceCredential, **kwargs: Any
) -> SliceCredential:
    with capture(execute=True):
        return services.renew(credential, **kwargs)


def renew_expecting(
    capture: CaptureOnCommit, credential: SliceCredential, **kwargs: Any
) -> SliceConnectError:
    with capture(execute=True):
        with pytest.raises(SliceConnectError) as excinfo:
            services.renew(credential, **kwargs)
    return excinfo.value


# -- when renew() calls Slice ----------------------------------------------------------------


def test_not_needed_makes_no_request(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    events: Events,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = make_credential(user)
    before = raw_row(credential.pk)
    result = renew_capturing(django_capture_on_commit_callbacks, credential)
    assert result is credential
    assert len(slice_mock.calls) == 0
    assert raw_row(credential.pk) == before
    assert events.renewed == [] and events.failed == []
    credential.refresh_from_db()
    assert credential.renewal_started_at is None


@pytest.mark.parametrize(
    ("access_in", "refresh_in", "force"),
    [
        pytest.param(timedelta(seconds=60), timedelta(days=14), False, id="access-in-leeway"),
        pytest.param(timedelta(hours=1), timedelta(days=6), False, id="refresh-due"),
        pytest.param(timedelta(hours=1), timedelta(days=14), True, id="forced"),
    ],
)
def test_needed_or_forced_posts_once(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    frozen: Any,
    access_in: timedelta,
    refresh_in: timedelta,
    force: bool,
) -> None:
    credential = make_credential(
        user, access_token_expires_at=T0 + access_in, refresh_token_expires_at=T0 + refresh_in
    )
    add_json(slice_mock, token_json())
    services.renew(credential, force=force)
    assert len(slice_mock.calls) == 1
    assert credential.access_token == NEW_ACCESS


def test_success_stores_tokens_and_resets_bookkeeping(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    events: Events,
    frozen: Any,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = make_credential(
        user,
        access_token_expires_at=T0 - timedelta(minutes=5),
        refresh_token_expires_at=T0 + timedelta(days=5),
        failure_count=3,
        last_error_code="http_503",
        last_error_at=T0 - timedelta(hours=1),
        renewal_started_at=T0 - timedelta(days=1),  # a stale journal from a crash
    )
    old_version = credential.version
    add_json(slice_mock, token_json())

    with django_capture_on_commit_callbacks(execute=True):
        result = services.renew(credential)
        assert events.renewed == []  # only after commit
    assert result is credential
    assert len(events.renewed) == 1
    assert events.renewed[0]["credential"].pk == credential.pk
    assert events.failed == []

    stored = SliceCredential.objects.get(pk=credential.pk)
    for row in (credential, stored):
        assert row.access_token == NEW_ACCESS
        assert row.refresh_token == NEW_REFRESH
        assert row.token_type == "bearer"
        assert row.access_token_expires_at == T0 + timedelta(seconds=3600)
        assert row.refresh_token_expires_at == T0 + timedelta(days=14)
        assert row.version == old_version + 1
        assert row.renewal_started_at is None
        assert row.failure_count == 0
        assert row.last_error_code == ""
        assert row.last_error_at is None
        assert row.last_renewed_at == T0
        assert row.status == Active
    access, refresh, _version = raw_row(credential.pk)
    assert access.startswith(b"gAAAAA") and NEW_ACCESS.encode() not in access
    assert refresh.startswith(b"gAAAAA") and NEW_REFRESH.encode() not in refresh


def test_refresh_request_is_form_encoded_without_basic_auth(
    canary_credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    old_refresh = canary_credential.refresh_token
    add_json(slice_mock, token_json())
    services.renew(canary_credential)
    assert len(slice_mock.calls) == 1
    request = slice_mock.calls[0].request
    assert request.method == "POST"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in request.headers
    body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
    assert parse_qs(body, keep_blank_values=True) == {
        "grant_type": ["refresh_token"],
        "refresh_token": [old_refresh],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }


@pytest.mark.parametrize(
    ("overrides", "access_lifetime", "rotated"),
    [
        pytest.param({}, 3600, True, id="valid"),
        pytest.param({"refresh_token": _DROP}, 3600, False, id="no-refresh-token"),
        pytest.param({"refresh_token": None}, 3600, False, id="null-refresh-token"),
        pytest.param({"expires_in": _DROP}, 3600, True, id="expires-in-missing"),
        pytest.param({"expires_in": "3600"}, 3600, True, id="expires-in-string"),
        pytest.param({"expires_in": 7200}, 7200, True, id="expires-in-7200"),
        pytest.param({"token_type": _DROP}, 3600, True, id="token-type-missing"),
        pytest.param({"token_type": "bearer"}, 3600, True, id="token-type-lowercase"),
    ],
)
def test_valid_200_variants(
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    django_capture_on_commit_callbacks: CaptureOnCommit,
    overrides: dict[str, Any],
    access_lifetime: int,
    rotated: bool,
) -> None:
    credential = canary_credential
    old_refresh = credential.refresh_token
    old_refresh_expiry = credential.refresh_token_expires_at
    old_version = credential.version
    add_json(slice_mock, token_json(**overrides))

    renew_capturing(django_capture_on_commit_callbacks, credential)

    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.access_token == NEW_ACCESS
    assert stored.access_token_expires_at == T0 + timedelta(seconds=access_lifetime)
    assert stored.version == old_version + 1
    if rotated:
        assert stored.refresh_token == NEW_REFRESH
        assert stored.refresh_token_expires_at == T0 + app_settings.REFRESH_TOKEN_LIFETIME
    else:
        # Never nulled: the old refresh token and its deadline stay.
        assert stored.refresh_token == old_refresh
        assert stored.refresh_token_expires_at == old_refresh_expiry
    assert len(slice_mock.calls) == 1
    assert len(events.renewed) == 1 and events.failed == []


def test_refresh_token_expires_in_from_slice_is_used(
    canary_credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_json(slice_mock, token_json(refresh_token_expires_in=86400))
    services.renew(canary_credential)
    stored = SliceCredential.objects.get(pk=canary_credential.pk)
    assert stored.refresh_token_expires_at == T0 + timedelta(days=1)


# -- B3: the token endpoint response matrix, for the refresh ----------------------------------


Register = Callable[[responses.RequestsMock], None]


def reply_json(payload: Any, status: int = 200, **headers: str) -> Register:
    return lambda mock: add_json(mock, payload, status=status, headers=headers or None)


def reply_raw(body: bytes | str, content_type: str, status: int = 200) -> Register:
    def register(mock: responses.RequestsMock) -> None:
        mock.add(responses.POST, TOKEN_URL, body=body, status=status, content_type=content_type)

    return register


def reply_429_http_date(mock: responses.RequestsMock) -> None:
    when = email.utils.format_datetime(T0 + timedelta(seconds=300), usegmt=True)
    add_json(mock, {"error": "slow_down"}, status=429, headers={"Retry-After": when})


def reply_redirect(mock: responses.RequestsMock) -> None:
    mock.add(
        responses.POST,
        TOKEN_URL,
        status=302,
        headers={"Location": "https://evil.test/oauth/token"},
    )
    mock.add(responses.POST, "https://evil.test/oauth/token", json=token_json())
    mock.add(responses.GET, "https://evil.test/oauth/token", json=token_json())


@dataclass(frozen=True)
class Case:
    register: Register
    exc: type[SliceConnectError]
    code: str
    requests: int = 1
    status: str = Active
    reason: str = ""
    failure_count: int = 1
    permanent: bool | None = False  # None: no credential_renewal_failed signal
    journal: bool = False  # renewal_started_at left set
    critical: bool = False
    retry_after: float | None = None


def lost(register: Register, code: str) -> Case:
    """An invalid 200: maybe rotated, so retried once with the same token, then journaled."""
    return Case(register, ResponseLost, code, requests=2, journal=True)


def config(register: Register, code: str) -> Case:
    return Case(register, ConfigurationError, code, failure_count=0, permanent=None, critical=True)


def transient(register: Register, code: str, retry_after: float | None = None) -> Case:
    return Case(register, TransientError, code, retry_after=retry_after)


TEN_MB = b'{"access_token": "' + b"a" * (10 * 1024 * 1024) + b'"}'

B3_FAILURES: dict[str, Case] = {
    # 200s that are not usable token responses (odd but usable ones: ODD_200S below)
    "refresh-token-int": lost(reply_json(token_json(refresh_token=7)), "bad_refresh_token"),
    "json-array": lost(reply_json([token_json()]), "malformed_json"),
    "html": lost(reply_raw("<html><body>Bad gateway</body></html>", "text/html"), "not_json"),
    "empty": lost(reply_raw(b"", "application/json"), "malformed_json"),
    "truncated": lost(
        reply_raw(json.dumps(token_json())[:40], "application/json"), "malformed_json"
    ),
    "10mb": lost(reply_raw(TEN_MB, "application/json"), "response_too_large"),
    "deeply-nested": lost(
        reply_raw(b"[" * 20_000 + b"]" * 20_000, "application/json"), "malformed_json"
    ),
    # client errors
    "400-invalid-grant": Case(
        reply_json({"error": "invalid_grant"}, status=400),
        NeedsReauth,
        "invalid_grant",
        status=NeedsReauthStatus,
        reason=Reason.INVALID_GRANT,
        permanent=True,
    ),
    "400-invalid-request": config(
        reply_json({"error": "invalid_request"}, status=400), "invalid_request"
    ),
    "400-invalid-scope": config(
        reply_json({"error": "invalid_scope"}, status=400), "invalid_scope"
    ),
    "400-unsupported-grant-type": config(
        reply_json({"error": "unsupported_grant_type"}, status=400), "unsupported_grant_type"
    ),
    "400-unauthorized-client": config(
        reply_json({"error": "unauthorized_client"}, status=400), "unauthorized_client"
    ),
    "401-invalid-client": config(
        reply_json({"error": "invalid_client"}, status=401), "invalid_client"
    ),
    "403": config(reply_raw("Forbidden", "text/plain", status=403), "http_403"),
    "404": config(reply_raw("<h1>Not Found</h1>", "text/html", status=404), "http_404"),
    "400-unknown-error": Case(
        reply_json({"error": "server_busy"}, status=400), InvalidTokenResponse, "server_busy"
    ),
    "400-no-body": Case(reply_raw(b"", "text/plain", status=400), InvalidTokenResponse, "http_400"),
    "429-retry-after-seconds": transient(
        reply_json({"error": "slow_down"}, status=429, **{"Retry-After": "120"}), "http_429", 120.0
    ),
    "429-retry-after-http-date": transient(reply_429_http_date, "http_429", 300.0),
    "429-no-retry-after": transient(reply_json({"error": "slow_down"}, status=429), "http_429"),
    # server errors and redirects
    # 5xx: maybe processed (a gateway's 502 after the upstream rotated): one same-token
    # retry, then the journal is kept, exactly like a lost answer.
    "500": lost(reply_raw("oops", "text/plain", status=500), "http_500"),
    "502": lost(reply_raw("<html>proxy</html>", "text/html", status=502), "http_502"),
    "503": replace(
        lost(
            reply_json({"error": "temporarily_unavailable"}, status=503, **{"Retry-After": "30"}),
            "http_503",
        ),
        retry_after=30.0,
    ),
    "504": lost(reply_raw(b"", "text/plain", status=504), "http_504"),
    "302-other-host": Case(reply_redirect, InvalidTokenResponse, "redirect"),
}


@pytest.mark.parametrize("case", B3_FAILURES.values(), ids=B3_FAILURES.keys())
def test_b3_refresh_failure_matrix(
    case: Case,
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    caplog.set_level(logging.DEBUG)
    credential = canary_credential
    tokens = (credential.access_token, credential.refresh_token)
    assert isinstance(tokens[0], str) and isinstance(tokens[1], str)
    before = raw_row(credential.pk)
    case.register(slice_mock)

    exc = renew_expecting(django_capture_on_commit_callbacks, credential)

    assert type(exc) is case.exc
    assert exc.code == case.code
    if isinstance(exc, TransientError):
        assert exc.retry_after == case.retry_after
    # The stored tokens and version are untouched on every failure.
    assert raw_row(credential.pk) == before
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert (stored.access_token, stored.refresh_token) == tokens
    assert stored.status == case.status
    assert stored.status_reason == case.reason
    assert stored.failure_count == case.failure_count
    assert stored.last_error_code == (exc.code if case.failure_count else "")
    assert (stored.last_error_at == T0) is bool(case.failure_count)
    assert (stored.renewal_started_at == T0) is case.journal
    if not case.journal:
        assert stored.renewal_started_at is None
    assert stored.last_renewed_at is None
    # Only an unchanged invalid_grant marks the credential (and the caller's instance).
    assert (credential.status, credential.status_reason) == (case.status, case.reason)
    if case.status == NeedsReauthStatus:
        assert isinstance(exc, NeedsReauth) and exc.reason == case.reason
    # Slice saw exactly the expected requests, all with the stored refresh token.
    assert sent_refresh_tokens(slice_mock) == [tokens[1]] * case.requests
    assert all(call.request.url == TOKEN_URL for call in slice_mock.calls)
    # Signals, after commit.
    assert events.renewed == []
    if case.permanent is None:
        assert events.failed == []
    else:
        assert [e["permanent"] for e in events.failed] == [case.permanent]
        assert events.failed[0]["error"] is exc
        assert events.failed[0]["credential"].pk == credential.pk
    criticals = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert bool(criticals) is case.critical
    if case.critical:
        assert "No user was marked" in criticals[0].getMessage()
    assert_no_secrets(tokens, exc, caplog, events)


def test_b3_redirect_is_never_followed(
    canary_credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    reply_redirect(slice_mock)
    with pytest.raises(InvalidTokenResponse):
        services.renew(canary_credential)
    assert [call.request.url for call in slice_mock.calls] == [TOKEN_URL]


def test_only_invalid_grant_marks_and_a_config_error_marks_nobody(
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    frozen: Any,
) -> None:
    """invalid_client is the site's fault: every user stays active, the next renew posts."""
    credentials = [
        make_credential(make_user(), access_token_expires_at=T0 + timedelta(seconds=10))
        for _ in range(3)
    ]
    add_json(slice_mock, {"error": "invalid_client"}, status=401)
    for credential in credentials:
        with pytest.raises(ConfigurationError):
            services.renew(credential)
    assert set(SliceCredential.objects.values_list("status", flat=True)) == {Active}
    assert len(slice_mock.calls) == 3


# -- response lost: one retry with the same token, then the journal ---------------------------


def read_timeout(mock: responses.RequestsMock) -> None:
    mock.add(responses.POST, TOKEN_URL, body=requests.ReadTimeout("read timed out"))


def invalid_200(mock: responses.RequestsMock) -> None:
    add_json(mock, token_json(refresh_token=7))


@pytest.mark.parametrize("first", [read_timeout, invalid_200], ids=["read-timeout", "bad-200"])
def test_lost_response_retried_once_with_same_token_then_succeeds(
    first: Register,
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    old_refresh = canary_credential.refresh_token
    first(slice_mock)
    add_json(slice_mock, token_json())
    renew_capturing(django_capture_on_commit_callbacks, canary_credential)
    assert sent_refresh_tokens(slice_mock) == [old_refresh, old_refresh]
    stored = SliceCredential.objects.get(pk=canary_credential.pk)
    assert stored.refresh_token == NEW_REFRESH
    assert stored.renewal_started_at is None
    assert stored.failure_count == 0
    assert len(events.renewed) == 1 and events.failed == []


@pytest.mark.parametrize("first", [read_timeout, invalid_200], ids=["read-timeout", "bad-200"])
def test_lost_response_then_invalid_grant_is_lost_rotation(
    first: Register,
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = (str(canary_credential.access_token), str(canary_credential.refresh_token))
    before = raw_row(canary_credential.pk)
    first(slice_mock)
    add_json(slice_mock, {"error": "invalid_grant"}, status=400)

    exc = renew_expecting(django_capture_on_commit_callbacks, canary_credential)

    assert type(exc) is NeedsReauth
    assert exc.reason == Reason.LOST_ROTATION and exc.code == Reason.LOST_ROTATION
    assert sent_refresh_tokens(slice_mock) == [tokens[1], tokens[1]]
    assert raw_row(canary_credential.pk) == before
    stored = SliceCredential.objects.get(pk=canary_credential.pk)
    assert stored.status == NeedsReauthStatus
    assert stored.status_reason == Reason.LOST_ROTATION
    assert stored.last_error_code == Reason.LOST_ROTATION
    assert stored.failure_count == 1
    assert stored.renewal_started_at is None
    assert [e["permanent"] for e in events.failed] == [True]
    assert any(
        r.levelno == logging.ERROR and "lost_rotation" in r.getMessage() for r in caplog.records
    )
    assert_no_secrets(tokens, exc, caplog, events)


@pytest.mark.parametrize("delay", [30, 3600], ids=["inside-lease", "after-lease"])
def test_lost_twice_keeps_journal_and_next_attempt_is_lost_rotation(
    delay: int,
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    frozen: time_machine.Traveller,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = canary_credential
    before = raw_row(credential.pk)
    old_refresh = str(credential.refresh_token)
    read_timeout(slice_mock)

    exc = renew_expecting(django_capture_on_commit_callbacks, credential)

    assert type(exc) is ResponseLost
    assert len(slice_mock.calls) == 2  # one retry, no loop
    assert raw_row(credential.pk) == before
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == Active
    assert stored.renewal_started_at == T0  # the journal: the token may be spent
    assert stored.failure_count == 1
    assert stored.last_error_code == "timeout"
    assert [e["permanent"] for e in events.failed] == [False]

    # A later attempt inherits the doubt: the recorded failure says the stamp is not a live
    # renewal's, so even a Celery retry well inside the lease counts a lost rotation.
    frozen.shift(timedelta(seconds=delay))
    slice_mock.reset()
    add_json(slice_mock, {"error": "invalid_grant"}, status=400)
    exc = renew_expecting(django_capture_on_commit_callbacks, credential)
    assert type(exc) is NeedsReauth
    assert exc.reason == Reason.LOST_ROTATION
    assert sent_refresh_tokens(slice_mock) == [old_refresh]
    stored.refresh_from_db()
    assert stored.status_reason == Reason.LOST_ROTATION
    assert stored.failure_count == 2
    assert raw_row(credential.pk) == before


def test_journal_kept_by_transient_failure_then_success_clears_it(
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    frozen: time_machine.Traveller,
) -> None:
    credential = canary_credential
    read_timeout(slice_mock)
    with pytest.raises(ResponseLost):
        services.renew(credential)
    for minutes in (5, 10):
        frozen.shift(timedelta(minutes=5))
        slice_mock.reset()
        add_json(slice_mock, {"error": "slow_down"}, status=429)  # surely not processed
        with pytest.raises(TransientError):
            services.renew(credential)
        assert len(slice_mock.calls) == 1
        stored = SliceCredential.objects.get(pk=credential.pk)
        assert stored.renewal_started_at == T0, minutes
    slice_mock.reset()
    add_json(slice_mock, token_json())
    services.renew(credential)
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.renewal_started_at is None
    assert stored.refresh_token == NEW_REFRESH
    assert stored.failure_count == 0


@pytest.mark.parametrize(
    ("second", "exc_type"),
    [
        pytest.param(
            reply_json({"error": "unavailable"}, status=503), TransientError, id="then-503"
        ),
        pytest.param(
            reply_json({"error": "invalid_client"}, status=401),
            ConfigurationError,
            id="then-invalid-client",
        ),
        pytest.param(
            lambda mock: mock.add(
                responses.POST, TOKEN_URL, body=requests.ConnectTimeout("connect timed out")
            ),
            TransientError,
            id="then-connect-timeout",
        ),
    ],
)
def test_lost_response_then_other_failure_keeps_journal(
    second: Register,
    exc_type: type[SliceConnectError],
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    """The first request may have rotated the token: whatever the retry says, keep the trace."""
    before = raw_row(canary_credential.pk)
    read_timeout(slice_mock)
    second(slice_mock)
    with pytest.raises(exc_type):
        services.renew(canary_credential)
    assert len(slice_mock.calls) == 2
    stored = SliceCredential.objects.get(pk=canary_credential.pk)
    assert stored.renewal_started_at == T0
    assert stored.status == Active
    assert raw_row(canary_credential.pk) == before


@pytest.mark.parametrize("age", [timedelta(seconds=1), timedelta(hours=1)], ids=str)
def test_journal_left_by_a_crashed_worker_makes_invalid_grant_a_lost_rotation(
    age: timedelta,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    frozen: Any,
) -> None:
    # A stamp this attempt did not set, however recent (Celery redelivers the task of a
    # killed pool process within a second).
    credential = make_credential(user, access_token_expires_at=T0, renewal_started_at=T0 - age)
    add_json(slice_mock, {"error": "invalid_grant"}, status=400)
    with pytest.raises(NeedsReauth) as excinfo:
        services.renew(credential)
    assert excinfo.value.reason == Reason.LOST_ROTATION
    assert len(slice_mock.calls) == 1


def test_never_more_than_two_requests_per_call(
    canary_credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    for _ in range(6):
        read_timeout(slice_mock)
    add_json(slice_mock, token_json())  # a loop would reach this and "succeed"
    for attempt in range(1, 4):
        with pytest.raises(ResponseLost):
            services.renew(canary_credential)
        assert len(slice_mock.calls) == 2 * attempt


# -- B4: network faults ---------------------------------------------------------------------


def refused() -> requests.ConnectionError:
    """What requests raises for ECONNREFUSED: ConnectionError(MaxRetryError(NewConnectionError))."""
    message = "Failed to establish a new connection: [Errno 111] refused"
    reason = NewConnectionError(None, message)  # type: ignore[arg-type]
    return requests.ConnectionError(MaxRetryError(None, "/oauth/token", reason=reason))  # type: ignore[arg-type]


def reset_after_send() -> requests.ConnectionError:
    reset = ConnectionResetError(104, "Connection reset by peer")
    return requests.ConnectionError(ProtocolError("Connection aborted.", reset))


@pytest.mark.parametrize(
    ("error", "exc_type", "calls"),
    [
        pytest.param(
            requests.ConnectTimeout("connect timed out"), TransientError, 1, id="connect-timeout"
        ),
        pytest.param(refused(), TransientError, 1, id="connection-refused"),
        pytest.param(certificate_error(), TransientError, 1, id="tls"),
        pytest.param(requests.ReadTimeout("read timed out"), ResponseLost, 2, id="read-timeout"),
        pytest.param(reset_after_send(), ResponseLost, 2, id="reset-after-send"),
    ],
)
def test_b4_network_faults(
    error: Exception,
    exc_type: type[SliceConnectError],
    calls: int,
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    caplog.set_level(logging.DEBUG)
    credential = canary_credential
    tokens = (str(credential.access_token), str(credential.refresh_token))
    before = raw_row(credential.pk)
    slice_mock.add(responses.POST, TOKEN_URL, body=error)

    exc = renew_expecting(django_capture_on_commit_callbacks, credential)

    assert type(exc) is exc_type
    assert len(slice_mock.calls) == calls
    assert raw_row(credential.pk) == before
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == Active and stored.status_reason == ""
    assert stored.failure_count == 1
    expected = {1: {"connect_error"}, 2: {"timeout", "connection_error"}}[calls]
    assert stored.last_error_code == exc.code and exc.code in expected
    # Never sent: no journal. Maybe processed: the journal stays.
    assert stored.renewal_started_at == (None if calls == 1 else T0)
    assert [e["permanent"] for e in events.failed] == [False]
    assert_no_secrets(tokens, exc, caplog, events)


def test_tls_failure_is_logged_as_security_event(
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slice_mock.add(responses.POST, TOKEN_URL, body=certificate_error())
    with pytest.raises(TransientError):
        services.renew(canary_credential)
    assert any(
        r.levelno == logging.ERROR and "TLS verification" in r.getMessage() for r in caplog.records
    )


# -- races, dead and unreadable credentials ------------------------------------------------


def _watch_locks(
    monkeypatch: pytest.MonkeyPatch, before: dict[int, Callable[[int], None]] | None = None
) -> list[int]:
    """Count the renewal's locked transactions; ``before[n](pk)`` runs just before the nth."""
    real_locked = services._locked
    entered: list[int] = []

    @contextmanager
    def locked(pk: int) -> Iterator[SliceCredential]:
        entered.append(pk)
        if before and len(entered) in before:
            before[len(entered)](pk)
        with real_locked(pk) as row:
            yield row

    monkeypatch.setattr(services, "_locked", locked)
    return entered


def test_sibling_rotation_between_phases_wins_without_a_request(
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = canary_credential
    # Had we posted the old token, strict Slice would have answered invalid_grant.
    add_json(slice_mock, {"error": "invalid_grant"}, status=400)

    def sibling_rotates(pk: int) -> None:
        row = SliceCredential.objects.get(pk=pk)
        row.access_token = "sibling-access"  # type: ignore[assignment]
        row.refresh_token = "sibling-refresh"  # type: ignore[assignment]
        row.access_token_expires_at = T0 + timedelta(hours=1)
        row.refresh_token_expires_at = T0 + timedelta(days=14)
        row.version += 1
        row.renewal_started_at = None
        row.save()

    # After this call stamped the journal, before it locks the row to decide.
    entered = _watch_locks(monkeypatch, before={1: sibling_rotates})
    with django_capture_on_commit_callbacks(execute=True):
        result = services.renew_with_result(credential)

    assert len(entered) == 1
    assert len(slice_mock.calls) == 0
    assert result.renewed is False
    assert credential.access_token == "sibling-access"
    assert credential.refresh_token == "sibling-refresh"
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == Active
    assert stored.refresh_token == "sibling-refresh"
    assert events.failed == [] and events.renewed == []


def _sibling_stamp_seen_at_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal stamp matches nothing: a sibling's stamp was there (it is gone since)."""
    monkeypatch.setattr(services.rows, "stamp", lambda *args, **kwargs: False)


def test_a_renewal_that_found_a_siblings_stamp_commits_its_own_before_posting(
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = canary_credential
    _sibling_stamp_seen_at_first(monkeypatch)
    entered = _watch_locks(monkeypatch)
    seen_at_post: list[Any] = []

    def answer(request: Any) -> tuple[int, dict[str, str], str]:
        row = SliceCredential.objects.get(pk=credential.pk)
        seen_at_post.append((len(entered), row.renewal_started_at))
        return 200, {"Content-Type": "application/json"}, json.dumps(token_json())

    slice_mock.add_callback(responses.POST, TOKEN_URL, callback=answer)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.renew_with_result(credential)

    assert result.renewed is True
    # Found needed with no stamp at all: stamped under the lock, committed (the first
    # locked transaction ended), then posted from the second with the stamp on record.
    [(locks_taken, stamp)] = seen_at_post
    assert locks_taken == 2 and stamp is not None
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.refresh_token == NEW_REFRESH
    assert stored.version == 2 and stored.renewal_started_at is None
    assert len(events.renewed) == 1 and events.failed == []


def test_a_sibling_renewal_while_this_one_stamped_wins_without_a_request(
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = canary_credential
    _sibling_stamp_seen_at_first(monkeypatch)
    add_json(slice_mock, {"error": "invalid_grant"}, status=400)

    def sibling_renews(pk: int) -> None:
        SliceCredential.objects.filter(pk=pk).update(
            version=F("version") + 1, renewal_started_at=None
        )

    # Between committing its stamp and locking again.
    entered = _watch_locks(monkeypatch, before={2: sibling_renews})
    with django_capture_on_commit_callbacks(execute=True):
        result = services.renew_with_result(credential, force=True)

    assert len(entered) == 2
    assert len(slice_mock.calls) == 0
    assert result.renewed is False and result.credential.version == 2


def test_needs_reauth_credential_is_never_sent(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    events: Events,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = make_credential(
        user,
        status=NeedsReauthStatus,
        status_reason=Reason.INVALID_GRANT,
        access_token_expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc),
    )
    before = raw_row(credential.pk)
    add_json(slice_mock, token_json())
    for force in (False, True):
        exc = renew_expecting(django_capture_on_commit_callbacks, credential, force=force)
        assert type(exc) is NeedsReauth
        assert exc.reason == Reason.INVALID_GRANT
    assert len(slice_mock.calls) == 0
    assert raw_row(credential.pk) == before
    assert events.failed == []  # nothing newly failed


def _set_raw_column(pk: int, column: str, value: bytes) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE slice_connect_slicecredential SET {column} = %s WHERE id = %s", [value, pk]
        )


@pytest.mark.parametrize("corruption", ["wrong-keys", "garbage-refresh", "garbage-access"])
def test_undecryptable_credential(
    corruption: str,
    canary_credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    events: Events,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: CaptureOnCommit,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = (str(canary_credential.access_token), str(canary_credential.refresh_token))
    pk = canary_credential.pk
    if corruption == "wrong-keys":
        settings.FERNET_KEYS = ["a-key-that-never-encrypted-anything"]
        # Another row reads under this list, so this row alone was written under a key since
        # lost: its own problem. (When no row reads, the process is at fault: test_keyprobe.)
        make_credential(make_user(), status=SliceCredential.Status.NEEDS_REAUTH)
    else:
        _set_raw_column(pk, corruption.split("-")[1] + "_token", b"not-a-fernet-token")
    before = raw_row(pk)
    add_json(slice_mock, token_json())
    credential = SliceCredential.objects.get(pk=pk)

    exc = renew_expecting(django_capture_on_commit_callbacks, credential, force=True)

    assert type(exc) is CredentialUnreadable
    assert exc.reason == Reason.UNDECRYPTABLE
    assert len(slice_mock.calls) == 0
    assert raw_row(pk) == before
    status = SliceCredential.objects.without_tokens().get(pk=pk)
    assert (status.status, status.status_reason) == (NeedsReauthStatus, Reason.UNDECRYPTABLE)
    assert status.renewal_started_at is None
    assert [e["permanent"] for e in events.failed] == [True]
    assert "gAAAAA" not in caplog.text and "not-a-fernet-token" not in caplog.text
    assert_no_secrets(tokens, exc, caplog, events)

    # A second attempt is refused as a plain needs-reauth, still without a request.
    exc = renew_expecting(django_capture_on_commit_callbacks, credential)
    assert isinstance(exc, NeedsReauth)
    assert len(slice_mock.calls) == 0
    assert raw_row(pk) == before


def test_missing_credential_raises_not_linked(slice_mock: responses.RequestsMock) -> None:
    with pytest.raises(NotLinked):
        services.renew_by_id(987654)
    with pytest.raises(NotLinked):
        services.renew(SliceCredential(pk=987654))  # a stale copy of a deleted row
    assert len(slice_mock.calls) == 0


# -- B11: time edges ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refresh_in", "due"),
    [
        pytest.param(timedelta(days=6, hours=23), True, id="6d23h-due"),
        pytest.param(timedelta(days=7), True, id="7d-due"),
        pytest.param(timedelta(days=7, seconds=1), False, id="7d1s-not-due"),
        pytest.param(timedelta(days=7, hours=1), False, id="7d1h-not-due"),
    ],
)
def test_refresh_due_boundary(
    refresh_in: timedelta,
    due: bool,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    frozen: Any,
) -> None:
    assert app_settings.RENEW_WITHIN == timedelta(days=7)
    credential = make_credential(user, refresh_token_expires_at=T0 + refresh_in)
    add_json(slice_mock, token_json())
    assert credential.refresh_token_due() is due
    assert SliceCredential.objects.due_for_renewal().filter(pk=credential.pk).exists() is due
    result = services.renew_with_result(credential)
    assert result.renewed is due
    assert len(slice_mock.calls) == int(due)


@pytest.mark.parametrize(
    ("age", "expired"),
    [
        pytest.param(timedelta(days=13, hours=23), False, id="13d23h"),
        pytest.param(timedelta(days=14), True, id="14d"),
        pytest.param(timedelta(days=14, seconds=1), True, id="14d1s"),
    ],
)
def test_refresh_token_lifetime_edge(
    age: timedelta,
    expired: bool,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    events: Events,
    frozen: time_machine.Traveller,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = make_credential(user)  # linked at T0, refresh token valid for 14 days
    before = raw_row(credential.pk)
    add_json(slice_mock, token_json())
    frozen.shift(age)
    if not expired:
        renew_capturing(django_capture_on_commit_callbacks, credential)
        assert len(slice_mock.calls) == 1
        return
    exc = renew_expecting(django_capture_on_commit_callbacks, credential)
    assert type(exc) is NeedsReauth
    assert exc.reason == Reason.REFRESH_EXPIRED and exc.code == Reason.REFRESH_EXPIRED
    assert len(slice_mock.calls) == 0
    assert raw_row(credential.pk) == before
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert (stored.status, stored.status_reason) == (NeedsReauthStatus, Reason.REFRESH_EXPIRED)
    assert [e["permanent"] for e in events.failed] == [True]


@pytest.mark.parametrize(
    ("access_in_seconds", "renews"),
    [
        pytest.param(-61, True, id="expired-61s-ago"),
        pytest.param(-59, True, id="expired-59s-ago"),
        pytest.param(1, True, id="expires-in-1s"),
        pytest.param(119, True, id="leeway-minus-1s"),
        pytest.param(120, True, id="at-leeway"),
        pytest.param(121, False, id="leeway-plus-1s"),
        pytest.param(3600, False, id="fresh"),
    ],
)
def test_access_token_leeway_edges(
    access_in_seconds: int,
    renews: bool,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    frozen: Any,
) -> None:
    assert app_settings.ACCESS_TOKEN_LEEWAY == timedelta(seconds=120)
    credential = make_credential(
        user, access_token_expires_at=T0 + timedelta(seconds=access_in_seconds)
    )
    add_json(slice_mock, token_json())
    services.renew(credential)
    assert len(slice_mock.calls) == int(renews)
    # Afterwards the token is never expired or inside the leeway (no refresh storm).
    assert not credential.access_token_expiring()
    services.renew(credential)
    assert len(slice_mock.calls) == int(renews)


def test_six_day_outage_loses_nothing(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    events: Events,
    frozen: time_machine.Traveller,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    credential = make_credential(user, refresh_token_expires_at=T0 + timedelta(days=8))
    tokens = (credential.access_token, credential.refresh_token)
    before = raw_row(credential.pk)
    add_json(slice_mock, {"error": "temporarily_unavailable"}, status=503)

    failures = 0
    for _hour in range(6 * 24):
        frozen.shift(timedelta(hours=1))
        with django_capture_on_commit_callbacks(execute=True):
            try:
                services.renew(credential)
            except TransientError as exc:
                assert exc.code == "http_503"
                failures += 1
    # A 5xx may mean "processed": each attempt retries once at once with the same token.
    assert failures == 6 * 24 and len(slice_mock.calls) == 2 * failures
    assert raw_row(credential.pk) == before
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == Active
    assert stored.failure_count == failures
    assert stored.renewal_started_at == T0 + timedelta(hours=1)  # journal kept
    assert (stored.access_token, stored.refresh_token) == tokens
    assert all(e["permanent"] is False for e in events.failed)
    assert len(events.failed) == failures

    # Slice recovers with two days of the refresh token's life left.
    frozen.shift(timedelta(hours=1))
    slice_mock.reset()
    add_json(slice_mock, token_json())
    renew_capturing(django_capture_on_commit_callbacks, credential)
    stored.refresh_from_db()
    assert stored.refresh_token == NEW_REFRESH
    assert stored.failure_count == 0
    now = T0 + timedelta(days=6, hours=1)
    assert stored.refresh_token_expires_at == now + timedelta(days=14)
    assert len(events.renewed) == 1


# -- query counts --------------------------------------------------------------------------


def test_query_count_when_not_needed(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    django_assert_num_queries: Any,
) -> None:
    credential = make_credential(user)
    # The journal stamp (an UPDATE that matches nothing), then SAVEPOINT (BEGIN outside a
    # test), SELECT ... FOR UPDATE, RELEASE (COMMIT). On PostgreSQL the lock timeout is set
    # by the statements themselves.
    with django_assert_num_queries(4):
        services.renew(credential)
    assert len(slice_mock.calls) == 0


def test_query_count_when_due(
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    django_assert_num_queries: Any,
) -> None:
    add_json(slice_mock, token_json())
    for _ in range(2):  # the same count every time: nothing grows with history
        credential = make_credential(
            make_user(), refresh_token_expires_at=tz_now() + timedelta(days=1)
        )
        # The journal stamp (UPDATE), then SAVEPOINT (BEGIN outside a test),
        # SELECT ... FOR UPDATE, UPDATE with the new tokens, RELEASE (COMMIT).
        with django_assert_num_queries(5):
            services.renew(credential)
    assert len(slice_mock.calls) == 2
