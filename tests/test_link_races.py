"""The link's state stays true around the locked renewal, on PostgreSQL against the sandbox.

* Renewals commit on their own: a renewal inside a caller's transaction (``ATOMIC_REQUESTS``,
  an explicit ``atomic()``) that then rolls back keeps the rotated refresh token.
* Unlink, the admin's delete, ``QuerySet.delete()`` and user deletion racing a renewal
  revoke the token that is live when the row goes: afterwards the provider holds no live
  token for that link.
* A re-link revokes the refresh token it replaces.
* One code, one redemption: concurrent callbacks with one state reach the token endpoint
  once.

The sandbox (django-oauth-toolkit) rotates strictly (no grace period), so a lost rotation
shows up as ``invalid_grant``; its token tables live in the test database, so the tests
count live tokens there. Run with ``-s`` to see the figures (``RACE ...`` lines).
(docs/threat-model.rst R47, R48, R49.)
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import path, reverse
from django.utils import timezone

from example_project.slice_sandbox.models import TokenRequest
from slice_connect import services
from slice_connect.client import SliceClient
from slice_connect.exceptions import NeedsReauth
from slice_connect.models import SliceCredential

from .conftest import SliceServer
from .flow import consent, start_link
from .helpers import sql_kind
from .urls import urlpatterns as site_urlpatterns
from .workers import link_all, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

#: Long enough for the test to act while a renewal's POST is at the server.
SLOW_REFRESH_SECONDS = 1.5


class Boom(Exception):
    """The caller's own failure after it renewed."""


# -- the view of a site with ATOMIC_REQUESTS ------------------------------------------------


def renew_then_fail(request: HttpRequest) -> HttpResponse:
    """A site's view: calls Slice through SliceClient (which renews), then fails."""
    with SliceClient(request.user) as client:
        client.get("users/self")
    raise Boom("the site's view failed after calling Slice")


#: ``ROOT_URLCONF`` of the ATOMIC_REQUESTS test: the test site plus that view.
urlpatterns = [path("renew-then-fail/", renew_then_fail), *site_urlpatterns]


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def sandbox(slice_server: SliceServer, settings: Any) -> SliceServer:
    """The sandbox with strict rotation and immediate answers."""
    settings.SLICE_SANDBOX = {**settings.SLICE_SANDBOX, "GRACE_SECONDS": 0}
    assert settings.OAUTH2_PROVIDER["REFRESH_TOKEN_GRACE_PERIOD_SECONDS"] == 0
    return slice_server


@pytest.fixture
def linked(
    sandbox: SliceServer, browser_session: Any, make_user: Callable[..., Any]
) -> Callable[[], tuple[Any, SliceCredential, Any]]:
    """Link a new user through the real flow; return (user, credential, Slice account).

    The provider's tokens are moved to a separate account user, as at Slice, where the
    account is not the site's user; otherwise deleting the site's user would delete the
    sandbox's tokens by cascade and prove nothing.
    """

    def make() -> tuple[Any, SliceCredential, Any]:
        from oauth2_provider.models import AccessToken, Grant, RefreshToken

        user = make_user()
        link_all(sandbox.url, [browser_session(user)])
        account = get_user_model().objects.create_user(username=f"slice-{user.username}")
        for model in (AccessToken, RefreshToken, Grant):
            model.objects.filter(user=user).update(user=account)
        return user, SliceCredential.objects.get(user=user), account

    return make


def live_tokens(server: SliceServer, account: Any) -> dict[str, int]:
    """Tokens the provider still honours for ``account`` (revoked access tokens are deleted)."""
    from oauth2_provider.models import AccessToken, RefreshToken

    mine = {"application__client_id": server.client_id, "user": account}
    return {
        "refresh": RefreshToken.objects.filter(revoked__isnull=True, **mine).count(),
        "access": AccessToken.objects.filter(expires__gt=timezone.now(), **mine).count(),
    }


def refresh_token_live(token: str) -> bool:
    from oauth2_provider.models import RefreshToken

    checksum = hashlib.sha256(token.encode()).hexdigest()  # how DOT looks tokens up
    return RefreshToken.objects.filter(token_checksum=checksum, revoked__isnull=True).exists()


def refreshes() -> Any:
    return TokenRequest.objects.refreshes()


def api_self(server: SliceServer, access_token: str) -> int:
    response = requests.get(
        f"{server.url}/api/v1/users/self",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    return response.status_code


def expire_access_token(pk: int) -> None:
    past = timezone.now() - timedelta(minutes=5)
    SliceCredential.objects.filter(pk=pk).update(access_token_expires_at=past)


def renewal_posting() -> bool:
    """Whether another session holds a credential row lock in an open, idle transaction.

    That is a renewal's second phase waiting for the token endpoint: its last statement
    was the ``SELECT ... FOR UPDATE`` of the credential.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'idle in transaction' "
            "AND query ILIKE %s AND query ILIKE %s",
            ["%FOR UPDATE%", f"%{SliceCredential._meta.db_table}%"],
        )
        return bool(cursor.fetchone()[0])


@pytest.fixture
def helper_backends() -> Iterator[list[int]]:
    """PostgreSQL backend pids of the connections opened by slice_connect's helper threads."""
    from django.db.backends.signals import connection_created

    from slice_connect.durable import THREAD_NAME

    pids: list[int] = []

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread().name == THREAD_NAME:
            pids.append(connection.connection.info.backend_pid)

    connection_created.connect(created, weak=False)
    yield pids
    connection_created.disconnect(created)


def backend_alive(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
        return bool(cursor.fetchone()[0])


# -- 1. renewals commit on their own --------------------------------------------------------


def test_renewal_in_an_atomic_requests_view_survives_the_views_failure(
    sandbox: SliceServer, linked: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, credential, _account = linked()
    expire_access_token(credential.pk)
    settings.ROOT_URLCONF = __name__
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    client = Client()
    client.force_login(user)

    with pytest.raises(Boom):
        client.get("/renew-then-fail/")

    row = SliceCredential.objects.get(pk=credential.pk)
    kept = row.version == credential.version + 1 and row.refresh_token != credential.refresh_token
    # The next renewal (forced) uses the stored refresh token at a strictly rotating server.
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", False)
    try:
        services.renew(row, force=True)
        outcome = "renewed"
    except NeedsReauth as exc:
        outcome = f"needs_reauth ({exc.reason})"
    print(f"\nRACE atomic_requests rotation_kept={kept} next_forced_renewal={outcome}")
    assert kept, "the rotation was rolled back with the view's transaction"
    assert outcome == "renewed"
    assert refreshes().succeeded().count() == 2 and refreshes().failed().count() == 0
    assert api_self(sandbox, str(row.access_token)) == 200


def test_renewal_in_an_explicit_atomic_block_survives_its_rollback(
    sandbox: SliceServer, linked: Any, helper_backends: list[int]
) -> None:
    _user, credential, account = linked()

    with pytest.raises(Boom), transaction.atomic():
        services.renew(credential, force=True)
        # The caller's instance is updated in place, as outside a transaction.
        assert credential.version == 2 and isinstance(credential.access_token, str)
        renewed_access = credential.access_token
        raise Boom

    # It ran on a connection of its own, closed afterwards.
    assert (
        len(helper_backends) == 1 and helper_backends[0] != connection.connection.info.backend_pid
    )
    wait_until(lambda: not backend_alive(helper_backends[0]), timeout=10, what="it to close")
    row = SliceCredential.objects.get(pk=credential.pk)
    assert row.version == 2 and row.access_token == renewed_access
    assert row.renewal_started_at is None
    services.renew(row, force=True)
    assert row.version == 3
    assert refreshes().succeeded().count() == 2 and refreshes().failed().count() == 0
    assert api_self(sandbox, str(row.access_token)) == 200
    assert live_tokens(sandbox, account) == {"refresh": 1, "access": 1}


def test_a_failure_recorded_inside_an_atomic_block_is_kept(
    sandbox: SliceServer, linked: Any
) -> None:
    """Slice refusing the token marks the link for good, even if the caller rolls back."""
    from oauth2_provider.models import RefreshToken

    _user, credential, account = linked()
    RefreshToken.objects.filter(user=account).update(revoked=timezone.now())

    with pytest.raises(NeedsReauth), transaction.atomic():
        services.renew(credential, force=True)
    assert credential.status == SliceCredential.Status.NEEDS_REAUTH

    row = SliceCredential.objects.get(pk=credential.pk)
    assert row.status == SliceCredential.Status.NEEDS_REAUTH
    assert row.status_reason == SliceCredential.Reason.INVALID_GRANT
    assert refreshes().count() == 1


# -- 2. deleting a link while it renews ------------------------------------------------------


def _delete(how: str, user: Any, credential: SliceCredential, make_user: Any) -> None:
    if how == "unlink_view":
        client = Client()
        client.force_login(user)
        response = client.post(reverse("slice_connect:unlink"))
        assert response.status_code == 302
    elif how == "admin_delete":
        admin = make_user(is_staff=True, is_superuser=True)
        client = Client()
        client.force_login(admin)
        response = client.post(
            reverse("admin:slice_connect_slicecredential_changelist"),
            {"action": "delete_selected", "_selected_action": [str(credential.pk)], "post": "yes"},
        )
        assert response.status_code == 302
    elif how == "user_delete":
        user.delete()
    elif how == "queryset_delete":
        SliceCredential.objects.filter(pk=credential.pk).delete()
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["unlink_view", "admin_delete", "user_delete", "queryset_delete"])
def test_deleting_a_link_during_its_renewal_revokes_the_live_token(
    how: str, sandbox: SliceServer, linked: Any, settings: Any, make_user: Any
) -> None:
    user, credential, account = linked()
    assert live_tokens(sandbox, account) == {"refresh": 1, "access": 1}
    settings.SLICE_SANDBOX = {
        **settings.SLICE_SANDBOX,
        "GRACE_SECONDS": 0,
        "TOKEN_DELAY_SECONDS": SLOW_REFRESH_SECONDS,
    }
    outcome: dict[str, Any] = {}

    def renew() -> None:
        try:
            outcome["result"] = services.renew_by_id(credential.pk, force=True)
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            connection.close()

    renewal = threading.Thread(target=renew, daemon=True)
    renewal.start()

    # Wait until the renewal holds the row lock and waits for Slice's (slow) answer.
    wait_until(renewal_posting, timeout=30, what="the renewal to lock the row and post")
    started = time.perf_counter()
    _delete(how, user, credential, make_user)
    waited = time.perf_counter() - started
    renewal.join(timeout=60)
    assert not renewal.is_alive()

    left = live_tokens(sandbox, account)
    print(f"\nRACE delete_during_renewal how={how} waited={waited:.2f}s live_tokens_left={left}")
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["result"].renewed, "the renewal did not run before the delete"
    assert refreshes().succeeded().count() == 1
    assert not SliceCredential.objects.filter(pk=credential.pk).exists()
    assert left == {"refresh": 0, "access": 0}


# -- 3. re-link revokes the token it replaces ----------------------------------------------


def test_relink_revokes_the_refresh_token_it_replaces(
    sandbox: SliceServer, linked: Any, browser_session: Any
) -> None:
    from oauth2_provider.models import AccessToken, RefreshToken

    user, credential, account = linked()
    old_refresh = str(credential.refresh_token)
    assert refresh_token_live(old_refresh)

    link_all(sandbox.url, [browser_session(user)])
    new_account_tokens = {"user": user, "application__client_id": sandbox.client_id}
    row = SliceCredential.objects.get(user=user)

    old_live = refresh_token_live(old_refresh)
    left = live_tokens(sandbox, account)
    print(f"\nRACE relink old_refresh_live={old_live} old_grant_live_tokens={left}")
    assert row.pk == credential.pk and row.version == credential.version + 1
    assert row.refresh_token != old_refresh
    assert not old_live
    assert left == {"refresh": 0, "access": 0}
    # The new link works.
    assert refresh_token_live(str(row.refresh_token))
    assert RefreshToken.objects.filter(revoked__isnull=True, **new_account_tokens).count() == 1
    assert AccessToken.objects.filter(**new_account_tokens).count() == 1
    assert api_self(sandbox, str(row.access_token)) == 200


# -- 4. one code, one redemption ----------------------------------------------------------


def _callback_url(server: SliceServer, session: requests.Session) -> str:
    return consent(session, start_link(session, server.url), allow=True)


def _session_key(session: requests.Session) -> str:
    # The fixture's cookie and the server's Set-Cookie (another domain key) hold one value.
    (key,) = {c.value for c in session.cookies if c.name == django_settings.SESSION_COOKIE_NAME}
    return str(key)


@pytest.mark.parametrize("atomic_requests", [False, True], ids=["autocommit", "atomic_requests"])
def test_concurrent_callbacks_with_one_code_redeem_it_once(
    atomic_requests: bool,
    sandbox: SliceServer,
    browser_session: Any,
    make_user: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requests_at_once = 8
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", atomic_requests)
    user = make_user()
    session = browser_session(user)
    callback = _callback_url(sandbox, session)
    cookie = _session_key(session)
    barrier = threading.Barrier(requests_at_once)
    answers: list[requests.Response] = []
    errors: list[BaseException] = []

    def reload() -> None:
        try:
            with requests.Session() as tab:
                tab.cookies.set(django_settings.SESSION_COOKIE_NAME, cookie)
                barrier.wait(timeout=30)
                answers.append(tab.get(callback, allow_redirects=False, timeout=30))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reload, daemon=True) for _ in range(requests_at_once)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    redemptions = sandbox.token_requests("authorization_code")
    statuses = sorted(a.status_code for a in answers)
    print(
        f"\nRACE callbacks requests={requests_at_once} atomic_requests={atomic_requests} "
        f"redemptions={redemptions} statuses={statuses}"
    )
    assert errors == []
    assert redemptions == 1
    assert SliceCredential.objects.filter(user=user).count() == 1
    assert statuses.count(302) == 1
    losers = [a for a in answers if a.status_code != 302]
    assert all(a.status_code in (400, 409) for a in losers)
    for answer in losers:
        assert "already used" in answer.text
        assert answer.headers["Cache-Control"] == "no-store"
    # The winner's link works.
    row = SliceCredential.objects.get(user=user)
    assert api_self(sandbox, str(row.access_token)) == 200


def test_callback_query_count(
    sandbox: SliceServer, browser_session: Any, make_user: Callable[..., Any]
) -> None:
    """The callback's own queries (session, user, claim, link), the code exchange over HTTP."""
    user = make_user()
    session = browser_session(user)
    callback = _callback_url(sandbox, session)
    client = Client()
    client.cookies[django_settings.SESSION_COOKIE_NAME] = _session_key(session)
    parts = urlsplit(callback)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302
    kinds = [sql_kind(query["sql"]) for query in queries.captured_queries]
    print(f"\nRACE callback_queries={len(queries)} (PostgreSQL, new link): {', '.join(kinds)}")
    assert len(queries) <= 10, kinds


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    stray = [t for t in threading.enumerate() if t.name.startswith("slice-connect-")]
    assert stray == [], f"helper threads still running: {stray}"


def test_concurrent_first_links_of_one_user_leave_one_row_and_revoke_the_replaced(
    make_user: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Two tabs finishing a first link at once: no row to lock, so both insert; one retries."""
    import responses

    from slice_connect import oauth, signals

    from .test_concurrency import describe, race

    tabs = 6
    user = make_user()
    linked_created: list[bool] = []

    def on_linked(sender: Any, created: bool, **kwargs: Any) -> None:
        linked_created.append(created)

    def tokens(i: int) -> oauth.TokenSet:
        return oauth.TokenSet(
            access_token=f"access-{i}",
            refresh_token=f"refresh-{i}",
            token_type="bearer",
            expires_in=3600,
            received_at=timezone.now(),
        )

    signals.credential_linked.connect(on_linked, weak=False)
    try:
        with responses.RequestsMock() as mock:
            mock.post("https://slice.test/oauth/revoke", status=200)
            outcome = race(tabs, lambda i: services.link(user, tokens(i)).pk)
            revoked = [
                dict(p.split("=") for p in str(c.request.body).split("&"))["token"]
                for c in mock.calls
            ]
    finally:
        signals.credential_linked.disconnect(on_linked)

    retries = caplog.text.count("linked by a concurrent request")
    print(f"\nRACE first_links tabs={tabs} integrity_retries={retries} revoked={len(revoked)}")
    assert outcome.errors == [], describe(outcome.errors)
    row = SliceCredential.objects.get(user=user)
    assert set(outcome.results.values()) == {row.pk}
    assert row.version == tabs
    assert sorted(linked_created) == [False] * (tabs - 1) + [True]
    # Every replaced refresh token was revoked; the stored one was not.
    assert len(revoked) == tabs - 1
    assert sorted([*revoked, row.refresh_token]) == sorted(f"refresh-{i}" for i in range(tabs))
