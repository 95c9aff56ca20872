"""The example project's pages in a real browser: Chromium driven by Playwright.

Log in, connect Slice, answer the sandbox's consent page and come back linked with the
user's orders; unlink; and deny consent to reach the error page. A screenshot of every
step is saved under ``test-artifacts/browser/<test>/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from example_project.slice_sandbox.data import build_dataset
from slice_connect.models import SliceCredential

from .conftest import CHROMIUM, service_missing

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.urls("tests.urls_example"),
]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
EXAMPLE_TEMPLATES = ROOT / "example_project" / "templates"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
PASSWORD = "pw"  # conftest's make_user sets it


@pytest.fixture(autouse=True)
def allow_orm_beside_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    # Playwright's sync API keeps an asyncio event loop running in this thread while the
    # browser is open, so Django would refuse ORM calls made here (the assertions and the
    # transactional test database's teardown) with SynchronousOnlyOperation. Nothing here
    # is async code: only the check is in the way. Scoped to this module's tests.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def example_pages(settings: Any) -> None:
    """Find the example project's templates (its URLs come from the ``urls`` marker)."""
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [EXAMPLE_TEMPLATES]}]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One Chromium (Debian's /usr/bin/chromium; Playwright downloads nothing) per module.

    Starting Playwright's driver and the browser takes a second or two; each test still gets
    a context of its own (cookies, storage and cache of its own: a new browser profile).
    Module-scoped, so the event loop Playwright keeps running in this thread (see
    ``allow_orm_beside_playwright``) is gone before any other module's test runs; the ORM
    check stays off while it runs (the last test's database teardown included).
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("browser", "needs the playwright package (pip install -e .[test])")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield browser
            finally:
                browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh page in a fresh browser context."""
    context = chromium.new_context(viewport={"width": 1100, "height": 900})
    try:
        context.set_default_timeout(TIMEOUT_MS)
        yield context.new_page()
    finally:
        context.close()


class Steps:
    """Numbered full-page screenshots of one test."""

    def __init__(self, name: str) -> None:
        self.folder = ARTIFACTS / name
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("*.png"):
            old.unlink()
        self.count = 0

    def shot(self, page: Any, step: str) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{step}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def steps(request: pytest.FixtureRequest) -> Steps:
    return Steps(request.node.name)


def log_in(page: Any, base: str, user: Any, steps: Steps) -> None:
    page.goto(f"{base}/")
    assert "/accounts/login/" in page.url
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    steps.shot(page, "login")
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{base}/")


def go_to_consent(page: Any, slice_server: Any, steps: Steps) -> None:
    assert page.inner_text("#link-status") == "Not linked"
    steps.shot(page, "home-not-linked")
    page.click("button:has-text('Connect Slice')")
    page.wait_for_url(re.compile(re.escape(f"{slice_server.url}/oauth/authorize") + r"\?"))
    assert "to access your Slice account?" in page.inner_text("h1")
    steps.shot(page, "sandbox-consent")


def test_link_and_unlink(
    page: Any, slice_server: Any, user: Any, example_pages: None, steps: Steps
) -> None:
    base = slice_server.url
    log_in(page, base, user, steps)
    go_to_consent(page, slice_server, steps)

    page.click("button:has-text('Allow')")
    page.wait_for_url(f"{base}/")
    assert page.inner_text("#link-status") == "Linked"
    assert page.inner_text("#link-version") == "1"
    assert page.inner_text("#profile-name").strip()
    rows = page.locator("#orders tbody tr")
    assert rows.count() == 5
    totals = [rows.nth(i).locator("td.amount").inner_text() for i in range(5)]
    assert all(re.fullmatch(r"\$[\d,]+\.\d\d", total) for total in totals), totals
    # The same orders the sandbox serves for this user: they came through SliceClient.
    sandbox_titles = {
        o["orderTitle"] for o in build_dataset(user, f"{base}/api/v1").newest_first("orders")[:5]
    }
    shown = {rows.nth(i).locator("td").first.inner_text() for i in range(5)}
    assert shown == sandbox_titles
    assert not page.locator("#slice-problem").count()
    steps.shot(page, "home-linked")
    assert SliceCredential.objects.get(user=user).is_active

    page.click("button:has-text('Unlink')")
    page.wait_for_url(f"{base}/")
    assert page.inner_text("#link-status") == "Not linked"
    assert "Your Slice account is no longer linked." in page.inner_text(".messages")
    assert page.locator("button:has-text('Connect Slice')").is_visible()
    steps.shot(page, "home-unlinked")
    assert not SliceCredential.objects.filter(user=user).exists()


def deny(page: Any, slice_server: Any, user: Any, steps: Steps) -> None:
    """Log in, start linking and click Deny on the sandbox's consent page."""
    base = slice_server.url
    log_in(page, base, user, steps)
    go_to_consent(page, slice_server, steps)
    with page.expect_response(lambda r: r.url.startswith(f"{base}/slice/callback/")) as answer:
        page.click("button:has-text('Deny')")
    assert answer.value.status == 200  # the user's choice: a normal page, not an error


def test_deny_shows_error_page_with_try_again(
    page: Any, slice_server: Any, user: Any, example_pages: None, steps: Steps
) -> None:
    deny(page, slice_server, user, steps)
    assert "You chose not to give this site access" in page.inner_text("body")
    assert page.locator("a:has-text('Try again')").is_visible()
    steps.shot(page, "denied-error-page")
    assert not SliceCredential.objects.exists()
    assert slice_server.token_requests() == 0


def test_try_again_starts_over(
    page: Any, slice_server: Any, user: Any, example_pages: None, steps: Steps
) -> None:
    base = slice_server.url
    deny(page, slice_server, user, steps)
    page.click("a:has-text('Try again')")
    page.wait_for_url(f"{base}/slice/authorize/")
    steps.shot(page, "after-try-again")
    # The confirmation page is not served under the callback's no-referrer policy, so its
    # CSRF-protected form posts normally.
    with page.expect_response(lambda r: r.url == f"{base}/slice/authorize/") as answer:
        page.click("button:has-text('Continue to Slice')")
    assert answer.value.status == 302
    page.wait_for_url(re.compile(re.escape(f"{base}/oauth/authorize") + r"\?"))
    steps.shot(page, "consent-again")
