"""Our views protect themselves whatever middleware the site runs.

A site may run without ``CsrfViewMiddleware`` or ``XFrameOptionsMiddleware``; the views
still refuse a POST without a CSRF token (nothing is sent to Slice, nothing changes), mark
every page that shows link state ``Cache-Control: no-store`` and refuse to be framed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
import responses
from django.test import Client
from django.urls import reverse

from slice_connect.models import SliceCredential
from tests.conftest import AUTHORIZE_URL, REVOKE_URL, TOKEN_URL

pytestmark = pytest.mark.django_db

UNPROTECTED = (
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)


@pytest.fixture(autouse=True)
def bare_middleware(settings: Any) -> None:
    """The site runs neither the CSRF nor the clickjacking middleware."""
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m not in UNPROTECTED]
    assert "django.contrib.sessions.middleware.SessionMiddleware" in settings.MIDDLEWARE


@pytest.fixture
def slice_api(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    """Slice, recording every request; nothing may reach it in a refused POST."""
    mock = slice_mock
    mock.post(REVOKE_URL, status=200)
    mock.post(TOKEN_URL, status=500)
    return mock


@pytest.fixture
def browser(user: Any) -> Client:
    """A logged-in client that enforces CSRF like a real browser request would be checked."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def csrf_token_of(html: str) -> str:
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert match, "no CSRF token in the form"
    return match.group(1)


def assert_no_store(response: Any) -> None:
    directives = {d.strip() for d in response.get("Cache-Control", "").split(",")}
    assert "no-store" in directives, (response.status_code, response.get("Cache-Control"))


def test_authorize_post_without_csrf_token_is_refused(
    browser: Client, slice_api: responses.RequestsMock
) -> None:
    response = browser.post(reverse("slice_connect:authorize"), {"next": "/after/"})
    assert response.status_code == 403
    assert "Location" not in response  # not sent on to Slice
    assert not any(key.startswith("slice_connect") for key in browser.session.keys())
    assert_no_store(response)
    assert list(slice_api.calls) == []


def test_authorize_post_with_the_pages_csrf_token_starts_the_flow(browser: Client) -> None:
    page = browser.get(reverse("slice_connect:authorize"))
    assert page.status_code == 200
    assert page.cookies.get("csrftoken"), "csrf_protect sets the cookie without the middleware"
    token = csrf_token_of(page.content.decode())
    response = browser.post(reverse("slice_connect:authorize"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert response["Location"].startswith(AUTHORIZE_URL)


def test_unlink_post_without_csrf_token_is_refused(
    browser: Client,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.post(reverse("slice_connect:unlink"))
    assert response.status_code == 403
    assert_no_store(response)
    assert SliceCredential.objects.filter(pk=credential.pk).exists()
    assert list(slice_api.calls) == []  # no revocation, nothing sent to Slice


def test_unlink_post_with_a_csrf_token_unlinks(
    browser: Client,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_api: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    make_credential(user)
    page = browser.get(reverse("slice_connect:authorize"))  # any of our pages hands one out
    token = csrf_token_of(page.content.decode())
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.post(reverse("slice_connect:unlink"), {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert_no_store(response)
    assert not SliceCredential.objects.filter(user=user).exists()


def test_confirmation_page_refuses_framing_and_caching(
    browser: Client, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    make_credential(user)  # the page then shows the link's state
    response = browser.get(reverse("slice_connect:authorize"))
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"
    assert_no_store(response)


def test_login_redirect_of_the_confirmation_page_is_not_cached(client: Client) -> None:
    response = client.get(reverse("slice_connect:authorize"))
    assert response.status_code == 302
    assert_no_store(response)
    assert response["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "query",
    [{}, {"state": "unknown-state", "code": "some-code"}, {"state": "x", "error": "access_denied"}],
    ids=["no-state", "unknown-state", "error"],
)
def test_callback_pages_are_not_cached_or_framed(browser: Client, query: dict[str, str]) -> None:
    response = browser.get(reverse("slice_connect:callback"), query)
    assert 200 <= response.status_code < 500
    assert_no_store(response)
    assert response["X-Frame-Options"] == "DENY"


def test_unlink_pages_are_not_cached_or_framed(browser: Client) -> None:
    # GET is not allowed (405), whatever page comes with that answer.
    page = browser.get(reverse("slice_connect:unlink"))
    assert page.status_code == 405
    assert_no_store(page)
    assert page["X-Frame-Options"] == "DENY"
