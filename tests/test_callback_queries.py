"""At most 10 queries per callback: session and auth included, the single-use claim included.

The request runs as in production: Django's database session backend, the real session and
authentication middleware, autocommit (a ``transaction=True`` test, so the claim and the
link commit as they would, not as savepoints of a test transaction), PostgreSQL when
``DATABASE_URL`` points at it. Only the token endpoint is mocked (``responses``).
Transaction control (``BEGIN``, ``COMMIT``, savepoints) counts as queries, as Django
records it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import responses
from django.conf import settings as django_settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from slice_connect.models import CallbackClaim, SliceCredential
from tests.conftest import REVOKE_URL, TOKEN_URL
from tests.helpers import sql_kind as kind

MAX_QUERIES = 10


def test_kind_shows_no_values() -> None:
    sql = (
        'INSERT INTO "slice_connect_callbackclaim" ("state_hash", "claimed_at") '
        "VALUES ('c38c8a8def-secret', '2026-12-02') RETURNING id"
    )
    assert kind(sql) == "INSERT slice_connect_callbackclaim"
    assert kind('UPDATE "django_session" SET "session_data" = \'FROM x\'') == (
        "UPDATE django_session"
    )
    assert kind('SELECT "a"."id" FROM "t" WHERE "a"."id" = 1 FOR UPDATE') == "SELECT t FOR UPDATE"
    assert kind("BEGIN") == "BEGIN"


@pytest.fixture
def browser(user: Any, settings: Any) -> Client:
    """``user`` logged in, the session stored in the database."""
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    assert "django.contrib.auth.middleware.AuthenticationMiddleware" in settings.MIDDLEWARE
    assert "django.contrib.sessions.middleware.SessionMiddleware" in settings.MIDDLEWARE
    assert not settings.DATABASES["default"].get("ATOMIC_REQUESTS")
    client = Client()
    client.force_login(user)
    return client


def _callback(browser: Client) -> str:
    """Start a link through the authorize view; the callback URL Slice would send back."""
    start = browser.post("/slice/authorize/")
    assert start.status_code == 302
    state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
    return f"/slice/callback/?{urlencode({'state': state, 'code': 'a-code'})}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("linked_before", [False, True], ids=["new link", "re-link"])
def test_callback_makes_at_most_10_queries(
    browser: Client,
    user: Any,
    make_credential: Any,
    slice_mock: responses.RequestsMock,
    linked_before: bool,
) -> None:
    if linked_before:
        make_credential(user)
    slice_mock.post(
        TOKEN_URL,
        json={
            "access_token": "query-count-access",
            "refresh_token": "query-count-refresh",
            "token_type": "bearer",
            "expires_in": 3600,
        },
    )
    slice_mock.post(REVOKE_URL, status=200)  # a re-link revokes the replaced token
    callback = _callback(browser)
    assert browser.cookies[django_settings.SESSION_COOKIE_NAME].value

    with CaptureQueriesContext(connection) as queries:
        response = browser.get(callback)

    kinds = [kind(query["sql"]) for query in queries.captured_queries]
    listing = "\n".join(f"  {n}. {k}" for n, k in enumerate(kinds, 1))
    report = f"{len(kinds)} queries on {connection.vendor}:\n{listing}"
    print(report)  # kinds only: shown with -s, or under a failure
    # The callback did its whole job: claimed the state, linked, went on.
    assert response.status_code == 302, report
    assert CallbackClaim.objects.count() == 1
    assert SliceCredential.objects.get(user=user).access_token == "query-count-access"
    assert "INSERT slice_connect_callbackclaim" in kinds, report
    assert kinds[:2] == ["SELECT django_session", f"SELECT {user._meta.db_table}"], report
    assert len(kinds) <= MAX_QUERIES, report
