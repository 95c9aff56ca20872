"""Work that commits on its own, on any database; SQLite's refusal; the callback's claim.

The races themselves run on PostgreSQL against the sandbox in ``test_link_races.py``.
These tests pin the rules around them with the mocked Slice: which callers get an own
connection, what SQLite does instead (it allows one writer, so a renewal inside a
transaction is refused before anything is sent), the claim table, the re-link and unlink
revocations, and the callback's query count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
import time_machine
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path
from django.utils import timezone

from slice_connect import durable, oauth, services, states
from slice_connect.client import SliceClient
from slice_connect.exceptions import ConfigurationError, NeedsReauth
from slice_connect.models import CallbackClaim, SliceCredential
from tests.conftest import API_URL, REVOKE_URL, TOKEN_URL

from .urls import urlpatterns as site_urlpatterns


class Boom(Exception):
    pass


@pytest.fixture
def slice_api(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    """The mocked Slice: each refresh answers new tokens; revocation and the API answer 200."""
    mock = slice_mock
    count = iter(range(1, 1000))

    def token(request: Any) -> tuple[int, dict[str, str], str]:
        n = next(count)
        body = (
            f'{{"access_token": "access-{n}", "refresh_token": "refresh-{n}", '
            f'"token_type": "bearer", "expires_in": 3600}}'
        )
        return 200, {"Content-Type": "application/json"}, body

    mock.add_callback(responses.POST, TOKEN_URL, callback=token)
    mock.post(REVOKE_URL, status=200)
    mock.get(API_URL, json={"result": {"userEmail": "a@example.com"}, "currentTime": 0})
    return mock


def token_calls(mock: responses.RequestsMock) -> list[Any]:
    return [c for c in mock.calls if c.request.url.startswith(TOKEN_URL)]


def revoked(mock: responses.RequestsMock) -> list[str]:
    return [
        parse_qs(c.request.body)["token"][0]
        for c in mock.calls
        if c.request.url.startswith(REVOKE_URL)
    ]


def sqlite_only() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's one-writer rule (the default test database)")


def stored(pk: int) -> tuple[Any, ...]:
    return tuple(
        SliceCredential.objects.filter(pk=pk).values_list(
            "version", "renewal_started_at", "status", "failure_count"
        )[0]
    )


# -- who runs where -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_in_callers_transaction() -> None:
    assert not durable.in_callers_transaction()
    with transaction.atomic():
        assert durable.in_callers_transaction()
        with transaction.atomic():
            assert durable.in_callers_transaction()
    assert not durable.in_callers_transaction()
    transaction.set_autocommit(False)
    try:
        assert durable.in_callers_transaction()
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)


@pytest.mark.django_db
def test_a_test_cases_transaction_does_not_count() -> None:
    """Its rows are invisible to other connections, so work runs inline there."""
    assert connection.in_atomic_block  # the test case's own
    assert not durable.in_callers_transaction()
    with transaction.atomic():
        assert not durable.in_callers_transaction()


@pytest.mark.django_db(transaction=True)
def test_run_on_own_connection_returns_raises_and_closes() -> None:
    seen: dict[str, Any] = {}

    def work(value: int) -> int:
        seen["thread"] = threading.current_thread().name
        seen["connection"] = id(connections[DEFAULT_DB_ALIAS])
        return value * 2

    assert durable.run_on_own_connection(work, 21) == 42
    assert seen["thread"] == durable.THREAD_NAME
    assert seen["connection"] != id(connection)

    def fail() -> None:
        raise NeedsReauth("refused", reason="invalid_grant")

    with pytest.raises(NeedsReauth) as caught:
        durable.run_on_own_connection(fail)
    assert caught.value.reason == "invalid_grant"
    assert not [t for t in threading.enumerate() if t.name == durable.THREAD_NAME]


@pytest.mark.django_db
def test_renewal_inside_a_test_case_runs_inline(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an own connection could not see the test case's rows")

    monkeypatch.setattr(durable, "run_on_own_connection", no_thread)
    credential = make_credential(user)
    with transaction.atomic():
        services.renew(credential, force=True)
    assert credential.version == 2 and credential.refresh_token == "refresh-1"


# -- SQLite: one writer ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sqlite_refuses_a_renewal_inside_a_transaction_before_sending_anything(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqlite_only()
    credential = make_credential(user, access_token_expires_at=timezone.now())
    before = stored(credential.pk)

    with pytest.raises(ConfigurationError) as caught, transaction.atomic():
        services.renew(credential, force=True)
    assert caught.value.code == "renewal_in_transaction"
    assert "transaction" in str(caught.value) and "SQLite" in str(caught.value)
    assert token_calls(slice_api) == []
    assert stored(credential.pk) == before
    assert "non_atomic_requests" in caplog.text
    # Outside the transaction the same call works.
    services.renew(credential, force=True)
    assert len(token_calls(slice_api)) == 1 and credential.version == 2


def view_calling_slice(request: HttpRequest) -> HttpResponse:
    with SliceClient(request.user) as client:
        client.get("users/self")
    return HttpResponse("ok")


@transaction.non_atomic_requests  # the README's way out under ATOMIC_REQUESTS on SQLite
def non_atomic_view_calling_slice(request: HttpRequest) -> HttpResponse:
    return view_calling_slice(request)


urlpatterns = [
    path("calls-slice/", view_calling_slice),
    path("calls-slice-non-atomic/", non_atomic_view_calling_slice),
    *site_urlpatterns,
]


@pytest.mark.django_db(transaction=True)
def test_sqlite_atomic_requests_view_gets_the_error_and_the_documented_fix_works(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqlite_only()
    settings.ROOT_URLCONF = __name__
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    credential = make_credential(user, access_token_expires_at=timezone.now())
    client = Client()
    client.force_login(user)

    with pytest.raises(ConfigurationError, match="SQLite"):
        client.get("/calls-slice/")
    assert token_calls(slice_api) == []
    assert stored(credential.pk)[0] == 1

    assert client.get("/calls-slice-non-atomic/").status_code == 200
    assert len(token_calls(slice_api)) == 1
    assert stored(credential.pk)[0] == 2


# -- unlink and re-link revoke the live token -------------------------------------------------


@pytest.mark.django_db
def test_unlink_revokes_the_stored_token_not_a_stale_copy(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user, refresh_token="refresh-old")
    stale = SliceCredential.objects.get(pk=credential.pk)
    # A renewal commits between the caller's read and the delete.
    live = SliceCredential.objects.get(pk=credential.pk)
    live.refresh_token = "refresh-live"
    live.save()

    with django_capture_on_commit_callbacks(execute=True):
        services.unlink(stale)
    assert revoked(slice_api) == ["refresh-live"]


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["queryset", "user"])
def test_other_deletions_revoke_the_stored_token(
    how: str,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user, refresh_token="refresh-live")
    with django_capture_on_commit_callbacks(execute=True):
        if how == "queryset":
            SliceCredential.objects.filter(pk=credential.pk).delete()
        else:
            user.delete()
    assert revoked(slice_api) == ["refresh-live"]


def tokens(n: int) -> oauth.TokenSet:
    return oauth.TokenSet(
        access_token=f"access-new-{n}",
        refresh_token=f"refresh-new-{n}",
        token_type="bearer",
        expires_in=3600,
        received_at=timezone.now(),
    )


@pytest.mark.django_db
def test_relink_revokes_the_replaced_refresh_token_after_commit(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_credential(user, refresh_token="refresh-replaced")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.link(user, tokens(1))
    assert revoked(slice_api) == []  # never before commit
    for callback in callbacks:
        callback()
    assert revoked(slice_api) == ["refresh-replaced"]
    assert SliceCredential.objects.get(user=user).refresh_token == "refresh-new-1"


@pytest.mark.django_db
def test_relink_is_not_undone_by_a_failing_revocation(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_credential(user, refresh_token="refresh-replaced")
    with responses.RequestsMock() as mock:
        mock.post(REVOKE_URL, body=ConnectionError("Slice is down"))
        with django_capture_on_commit_callbacks(execute=True):
            credential = services.link(user, tokens(2))
    assert credential.refresh_token == "refresh-new-2"
    assert SliceCredential.objects.get(user=user).refresh_token == "refresh-new-2"


@pytest.mark.django_db
def test_first_link_and_revocation_off_revoke_nothing(
    user: Any,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
    slice_settings: Callable[..., None],
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        services.link(user, tokens(3))
    assert revoked(slice_api) == []
    slice_settings(REVOKE_ON_UNLINK=False)
    with django_capture_on_commit_callbacks(execute=True):
        services.link(user, tokens(4))
    assert revoked(slice_api) == []


# -- the callback's claim ---------------------------------------------------------------------


def attempt(state_hash: str = "a" * 64) -> states.PendingAttempt:
    return states.PendingAttempt(
        state_hash=state_hash,
        user_id="1",
        created=0.0,
        redirect_uri="https://site.test/cb",
        use_pkce=True,
        next_url=None,
    )


@pytest.mark.django_db(transaction=True)
def test_a_state_is_claimed_once() -> None:
    assert states.claim(attempt()) is True
    assert states.claim(attempt()) is False
    assert states.claim(attempt("b" * 64)) is True
    assert CallbackClaim.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_claim_inside_a_transaction_survives_its_rollback() -> None:
    """Own connection where possible; on SQLite the caller's transaction (one writer)."""
    with pytest.raises(Boom), transaction.atomic():
        assert states.claim(attempt()) is True
        raise Boom
    kept = CallbackClaim.objects.filter(state_hash="a" * 64).exists()
    assert kept is (connection.vendor != "sqlite")


@pytest.mark.django_db
def test_old_claims_are_pruned_when_an_attempt_starts(user: Any, settings: Any) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        states.claim(attempt("a" * 64))
        clock.shift(2 * 600 - 1)
        states.claim(attempt("b" * 64))
        clock.shift(2)
        client = Client()
        client.force_login(user)
        assert client.post("/slice/authorize/").status_code == 302
    assert list(CallbackClaim.objects.values_list("state_hash", flat=True)) == ["b" * 64]


@pytest.mark.django_db(transaction=True)
def test_callback_query_count(
    user: Any, make_credential: Callable[..., SliceCredential], slice_api: Any
) -> None:
    """Session, user, claim, link and session save: measured for a new link and a re-link."""
    client = Client()
    client.force_login(user)
    counts = {}
    for kind in ("new link", "re-link"):
        response = client.post("/slice/authorize/")
        state = parse_qs(urlsplit(response["Location"]).query)["state"][0]
        with CaptureQueriesContext(connection) as queries:
            response = client.get("/slice/callback/", {"code": "c", "state": state})
        assert response.status_code == 302
        counts[kind] = len(queries)
    print(f"\nCALLBACK queries ({connection.vendor}): {counts}")
    assert counts["new link"] <= 10 and counts["re-link"] <= 10


# -- where a second connection cannot write (SQLite), on any database -----------------------


@pytest.mark.django_db(transaction=True)
def test_without_an_own_connection_work_is_refused_or_runs_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(durable, "own_connection_possible", lambda using=DEFAULT_DB_ALIAS: False)
    ran: list[str] = []

    def work() -> str:
        ran.append(threading.current_thread().name)
        return "done"

    with transaction.atomic():
        with pytest.raises(Boom):
            durable.run_durably(work, refuse_on_sqlite=Boom)
        assert ran == []  # refused before the work started
        assert durable.run_durably(work) == "done"
    assert ran == [threading.current_thread().name]  # inline, in the caller's transaction


@pytest.mark.django_db(transaction=True)
def test_renewal_refused_where_it_cannot_commit_on_its_own(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What SQLite does, forced on any database: the typed error, nothing sent or stored."""
    from slice_connect.exceptions import RenewalInTransaction

    monkeypatch.setattr(durable, "own_connection_possible", lambda using=DEFAULT_DB_ALIAS: False)
    credential = make_credential(user)
    before = stored(credential.pk)
    with pytest.raises(RenewalInTransaction), transaction.atomic():
        services.renew(credential, force=True)
    assert token_calls(slice_api) == []
    assert stored(credential.pk) == before


@pytest.mark.django_db
def test_relink_with_the_same_refresh_token_revokes_nothing(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_credential(user, refresh_token="refresh-new-5")
    with django_capture_on_commit_callbacks(execute=True):
        services.link(user, tokens(5))
    assert revoked(slice_api) == []


@pytest.mark.django_db(transaction=True)
def test_link_retries_a_lost_insert_once_then_raises(
    user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import IntegrityError

    attempts: list[int] = []

    def always_taken(**kwargs: Any) -> SliceCredential:
        attempts.append(1)
        raise IntegrityError("duplicate key value violates unique constraint")

    monkeypatch.setattr(SliceCredential.objects, "create", always_taken)
    with pytest.raises(IntegrityError):
        services.link(user, tokens(6))
    assert len(attempts) == 2
    assert not SliceCredential.objects.filter(user=user).exists()


@pytest.mark.django_db
def test_a_hand_sent_post_delete_revokes_the_loaded_copy(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Without the pre_delete read (a signal sent by hand), the instance's own token."""
    credential = make_credential(user, refresh_token="refresh-loaded")
    partial = SliceCredential.objects.without_tokens().get(pk=credential.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.credential_deleted(SliceCredential, instance=credential)
        services.credential_deleted(SliceCredential, instance=partial)
    assert revoked(slice_api) == ["refresh-loaded"]
