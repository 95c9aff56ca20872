"""The docs' recipe for a front end on another origin (docs/howto/single-page-apps.rst).

The front end is a static page served from another port of ``localhost`` (another origin,
the same site), calling ``/slice/api/`` on the live server with ``fetch(..., {credentials:
"include"})`` and django-cors-headers configured as the docs say. With the whole recipe
it links (landing back on the front end through ``LINK_SUCCESS_URL``) and unlinks;
without each setting it fails the way the docs say.
"""

# ruff: noqa: F811  (test_browser's fixtures are imported by name, then requested by name)

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

FRONT_END = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Front end</title>
<style>body { font: 16px/1.5 system-ui, sans-serif; margin: 2rem; }
#error { color: #a61b1b; }</style>
</head><body>
<h1>Another origin's front end</h1>
<p>Slice: <strong id="status">Loading</strong></p>
<p id="error"></p>
<button id="connect">Connect Slice</button> <button id="unlink">Unlink</button>
<script>
const API = "%(api)s/slice/api/";
let csrfToken = null;
async function slice(name, method = "GET", body = undefined) {
  const response = await fetch(API + name + "/", {
    method,
    credentials: "include",
    headers: {"Content-Type": "application/json", "X-CSRFToken": csrfToken ?? ""},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  csrfToken = response.headers.get("X-CSRFToken") ?? csrfToken;
  const data = await response.json();
  if (!response.ok) throw new Error(`${response.status} ${data.error}`);
  return data;
}
const fail = (error) => { document.getElementById("error").textContent = error.message; };
async function show() {
  const link = await slice("status");
  document.getElementById("status").textContent = link.linked ? link.status : "not linked";
}
document.getElementById("connect").onclick = () => slice("authorize", "POST", {})
  .then(({authorize_url}) => location.assign(authorize_url)).catch(fail);
document.getElementById("unlink").onclick = () => slice("unlink", "POST").then(show).catch(fail);
show().catch(fail);
</script></body></html>"""


@pytest.fixture
def front_end(live_server: Any) -> Iterator[str]:
    """Serve FRONT_END from another port of localhost; yield its origin."""
    body = (FRONT_END % {"api": live_server.url}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def configure(settings: Any, front: str, *, leave_out: str | None = None) -> None:
    """The docs' settings for ``front``, but for ``leave_out``."""
    values = {
        "CORS_ALLOWED_ORIGINS": [front],
        "CORS_ALLOW_CREDENTIALS": True,
        "CORS_EXPOSE_HEADERS": ["X-CSRFToken"],
        "CSRF_TRUSTED_ORIGINS": [front],
    }
    for name, value in values.items():
        if name != leave_out:
            setattr(settings, name, value)
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "LINK_SUCCESS_URL": f"{front}/"}


def log_in_on_the_site(page: Any, base: str, user: Any) -> None:
    page.goto(f"{base}/accounts/login/?next=/")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{base}/")


def test_front_end_on_another_origin_links_and_unlinks(
    page: Any,
    slice_server: Any,
    user: Any,
    example_pages: None,
    steps: Steps,
    settings: Any,
    front_end: str,
) -> None:
    from playwright.sync_api import expect

    base = slice_server.url
    assert front_end != base
    configure(settings, front_end)
    log_in_on_the_site(page, base, user)
    page.goto(f"{front_end}/")
    expect(page.locator("#status")).to_have_text("not linked")
    steps.shot(page, "front-end-not-linked")

    page.click("#connect")
    page.wait_for_url(re.compile(re.escape(f"{base}/oauth/authorize") + r"\?"))
    page.click("button:has-text('Allow')")
    page.wait_for_url(f"{front_end}/")  # LINK_SUCCESS_URL brings the browser back
    expect(page.locator("#status")).to_have_text("active")
    assert SliceCredential.objects.get(user=user).is_active
    steps.shot(page, "front-end-linked")

    page.click("#unlink")
    expect(page.locator("#status")).to_have_text("not linked")
    assert page.inner_text("#error") == ""
    assert not SliceCredential.objects.filter(user=user).exists()


@pytest.mark.parametrize(
    ("leave_out", "failure"),
    [
        # Without credentials allowed, the browser hides every answer from the script.
        ("CORS_ALLOW_CREDENTIALS", "Failed to fetch"),
        # Without the exposed header the script has no CSRF token to send.
        ("CORS_EXPOSE_HEADERS", "403 csrf_failed"),
        # Django refuses a POST from an origin it does not trust.
        ("CSRF_TRUSTED_ORIGINS", "403 csrf_failed"),
    ],
)
def test_each_setting_of_the_recipe_is_needed(
    page: Any,
    slice_server: Any,
    user: Any,
    example_pages: None,
    settings: Any,
    front_end: str,
    leave_out: str,
    failure: str,
) -> None:
    from playwright.sync_api import expect

    configure(settings, front_end, leave_out=leave_out)
    log_in_on_the_site(page, slice_server.url, user)
    page.goto(f"{front_end}/")
    if leave_out == "CORS_ALLOW_CREDENTIALS":
        expect(page.locator("#error")).to_have_text(failure)
        return
    expect(page.locator("#status")).to_have_text("not linked")
    page.click("#connect")
    expect(page.locator("#error")).to_have_text(failure)
    assert page.url == f"{front_end}/"
    assert slice_server.token_requests() == 0
