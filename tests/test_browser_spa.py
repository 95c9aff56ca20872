"""The example project's single-page link page in Chromium: only ``fetch()`` to the JSON API.

Log in, open ``/spa/``, connect Slice (the sandbox's consent page, then back to the page
through ``next``), see the status, unlink. Every request the page makes to
``/slice/api/`` must be a ``fetch()``, and it never loads the HTML authorize or unlink
views. Screenshots of each step land in ``test-artifacts/browser/<test>/``.
"""

# ruff: noqa: F811  (test_browser's fixtures are imported by name, then requested by name)

from __future__ import annotations

import re
from typing import Any

import pytest

from slice_connect.models import SliceCredential

from .test_browser import (  # noqa: F401
    PASSWORD,
    Steps,
    allow_orm_beside_playwright,
    chromium,
    example_pages,
    page,
    steps,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.urls_example"),
]

API = "/slice/api/"
HTML_VIEWS = ("/slice/authorize/", "/slice/unlink/")


class Traffic:
    """Every request the page sends to our site (not the sandbox's OAuth pages)."""

    def __init__(self, page: Any, base: str) -> None:
        self.base = base
        self.requests: list[tuple[str, str, str]] = []
        page.on("request", self.record)

    def record(self, request: Any) -> None:
        path = request.url[len(self.base) :] if request.url.startswith(self.base) else ""
        if path.startswith("/slice/"):
            self.requests.append((request.method, path.split("?")[0], request.resource_type))

    def api_calls(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _kind in self.requests if path.startswith(API)]

    def assert_only_fetch(self) -> None:
        for method, path, kind in self.requests:
            assert not path.startswith(HTML_VIEWS), (method, path)
            if path.startswith(API):
                assert kind == "fetch", (method, path, kind)


def open_spa(page: Any, base: str, user: Any, steps: Steps) -> None:
    page.goto(f"{base}/spa/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{base}/spa/")


def status_is(page: Any, text: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#spa-status")).to_have_text(text)


def test_spa_links_shows_status_and_unlinks(
    page: Any, slice_server: Any, user: Any, example_pages: None, steps: Steps
) -> None:
    base = slice_server.url
    traffic = Traffic(page, base)
    open_spa(page, base, user, steps)
    status_is(page, "Not linked")
    assert page.locator("#spa-connect").is_visible()
    assert not page.locator("#spa-unlink").is_visible()
    assert not page.locator("#spa-details").is_visible()
    steps.shot(page, "spa-not-linked")

    page.click("#spa-connect")
    page.wait_for_url(re.compile(re.escape(f"{base}/oauth/authorize") + r"\?"))
    assert "to access your Slice account?" in page.inner_text("h1")
    steps.shot(page, "sandbox-consent")
    page.click("button:has-text('Allow')")

    # The callback honours the next the page sent: back on /spa/, which asks for the status.
    page.wait_for_url(f"{base}/spa/")
    status_is(page, "Linked")
    credential = SliceCredential.objects.get(user=user)
    assert credential.is_active
    assert page.inner_text("#spa-linked-at") == credential.linked_at.strftime(
        "%Y-%m-%d %H:%M:%S UTC"
    )
    assert page.inner_text("#spa-refresh-expires") == (
        credential.refresh_token_expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    )
    assert page.inner_text("#spa-last-renewed") == "not yet"
    assert page.locator("#spa-unlink").is_visible()
    assert not page.locator("#spa-connect").is_visible()
    html = page.content()
    for value in (credential.access_token, credential.refresh_token, slice_server.client_secret):
        assert value not in html
    steps.shot(page, "spa-linked")

    with page.expect_response(lambda r: r.url == f"{base}{API}unlink/") as answer:
        page.click("#spa-unlink")
    assert answer.value.status == 200
    status_is(page, "Not linked")
    assert page.url == f"{base}/spa/"  # no navigation: the page itself updated
    assert page.inner_text("#spa-message") == "Your Slice account is no longer linked."
    assert page.locator("#spa-connect").is_visible()
    steps.shot(page, "spa-unlinked")
    assert not SliceCredential.objects.filter(user=user).exists()

    traffic.assert_only_fetch()
    assert traffic.api_calls() == [
        ("GET", f"{API}status/"),
        ("POST", f"{API}authorize/"),
        ("GET", f"{API}status/"),
        ("POST", f"{API}unlink/"),
        ("GET", f"{API}status/"),
    ]


def test_spa_offers_reconnect_when_the_link_needs_reauth(
    page: Any,
    slice_server: Any,
    user: Any,
    example_pages: None,
    steps: Steps,
    make_credential: Any,
) -> None:
    make_credential(
        user,
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.LOST_ROTATION,
    )
    base = slice_server.url
    traffic = Traffic(page, base)
    open_spa(page, base, user, steps)
    status_is(page, "Needs re-link")
    assert page.inner_text("#spa-reason") == "(a rotated refresh token was lost in transit)"
    assert page.inner_text("#spa-connect") == "Reconnect Slice"
    assert page.locator("#spa-unlink").is_visible()
    steps.shot(page, "spa-needs-relink")

    page.click("#spa-connect")
    page.wait_for_url(re.compile(re.escape(f"{base}/oauth/authorize") + r"\?"))
    page.click("button:has-text('Allow')")
    page.wait_for_url(f"{base}/spa/")
    status_is(page, "Linked")
    assert page.inner_text("#spa-reason") == ""
    steps.shot(page, "spa-relinked")
    assert SliceCredential.objects.get(user=user).is_active
    traffic.assert_only_fetch()
