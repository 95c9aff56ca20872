"""The unhappy-path pages and the admin list in real Chromium (screenshots in test-artifacts).

"Deny" ends on a finished page with buttons; a person who opens the unlink URL sees a
confirmation page and unlinks with one click; the admin list fits a 1280 px window.
"""

# ruff: noqa: F811  (test_browser's fixtures are imported by name, then requested by name)

from __future__ import annotations

import mimetypes
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import django.contrib.admin
import pytest
from django.conf import settings
from django.utils import timezone

from slice_connect.models import SliceCredential

from .test_browser import (  # noqa: F401
    Steps,
    allow_orm_beside_playwright,
    chromium,
    deny,
    example_pages,
    log_in,
    page,
    steps,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.urls_example"),
]


def looks_like_a_button(page: Any, selector: str) -> None:
    """Visible, with a filled or outlined box, not an underlined text link."""
    element = page.locator(selector)
    assert element.is_visible()
    style = element.evaluate(
        "e => { const s = getComputedStyle(e);"
        " return [s.display, s.borderTopStyle, s.textDecorationLine, s.paddingTop]; }"
    )
    display, border, decoration, padding = style
    assert display in ("inline-block", "block", "inline-flex", "flex"), style
    assert border != "none" and decoration == "none" and padding != "0px", style


def serve_admin_static(page: Any) -> None:
    """Answer /static/admin/... from Django's own files (the test settings have no staticfiles
    app, so the live server does not serve them, and the admin without its CSS proves nothing).
    """
    root = Path(django.contrib.admin.__file__).resolve().parent / "static"

    def fulfil(route: Any) -> None:
        path = urlsplit(route.request.url).path.removeprefix(settings.STATIC_URL)
        target = (root / path).resolve()
        if root in target.parents and target.is_file():
            kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            route.fulfill(status=200, body=target.read_bytes(), content_type=kind)
        else:
            route.fulfill(status=404, body=b"")

    page.route(f"**{settings.STATIC_URL}**", fulfil)


def test_deny_page_has_buttons(
    page: Any, slice_server: Any, user: Any, example_pages: None, steps: Steps
) -> None:
    deny(page, slice_server, user, steps)
    assert "You chose not to give this site access" in page.inner_text("main")
    looks_like_a_button(page, "a:has-text('Try again')")
    looks_like_a_button(page, "a:has-text('Not now')")
    steps.shot(page, "denied")
    page.click("a:has-text('Not now')")
    page.wait_for_url(f"{slice_server.url}/")
    assert not SliceCredential.objects.exists()


def test_unlink_url_opened_in_the_browser_confirms_first(
    page: Any,
    slice_server: Any,
    user: Any,
    make_credential: Any,
    example_pages: None,
    steps: Steps,
) -> None:
    base = slice_server.url
    make_credential(user)
    log_in(page, base, user, steps)
    response = page.goto(f"{base}/slice/unlink/")
    assert response is not None and response.status == 405
    assert page.inner_text("h1") == "Unlink your Slice account?"
    looks_like_a_button(page, "button:has-text('Unlink')")
    looks_like_a_button(page, "a:has-text('Cancel')")
    steps.shot(page, "unlink-confirmation")
    assert SliceCredential.objects.filter(user=user).exists()
    page.click("button:has-text('Unlink')")
    page.wait_for_url(f"{base}/")
    assert "Your Slice account is no longer linked." in page.inner_text(".messages")
    steps.shot(page, "unlinked")
    assert not SliceCredential.objects.filter(user=user).exists()


def test_admin_list_fits_1280_px(
    page: Any, live_server: Any, make_user: Any, make_credential: Any, steps: Steps
) -> None:
    now = timezone.now()
    admin = make_user("admin", is_staff=True, is_superuser=True)
    make_credential(make_user("healthy-user-with-a-long-name"), last_renewed_at=now)
    make_credential(
        make_user("lost"),
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.LOST_ROTATION,
        refresh_token_expires_at=now - timedelta(days=2),
        access_token_expires_at=now - timedelta(days=16),
        failure_count=12,
        last_error_code="response_too_large",
        last_error_at=now - timedelta(hours=3),
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    serve_admin_static(page)
    page.goto(f"{live_server.url}/admin/login/?next=/admin/slice_connect/slicecredential/")
    page.fill("#id_username", admin.get_username())
    page.fill("#id_password", "pw")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/slice_connect/slicecredential/")
    table = page.inner_text("#result_list").replace("\xa0", " ")
    assert "Needs re-link" in table and "A rotated refresh token was lost in transit" in table
    assert "last: Slice's answer was too large" in table
    assert "expired 2 days ago" in table
    assert "response_too_large" not in table and "lost_rotation" not in table
    # The admin's own stylesheet is applied: the filters sit beside the list, not under it.
    filters = page.locator("#changelist-filter").bounding_box()
    results = page.locator("#result_list").bounding_box()
    assert filters and results and filters["x"] >= results["x"] + results["width"]
    steps.shot(page, "admin-list-1280")
    # Nothing is cut off: neither the page nor the list's own box scrolls sideways.
    width = page.evaluate("document.documentElement.scrollWidth")
    clipped = page.locator("#changelist .results").evaluate("e => e.scrollWidth - e.clientWidth")
    assert clipped <= 0, clipped
    assert width <= 1280, width
