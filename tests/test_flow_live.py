"""The link flow end to end over real HTTP against django-oauth-toolkit (the sandbox)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from slice_connect import signals
from slice_connect.client import SliceClient
from slice_connect.models import SliceCredential

from .conftest import query_of
from .flow import consent, link, start_link

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def linked_events() -> Any:
    events: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        events.append(kwargs)

    signals.credential_linked.connect(receiver, weak=False)
    yield events
    signals.credential_linked.disconnect(receiver)


def test_link_flow_against_real_oauth_server(
    slice_server: Any, user: Any, browser_session: Any, linked_events: list[dict[str, Any]]
) -> None:
    session = browser_session(user)
    authorize_url = start_link(session, slice_server.url, next_url="/after/")
    params = query_of(authorize_url)
    assert authorize_url.startswith(f"{slice_server.url}/oauth/authorize?")
    assert params["client_id"] == [slice_server.client_id]
    assert params["response_type"] == ["code"]
    assert params["redirect_uri"] == [slice_server.redirect_uri]
    assert params["code_challenge_method"] == ["S256"]
    assert len(params["state"][0]) >= 43
    assert "scope" not in params

    callback_url = consent(session, authorize_url, allow=True)
    assert callback_url.startswith(slice_server.redirect_uri)
    response = session.get(callback_url, allow_redirects=False, timeout=30)

    assert response.status_code == 302
    assert response.headers["Location"] == "/after/"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert slice_server.token_requests("authorization_code") == 1

    credential = SliceCredential.objects.get(user=user)
    assert credential.is_active
    assert [e["created"] for e in linked_events] == [True]
    assert linked_events[0]["user"] == user

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT access_token, refresh_token FROM slice_connect_slicecredential WHERE id = %s",
            [credential.pk],
        )
        raw = cursor.fetchone()
    for value, plain in zip(raw, (credential.access_token, credential.refresh_token), strict=True):
        stored = bytes(value)
        assert stored.startswith(b"gAAAAA")
        assert plain.encode() not in stored

    # The token works at the server's protected API.
    body = SliceClient(user).get("users/self")
    assert "result" in body and "currentTime" in body

    # Linking again replaces both tokens.
    old_access, old_refresh = credential.access_token, credential.refresh_token
    assert link(session, slice_server.url).status_code == 302
    credential.refresh_from_db()
    assert credential.access_token != old_access
    assert credential.refresh_token != old_refresh
    assert [e["created"] for e in linked_events] == [True, False]


def test_deny_shows_error_page_and_stores_nothing(
    slice_server: Any, user: Any, browser_session: Any
) -> None:
    session = browser_session(user)
    callback_url = consent(session, start_link(session, slice_server.url), allow=False)
    assert query_of(callback_url)["error"] == ["access_denied"]
    response = session.get(callback_url, allow_redirects=False, timeout=30)
    assert response.status_code == 200  # the user's choice: a normal page, not an error
    assert "chose not to give this site access" in response.text
    assert "Try again" in response.text
    assert slice_server.token_requests() == 0
    assert not SliceCredential.objects.exists()
