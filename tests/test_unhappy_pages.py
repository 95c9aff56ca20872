"""The pages a person meets when linking does not happen: they look finished.

* "Deny" at Slice is the user's choice: a normal page (200), no WARNING in the site's logs.
* A broken or replayed callback stays a 4xx page; its actions are buttons.
* GET on unlink keeps answering 405 (POST only), with a confirmation page as its body.
* The admin list reads in words: labels, relative times, causes; never raw codes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from slice_connect.models import SliceCredential
from tests.conftest import REVOKE_URL, TOKEN_URL

pytestmark = pytest.mark.django_db

AUTHORIZE = "/slice/authorize/"
CALLBACK = "/slice/callback/"
UNLINK = "/slice/unlink/"
DENIED = "You chose not to give this site access to your Slice account."


@pytest.fixture
def slice_api(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    """Any request to Slice would be recorded (and refused): these pages make none."""
    mock = slice_mock
    mock.post(REVOKE_URL, status=200)
    return mock


@pytest.fixture
def client_for(db: Any) -> Callable[[Any], Client]:
    def make(user: Any) -> Client:
        client = Client()
        client.force_login(user)
        return client

    return make


def start(client: Client) -> str:
    response = client.post(AUTHORIZE)
    assert response.status_code == 302
    return parse_qs(urlsplit(response["Location"]).query)["state"][0]


def actions(html: str) -> list[tuple[str, str, str]]:
    """(tag, class, text) of each control in the page's action row."""
    (row,) = re.findall(r'class="slice-connect-actions">(.*?)</(?:p|div)>\s*\{?', html, re.S)[:1]
    found = []
    for tag, attrs, text in re.findall(r"<(a|button)\b([^>]*)>(.*?)</\1>", row, re.S):
        cls = re.search(r'class="([^"]*)"', attrs)
        found.append((tag, cls.group(1) if cls else "", text.strip()))
    return found


# -- deny ---------------------------------------------------------------------------------


def test_deny_is_a_normal_page_without_a_warning(
    user: Any,
    client_for: Callable[[Any], Client],
    slice_api: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = client_for(user)
    state = start(client)
    caplog.set_level(logging.DEBUG)
    response = client.get(CALLBACK, {"state": state, "error": "access_denied"})
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "no-referrer"
    body = response.content.decode()
    assert DENIED in body
    assert 'class="error"' not in body  # a choice, not an error
    assert actions(body) == [
        ("a", "button", "Try again"),
        ("a", "button secondary", "Not now"),
    ]
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert loud == [], [f"{r.name}: {r.getMessage()}" for r in loud]
    assert any("declined" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert not slice_api.calls
    assert not SliceCredential.objects.exists()
    # The state is spent: the same URL again is refused as a replay.
    again = client.get(CALLBACK, {"state": state, "error": "access_denied"})
    assert again.status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        {"error": "access_denied"},  # no state
        {"state": "unknown-state", "error": "access_denied"},
    ],
    ids=["no-state", "unknown-state"],
)
def test_deny_with_an_invalid_state_is_still_refused(
    user: Any,
    client_for: Callable[[Any], Client],
    slice_api: responses.RequestsMock,
    query: dict[str, str],
) -> None:
    client = client_for(user)
    start(client)
    response = client.get(CALLBACK, query)
    assert response.status_code == 400
    assert DENIED not in response.content.decode()


def test_expired_deny_is_still_refused(
    user: Any, client_for: Callable[[Any], Client], slice_api: responses.RequestsMock
) -> None:
    import time_machine

    client = client_for(user)
    state = start(client)
    with time_machine.travel(timezone.now() + timedelta(hours=1)):
        response = client.get(CALLBACK, {"state": state, "error": "access_denied"})
    assert response.status_code == 400


# -- error page ---------------------------------------------------------------------------


def test_error_page_actions_are_buttons(
    user: Any, client_for: Callable[[Any], Client], slice_api: responses.RequestsMock
) -> None:
    client = client_for(user)
    state = start(client)
    response = client.get(CALLBACK, {"state": state, "error": "server_error"})
    assert response.status_code == 400
    body = response.content.decode()
    assert 'class="error"' in body
    assert actions(body) == [
        ("a", "button", "Try again"),
        ("a", "button secondary", "Not now"),
    ]


def test_error_page_without_retry_still_has_a_button(
    user: Any, client_for: Callable[[Any], Client], slice_api: responses.RequestsMock
) -> None:
    slice_api.post(TOKEN_URL, status=401, json={"error": "invalid_client"})
    client = client_for(user)
    state = start(client)
    response = client.get(CALLBACK, {"state": state, "code": "c0de"})
    assert response.status_code == 502
    assert actions(response.content.decode()) == [
        ("a", "button secondary", "Back to the site"),
    ]


def test_authorize_page_offers_cancel(user: Any, client_for: Callable[[Any], Client]) -> None:
    response = client_for(user).get(AUTHORIZE, {"next": "/account/"})
    body = response.content.decode()
    assert actions(body) == [
        ("button", "", "Continue to Slice"),
        ("a", "button secondary", "Cancel"),
    ]
    assert 'href="/account/"' in body


# -- unlink on GET --------------------------------------------------------------------------


def test_unlink_get_is_a_405_confirmation_page(
    user: Any,
    make_credential: Callable[..., Any],
    client_for: Callable[[Any], Client],
    slice_api: responses.RequestsMock,
) -> None:
    credential = make_credential(user)
    response = client_for(user).get(UNLINK, {"next": "/account/"})
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    body = response.content.decode()
    assert "<h1>Unlink your Slice account?</h1>" in body
    (form,) = re.findall(r"<form\b.*?</form>", body, re.S)
    assert 'method="post"' in form and f'action="{UNLINK}"' in form
    assert 'name="csrfmiddlewaretoken"' in form
    assert '<input type="hidden" name="next" value="/account/">' in form
    assert actions(body) == [
        ("button", "danger", "Unlink"),
        ("a", "button secondary", "Cancel"),
    ]
    assert 'href="/account/"' in body
    assert SliceCredential.objects.filter(pk=credential.pk).exists()  # GET changed nothing
    assert not slice_api.calls


def test_unlink_confirmation_posts_through_csrf(
    user: Any, make_credential: Callable[..., Any], slice_api: responses.RequestsMock
) -> None:
    make_credential(user)
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get(UNLINK).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token
    response = client.post(UNLINK, {"csrfmiddlewaretoken": token.group(1)})
    assert response.status_code == 302
    assert not SliceCredential.objects.filter(user=user).exists()


def test_unlink_get_with_a_hostile_next_cancels_home(
    user: Any, make_credential: Callable[..., Any], client_for: Callable[[Any], Client]
) -> None:
    make_credential(user)
    body = client_for(user).get(UNLINK, {"next": "//evil.example/"}).content.decode()
    assert "evil.example" not in body
    assert 'href="/"' in body


def test_unlink_get_when_not_linked(user: Any, client_for: Callable[[Any], Client]) -> None:
    response = client_for(user).get(UNLINK)
    assert response.status_code == 405
    body = response.content.decode()
    assert "Your Slice account is not linked" in body
    assert "<form" not in body
    assert actions(body) == [("a", "button secondary", "Back to the site")]


def test_unlink_other_methods_stay_plain_405(
    user: Any, make_credential: Callable[..., Any], client_for: Callable[[Any], Client]
) -> None:
    make_credential(user)
    client = client_for(user)
    head = client.head(UNLINK)
    assert head.status_code == 405 and head["Allow"] == "POST"
    put = client.put(UNLINK)
    assert put.status_code == 405 and put["Allow"] == "POST"
    assert b"Unlink your Slice account" not in put.content
    assert SliceCredential.objects.filter(user=user).exists()


def test_unlink_get_needs_login(client: Client) -> None:
    response = client.get(UNLINK)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


# -- admin list -------------------------------------------------------------------------------


def test_admin_list_reads_in_words(
    admin_client: Client, make_user: Callable[..., Any], make_credential: Callable[..., Any]
) -> None:
    now = timezone.now()
    make_credential(
        make_user("healthy"),
        linked_at=now - timedelta(days=3),
        last_renewed_at=now - timedelta(hours=2),
        access_token_expires_at=now + timedelta(minutes=50, seconds=30),
        refresh_token_expires_at=now + timedelta(days=13, hours=1),
    )
    make_credential(
        make_user("broken"),
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.LOST_ROTATION,
        access_token_expires_at=now - timedelta(hours=5),
        refresh_token_expires_at=now - timedelta(days=1, hours=1),
        failure_count=3,
        last_error_code="invalid_grant",
        last_error_at=now - timedelta(minutes=10),
    )
    make_credential(
        make_user("flaky"),
        failure_count=2,
        last_error_code="http_503",
        last_error_at=now - timedelta(minutes=30),
    )
    response = admin_client.get(reverse("admin:slice_connect_slicecredential_changelist"))
    assert response.status_code == 200
    (table,) = re.findall(r'<table id="result_list">.*?</table>', response.content.decode(), re.S)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", table))
    for header in ("User", "Status", "Renewed", "Link expires", "Failures"):
        assert header in text
    assert "healthy Active 2 hours ago linked 3 days ago in 1 week none" in text
    assert "broken Needs re-link A rotated refresh token was lost in transit never" in text
    assert "expired 1 day ago 3 last: Slice refused the refresh token, 10 minutes ago" in text
    assert "2 last: Slice answered with HTTP 503, 30 minutes ago" in text
    for raw in ("needs_reauth", "lost_rotation", "invalid_grant", "http_503", "active "):
        assert raw not in text, raw
    # The exact time stays one hover away.
    assert re.search(r'<span title="[^"]*\d{4}[^"]*">linked 3\sdays ago</span>', table)


def test_describe_error() -> None:
    from slice_connect.display import describe_error, relative

    assert describe_error("") == ""
    assert describe_error("timeout") == "Slice did not answer in time"
    assert describe_error("http_429") == "Slice answered with HTTP 429"
    assert describe_error("something_new") == "Slice gave an unexpected answer"
    now = timezone.now()
    assert relative(None) == ""
    assert relative(now + timedelta(days=2, hours=3), now).replace("\xa0", " ") == "in 2 days"
    assert relative(now - timedelta(minutes=1), now).replace("\xa0", " ") == "1 minute ago"
    assert relative(now - timedelta(seconds=59), now) == "just now"
