"""Authorize, callback and unlink views, driven with the test client and a mocked Slice.

Batteries B1 (malformed callbacks) and B2 (redirect targets) are those of
docs/threat-model.rst.

``responses`` is active in every test here, so any request to Slice (matched or not) is
recorded and counted: a rejected callback must not reach the token endpoint at all.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
import responses
import time_machine
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.http import HttpResponse
from django.test import Client
from django.utils import timezone
from django.utils.html import escape
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from slice_connect import oauth, signals, states
from slice_connect.models import CallbackClaim, SliceCredential
from tests.conftest import BASE_CONFIG, REVOKE_URL, TOKEN_URL

pytestmark = pytest.mark.django_db

AUTHORIZE = "/slice/authorize/"
CALLBACK = "/slice/callback/"
UNLINK = "/slice/unlink/"
TABLE = SliceCredential._meta.db_table

# The fixed texts the callback may show.
MISSING = "The link request is missing its security check."
MALFORMED = "The link request was malformed."
UNKNOWN = "This link request is unknown or was already used. Please start again."
SOMEONE_ELSE = "This link request was started by someone else."
EXPIRED = "This link request expired. Please start again."
ALREADY_USED = (
    "This link request was already used, for example by a double click or a reload. "
    "If your Slice account is not linked yet, please start again."
)
ISSUER = "The link request came from an unexpected server."
CODE_MALFORMED = "The authorization code is malformed."
NO_CODE = "Slice sent you back without an authorization code."
GENERIC = "Slice could not link your account."
DENIED = "You chose not to give this site access to your Slice account."
LOGIN = "Please log in, then link your Slice account again."
CODE_EXPIRED = "The authorization from Slice expired before it could be used. Please try again."
MISCONFIGURED = "This site's connection to Slice is misconfigured. Please tell the site owner."
NO_ANSWER = "Slice is not available right now. Please try again in a moment."
UNUSABLE = "Slice sent an answer this site cannot use."
KNOWN_ERRORS = {
    "access_denied": "You chose not to give this site access to your Slice account.",
    "invalid_request": "Slice could not understand the request to link your account.",
    "unsupported_response_type": "Slice refused the kind of request this site sent.",
    "unauthorized_client": "Slice does not allow this site to link accounts right now.",
    "invalid_scope": "Slice refused the access this site asked for.",
    "server_error": "Slice had a problem and could not link your account.",
    "temporarily_unavailable": "Slice is busy right now.",
}


def canary(kind: str) -> str:
    return f"{kind}-CANARY-{secrets.token_hex(10)}"


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def raw_rows() -> list[tuple[Any, ...]]:
    """Every credential row as stored (ciphertext bytes included), past the ORM."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, user_id, access_token, refresh_token, version, status, updated_at "
            f"FROM {TABLE} ORDER BY id"
        )
        return [(r[0], r[1], bytes(r[2]), bytes(r[3]), r[4], r[5], r[6]) for r in cursor.fetchall()]


@dataclass
class Slice:
    """The mocked Slice: every request to it is recorded."""

    mock: responses.RequestsMock
    access: str = field(default_factory=lambda: canary("NEWACCESS"))
    refresh: str = field(default_factory=lambda: canary("NEWREFRESH"))

    def calls(self) -> list[Any]:
        return list(self.mock.calls)

    def token_calls(self) -> list[Any]:
        return [c for c in self.mock.calls if c.request.url.startswith(TOKEN_URL)]

    def revoke_calls(self) -> list[Any]:
        return [c for c in self.mock.calls if c.request.url.startswith(REVOKE_URL)]

    def answer(self, **spec: Any) -> None:
        """Replace the token endpoint's answer."""
        self.mock.replace(responses.POST, TOKEN_URL, **spec)


@pytest.fixture
def slice_api(slice_mock: responses.RequestsMock) -> Slice:
    mock = slice_mock
    api = Slice(mock)
    mock.post(
        TOKEN_URL,
        json={
            "access_token": api.access,
            "refresh_token": api.refresh,
            "token_type": "bearer",
            "expires_in": 3600,
        },
    )
    mock.post(REVOKE_URL, status=200)
    return api


@dataclass
class Browser:
    """A logged-in browser session."""

    client: Client
    user: Any

    def start(self, next_url: str | None = None, **extra: Any) -> str:
        """POST the authorize view; return the state sent to Slice."""
        data = {"next": next_url} if next_url is not None else {}
        response = self.client.post(AUTHORIZE, data, **extra)
        assert response.status_code == 302, response.status_code
        return parse_qs(urlsplit(response["Location"]).query)["state"][0]

    def authorize_params(self, response: HttpResponse) -> dict[str, list[str]]:
        return parse_qs(urlsplit(response["Location"]).query)

    def callback(self, query: str, method: str = "get", **extra: Any) -> HttpResponse:
        return getattr(self.client, method)(f"{CALLBACK}?{query}", **extra)

    def pending(self) -> list[str]:
        return [e["state_hash"] for e in self.client.session.get(states.SESSION_KEY, [])]

    def is_pending(self, state: str) -> bool:
        return sha256(state) in self.pending()

    def is_spent(self, state: str) -> bool:
        """Gone from the session, or claimed for good (a 5xx page's session is not saved)."""
        claimed = CallbackClaim.objects.filter(state_hash=sha256(state)).exists()
        return claimed or not self.is_pending(state)


@pytest.fixture
def browser_for(db: Any) -> Callable[[Any], Browser]:
    def make(user: Any) -> Browser:
        client = Client()
        client.force_login(user)
        return Browser(client, user)

    return make


@pytest.fixture
def existing(user: Any, make_credential: Callable[..., SliceCredential]) -> SliceCredential:
    """The user already has a link, so 'changed' is checked on real ciphertext."""
    return make_credential(user, access_token=canary("OLDACCESS"), refresh_token=canary("OLDREF"))


@pytest.fixture
def browser(browser_for: Callable[[Any], Browser], user: Any, existing: Any) -> Browser:
    return browser_for(user)


def assert_headers(response: HttpResponse) -> None:
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "no-referrer"


def assert_retry_form(body: str, present: bool) -> None:
    # A link to the confirmation page, never a form: under the callback's no-referrer
    # policy a browser would post it with "Origin: null" and fail the CSRF check.
    assert ("Try again" in body) is present
    assert (f'href="{AUTHORIZE}"' in body) is present
    assert "<form" not in body


def assert_rejected(
    response: HttpResponse,
    *,
    status: int,
    message: str,
    secrets_: tuple[str, ...],
    logged_in: bool = True,
) -> None:
    assert response.status_code == status
    # 4xx, except a user's own "Deny" at Slice, which ends on a normal page.
    assert 400 <= response.status_code < 500 or (status == 200 and message == DENIED)
    assert_headers(response)
    assert not response.has_header("Location")
    body = response.content.decode()
    assert escape(message) in body
    assert_retry_form(body, logged_in)
    for value in secrets_:
        assert value not in body


# -- authorize ------------------------------------------------------------------------------


def test_authorize_requires_login(client: Client) -> None:
    for method in ("get", "post"):
        response = getattr(client, method)(AUTHORIZE)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={AUTHORIZE}"


def test_authorize_get_renders_a_csrf_form(browser: Browser, slice_api: Slice) -> None:
    response = browser.client.get(AUTHORIZE, {"next": "/after/"})
    assert response.status_code == 200
    body = response.content.decode()
    assert f'<form method="post" action="{AUTHORIZE}"' in body
    assert 'name="csrfmiddlewaretoken"' in body
    assert '<input type="hidden" name="next" value="/after/">' in body
    assert browser.pending() == []  # a GET starts nothing
    assert slice_api.calls() == []


def test_authorize_get_drops_an_unsafe_next(browser: Browser) -> None:
    response = browser.client.get(AUTHORIZE, {"next": "https://evil.example/"})
    assert 'name="next"' not in response.content.decode()


def test_authorize_post_needs_csrf(user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(AUTHORIZE)
    assert response.status_code == 403
    assert states.SESSION_KEY not in client.session


def test_authorize_post_redirects_to_slice(browser: Browser, slice_api: Slice) -> None:
    response = browser.client.post(AUTHORIZE)
    assert response.status_code == 302
    location = response["Location"]
    assert location.startswith("https://slice.test/oauth/authorize?")
    params = browser.authorize_params(response)
    state = params["state"][0]
    assert params == {
        "response_type": ["code"],
        "client_id": ["test-client-id"],
        "redirect_uri": ["http://testserver/slice/callback/"],
        "state": [state],
        "code_challenge": [oauth.pkce_challenge(oauth.pkce_verifier(state))],
        "code_challenge_method": ["S256"],
    }
    assert len(state) >= 43
    assert "test-client-secret" not in location
    assert oauth.pkce_verifier(state) not in location
    assert response["Cache-Control"] == "no-store"
    assert response["Referrer-Policy"] == "no-referrer"
    assert browser.pending() == [sha256(state)]
    assert slice_api.calls() == []  # nothing is sent to Slice by the server


def test_authorize_without_pkce(browser: Browser, slice_api: Slice, settings: Any) -> None:
    settings.SLICE_CONNECT = {**BASE_CONFIG, "USE_PKCE": False}
    response = browser.client.post(AUTHORIZE)
    params = browser.authorize_params(response)
    assert "code_challenge" not in params and "code_challenge_method" not in params
    state = params["state"][0]
    browser.callback(urlencode({"state": state, "code": "abc"}))
    (call,) = slice_api.token_calls()
    assert "code_verifier" not in parse_qs(call.request.body)


def test_each_start_is_a_new_pending_attempt(browser: Browser) -> None:
    first, second = browser.start(), browser.start()
    assert first != second
    assert browser.pending() == [sha256(first), sha256(second)]


def test_host_header_does_not_change_a_configured_redirect_uri(
    browser: Browser, slice_api: Slice, settings: Any
) -> None:
    configured = "https://app.example/slice/callback/"
    settings.ALLOWED_HOSTS = ["*"]
    settings.SLICE_CONNECT = {**BASE_CONFIG, "REDIRECT_URI": configured}
    response = browser.client.post(AUTHORIZE, HTTP_HOST="evil.example")
    params = browser.authorize_params(response)
    assert params["redirect_uri"] == [configured]
    state = params["state"][0]
    browser.callback(
        urlencode({"state": state, "code": "abc"}), HTTP_HOST="evil.example", secure=True
    )
    (call,) = slice_api.token_calls()
    assert parse_qs(call.request.body)["redirect_uri"] == [configured]


def test_token_request_reuses_the_authorize_redirect_uri(
    browser: Browser, slice_api: Slice, settings: Any
) -> None:
    # Without REDIRECT_URI (W001) it is built once, at authorize time, and then reused.
    settings.ALLOWED_HOSTS = ["*"]
    response = browser.client.post(AUTHORIZE, HTTP_HOST="app.example")
    sent = browser.authorize_params(response)["redirect_uri"]
    assert sent == ["http://app.example/slice/callback/"]
    state = browser.authorize_params(response)["state"][0]
    browser.callback(urlencode({"state": state, "code": "abc"}), HTTP_HOST="other.example")
    (call,) = slice_api.token_calls()
    assert parse_qs(call.request.body)["redirect_uri"] == sent


def test_next_from_the_query_string_is_used_too(browser: Browser, slice_api: Slice) -> None:
    response = browser.client.post(f"{AUTHORIZE}?next=/from-query/")
    state = browser.authorize_params(response)["state"][0]
    done = browser.callback(urlencode({"state": state, "code": "abc"}))
    assert done["Location"] == "/from-query/"


# -- B2: redirect targets -------------------------------------------------------------------

DJANGO_BAD_URLS = [
    "http://example.com",
    "http:///example.com",
    "https://example.com",
    "ftp://example.com",
    r"\\example.com",
    r"\\\example.com",
    r"/\\/example.com",
    r"\\//example.com",
    r"/\/example.com",
    r"\/example.com",
    r"/\example.com",
    r"http:/\//example.com",
    r"http:\/example.com",
    r"http:/\example.com",
    'javascript:alert("XSS")',
    "\njavascript:alert(x)",
    "java\nscript:alert(x)",
    "\x08//example.com",
    r"http://otherserver\@example.com",
    r"http:\\testserver\@example.com",
    r"http://testserver\me:pass@example.com",
    r"http://testserver\@example.com",
    r"http:\\testserver\confirm\me@example.com",
    "http:999999999",
    "ftp:9999999999",
    "\n",
    "http://[2001:cdba:0000:0000:0000:0000:3257:9652/",
    "http://2001:cdba:0000:0000:0000:0000:3257:9652]/",
    # Django's "good" URLs that still are not same-site relative paths.
    "https://testserver/",
    "//testserver/",
    "view/?param=//example.com",
]

EXTRA_BAD_URLS = [
    "//evil.com",
    "///evil.com",
    "////evil.com",
    r"\\evil.com",
    r"/\evil.com",
    r"\/evil.com",
    "%2F%2Fevil.com",
    "%2f%2fevil.com",
    "/\t/evil.com",
    "/\n/evil.com",
    "/\r/evil.com",
    "\t//evil.com",
    "ht\ttp://evil.com",
    "java\tscript:alert(1)",
    "java\r\nscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "javascript:alert(document.cookie)",
    "JaVaScRiPt:alert(1)",
    " /after/",
    "https://testserver@evil.com/",
    "//user:pass@evil.com/",
    "https://evil.com@testserver/",
    "https://t\u0435stserver/after/",  # Cyrillic look-alike of "testserver"
    "//t\u0435stserver/after/",
    "//xn--tstserver-0yf/",
    "\uff0f\uff0fevil.com",  # fullwidth solidus
    "/" + "a" * 8192,
    "/after/\x00",
    "/after/\x7f",
    "",
]


@pytest.fixture
def success_url(settings: Any) -> str:
    settings.SLICE_CONNECT = {**BASE_CONFIG, "LINK_SUCCESS_URL": "/linked/"}
    return "/linked/"


@pytest.mark.parametrize("target", DJANGO_BAD_URLS + EXTRA_BAD_URLS, ids=repr)
def test_hostile_next_falls_back_to_link_success_url(
    browser: Browser, slice_api: Slice, success_url: str, target: str
) -> None:
    state = browser.start(next_url=target)
    response = browser.callback(urlencode({"state": state, "code": "abc"}))
    assert response.status_code == 302
    assert response["Location"] == success_url
    assert len(slice_api.token_calls()) == 1


@pytest.mark.parametrize(
    "target",
    [
        "/after/",
        "/a/b/?x=1&y=2#frag",
        "/url%20with%20spaces/",
        "/view/?param=http://example.com",
        "/%2F%2Fevil.com",  # a path on this site: browsers do not decode %2F in Location
        "/" + "a" * 2000,
    ],
)
def test_same_site_relative_next_is_kept(
    browser: Browser, slice_api: Slice, success_url: str, target: str
) -> None:
    state = browser.start(next_url=target)
    response = browser.callback(urlencode({"state": state, "code": "abc"}))
    assert response.status_code == 302
    assert response["Location"] == target


def test_link_success_url_may_be_a_url_name(
    browser: Browser, slice_api: Slice, settings: Any
) -> None:
    settings.SLICE_CONNECT = {**BASE_CONFIG, "LINK_SUCCESS_URL": "home"}
    state = browser.start()
    assert browser.callback(urlencode({"state": state, "code": "abc"}))["Location"] == "/"


def test_next_is_not_sent_to_slice(browser: Browser) -> None:
    response = browser.client.post(AUTHORIZE, {"next": "/secret-next-target/"})
    assert "secret-next-target" not in response["Location"]


# -- successful callback ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"iss": "https://slice.test"},
        {"scope": "read", "session_state": "xyz", "utm_source": "mail"},
        {"foo": ["1", "2"]},
    ],
    ids=["plain", "iss", "extra-params", "repeated-extra"],
)
def test_successful_callback(
    browser: Browser, slice_api: Slice, existing: SliceCredential, extra: dict[str, Any]
) -> None:
    state = browser.start(next_url="/after/")
    code = canary("CODE")
    query = urlencode({"state": state, "code": code, **extra}, doseq=True)
    response = browser.callback(query)
    assert response.status_code == 302
    assert response["Location"] == "/after/"
    assert response.content == b""
    assert_headers(response)
    for value in (state, code, slice_api.access, slice_api.refresh):
        assert value not in response["Location"]
    (call,) = slice_api.token_calls()
    sent = parse_qs(call.request.body)
    assert sent["code"] == [code]
    assert sent["code_verifier"] == [oauth.pkce_verifier(state)]
    assert sent["redirect_uri"] == ["http://testserver/slice/callback/"]
    assert not browser.is_pending(state)
    credential = SliceCredential.objects.get(user=browser.user)
    assert credential.pk == existing.pk  # replaced in place
    assert (credential.access_token, credential.refresh_token) == (
        slice_api.access,
        slice_api.refresh,
    )
    assert credential.version == existing.version + 1
    assert SliceCredential.objects.count() == 1


def test_callback_creates_a_first_credential(
    browser_for: Callable[[Any], Browser], make_user: Callable[..., Any], slice_api: Slice
) -> None:
    browser = browser_for(make_user())
    state = browser.start()
    response = browser.callback(urlencode({"state": state, "code": "abc"}))
    assert response.status_code == 302 and response["Location"] == "/"
    credential = SliceCredential.objects.get(user=browser.user)
    assert credential.is_active and credential.refresh_token == slice_api.refresh


def test_configured_issuer_is_required_to_match(
    browser: Browser, slice_api: Slice, settings: Any
) -> None:
    settings.SLICE_CONNECT = {**BASE_CONFIG, "ISSUER": "https://issuer.slice.test"}
    state = browser.start()
    rejected = browser.callback(
        urlencode({"state": state, "code": "a", "iss": "https://slice.test"})
    )
    assert rejected.status_code == 400 and escape(ISSUER) in rejected.content.decode()
    state = browser.start()
    ok = browser.callback(
        urlencode({"state": state, "code": "a", "iss": "https://issuer.slice.test"})
    )
    assert ok.status_code == 302
    assert len(slice_api.token_calls()) == 1


def test_several_tabs_each_complete(browser: Browser, slice_api: Slice) -> None:
    first = browser.start(next_url="/one/")
    second = browser.start(next_url="/two/")
    assert browser.callback(urlencode({"state": second, "code": "a"}))["Location"] == "/two/"
    assert browser.callback(urlencode({"state": first, "code": "b"}))["Location"] == "/one/"
    assert len(slice_api.token_calls()) == 2


# -- B1: malformed callbacks ------------------------------------------------------------------

S = "{state}"
C = "{code}"


@dataclass(frozen=True)
class Case:
    query: str  # formatted with the pending state and a canary code
    message: str
    consumed: bool
    status: int = 400


def pct(value: str) -> str:
    return "".join(f"%25{ord(ch):02X}" for ch in value)


B1_CASES: dict[str, Case] = {
    # state
    "state-missing": Case(f"code={C}", MISSING, consumed=False),
    "state-empty": Case(f"state=&code={C}", MISSING, consumed=False),
    "state-1-char": Case(f"state=x&code={C}", UNKNOWN, consumed=False),
    "state-4KB": Case(f"state={'A' * 4096}&code={C}", MISSING, consumed=False),
    "state-64KB": Case(f"state={'A' * 65536}&code={C}", MISSING, consumed=False),
    "state-2-copies": Case(f"state={S}&state={S}&code={C}", MALFORMED, consumed=False),
    "state-3-copies": Case(f"state={S}&state={S}&state={S}&code={C}", MALFORMED, consumed=False),
    "state-valid-and-forged": Case(f"state={S}&state=forged&code={C}", MALFORMED, consumed=False),
    "state-truncated": Case(f"state={S}[:-1]&code={C}", UNKNOWN, consumed=False),
    "state-upper": Case(f"state={S}.upper()&code={C}", UNKNOWN, consumed=False),
    "state-padded": Case(f"state={S}%3D&code={C}", UNKNOWN, consumed=False),
    "state-double-encoded": Case(f"state={S}.pct()&code={C}", UNKNOWN, consumed=False),
    "state-hash": Case(f"state={S}.sha256()&code={C}", UNKNOWN, consumed=False),
    "state-nul": Case(f"state={S}%00&code={C}", MISSING, consumed=False),
    "state-crlf": Case(f"state={S}%0D%0A&code={C}", MISSING, consumed=False),
    "state-non-utf8": Case(f"state=%FF%FE&code={C}", UNKNOWN, consumed=False),
    "state-in-fragment-only": Case(f"code={C}#state={S}", MISSING, consumed=False),
    # code
    "code-missing": Case(f"state={S}", NO_CODE, consumed=True),
    "code-empty": Case(f"state={S}&code=", CODE_MALFORMED, consumed=True),
    "code-64KB": Case(f"state={S}&code={'c' * 65536}", CODE_MALFORMED, consumed=True),
    "code-4097": Case(f"state={S}&code={'c' * 4097}", CODE_MALFORMED, consumed=True),
    "code-crlf": Case(f"state={S}&code={C}%0D%0A", CODE_MALFORMED, consumed=True),
    "code-lf": Case(f"state={S}&code={C}%0Aheader", CODE_MALFORMED, consumed=True),
    "code-nul": Case(f"state={S}&code={C}%00", CODE_MALFORMED, consumed=True),
    "code-non-utf8": Case(f"state={S}&code=%FF%FE%FD", CODE_MALFORMED, consumed=True),
    "code-non-ascii": Case(f"state={S}&code=c%C3%B6de", CODE_MALFORMED, consumed=True),
    "code-repeated": Case(f"state={S}&code={C}&code=other", MALFORMED, consumed=True),
    "code-repeated-same": Case(f"state={S}&code={C}&code={C}", MALFORMED, consumed=True),
    # error
    "code-and-error": Case(f"state={S}&code={C}&error=access_denied", MALFORMED, consumed=True),
    "error-unknown": Case(f"state={S}&error=made_up_error", GENERIC, consumed=True),
    "error-empty": Case(f"state={S}&error=", GENERIC, consumed=True),
    "error-html": Case(f"state={S}&error=%3Cb%3Ehi%3C%2Fb%3E", GENERIC, consumed=True),
    "error-repeated": Case(
        f"state={S}&error=access_denied&error=server_error", MALFORMED, consumed=True
    ),
    "error-description-html": Case(
        f"state={S}&error=access_denied&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
        KNOWN_ERRORS["access_denied"],
        consumed=True,
        status=200,
    ),
    "error-description-js": Case(
        f"state={S}&error=access_denied&error_description=javascript%3Aalert(1)",
        KNOWN_ERRORS["access_denied"],
        consumed=True,
        status=200,
    ),
    "error-description-crlf": Case(
        f"state={S}&error=access_denied&error_description=x%0D%0ASet-Cookie%3A%20pwned%3D1",
        KNOWN_ERRORS["access_denied"],
        consumed=True,
        status=200,
    ),
    "error-description-repeated": Case(
        f"state={S}&error=access_denied&error_description=a&error_description=b",
        MALFORMED,
        consumed=True,
    ),
    "error-uri-javascript": Case(
        f"state={S}&error=server_error&error_uri=javascript%3Aalert(document.cookie)",
        KNOWN_ERRORS["server_error"],
        consumed=True,
    ),
    "error-without-state": Case("error=access_denied", MISSING, consumed=False),
    # iss
    "iss-wrong": Case(f"state={S}&code={C}&iss=https%3A%2F%2Fevil.example", ISSUER, True),
    "iss-duplicated": Case(
        f"state={S}&code={C}&iss=https%3A%2F%2Fslice.test&iss=https%3A%2F%2Fslice.test",
        ISSUER,
        consumed=True,
    ),
    "iss-duplicated-mixed": Case(
        f"state={S}&code={C}&iss=https%3A%2F%2Fslice.test&iss=https%3A%2F%2Fevil.example",
        ISSUER,
        consumed=True,
    ),
    "iss-trailing-slash": Case(f"state={S}&code={C}&iss=https%3A%2F%2Fslice.test%2F", ISSUER, True),
    "iss-http": Case(f"state={S}&code={C}&iss=http%3A%2F%2Fslice.test", ISSUER, True),
    "iss-empty": Case(f"state={S}&code={C}&iss=", ISSUER, consumed=True),
    "iss-on-error": Case(
        f"state={S}&error=access_denied&iss=https%3A%2F%2Fevil.example", ISSUER, True
    ),
}
B1_CASES.update(
    {
        f"error-{name}": Case(
            f"state={S}&error={name}",
            message,
            consumed=True,
            status=200 if name == "access_denied" else 400,
        )
        for name, message in KNOWN_ERRORS.items()
    }
)


def render_query(template: str, state: str, code: str) -> str:
    value = (
        template.replace(f"{S}[:-1]", state[:-1])
        .replace(f"{S}.upper()", state.upper())
        .replace(f"{S}.pct()", pct(state))
        .replace(f"{S}.sha256()", sha256(state))
    )
    return value.replace(S, state).replace(C, code)


@pytest.mark.parametrize("name", sorted(B1_CASES))
def test_malformed_callback(
    browser: Browser, slice_api: Slice, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    case = B1_CASES[name]
    state = browser.start()
    code = canary("CODE")
    before = raw_rows()
    response = browser.callback(render_query(case.query, state, code))
    assert_rejected(
        response,
        status=case.status,
        message=case.message,
        secrets_=(state, code, "<script>", "javascript:", "pwned", "<b>hi"),
    )
    assert "pwned" not in str(response.cookies)
    assert slice_api.token_calls() == []
    assert slice_api.calls() == []
    assert raw_rows() == before
    assert browser.is_pending(state) is not case.consumed


def test_another_users_state_in_another_session(
    browser: Browser,
    browser_for: Callable[[Any], Browser],
    make_user: Callable[..., Any],
    slice_api: Slice,
) -> None:
    state = browser.start()
    mallory = browser_for(make_user("mallory"))
    before = raw_rows()
    response = mallory.callback(urlencode({"state": state, "code": "stolen"}))
    assert_rejected(response, status=400, message=UNKNOWN, secrets_=(state, "stolen"))
    assert slice_api.calls() == []
    assert raw_rows() == before
    assert not SliceCredential.objects.filter(user=mallory.user).exists()
    assert browser.is_pending(state)  # the victim's attempt is untouched


def test_another_users_attempt_planted_in_the_session(
    browser: Browser,
    browser_for: Callable[[Any], Browser],
    make_user: Callable[..., Any],
    slice_api: Slice,
) -> None:
    state = browser.start()
    mallory = browser_for(make_user("mallory"))
    session = mallory.client.session
    session[states.SESSION_KEY] = browser.client.session[states.SESSION_KEY]
    session.save()
    before = raw_rows()
    response = mallory.callback(urlencode({"state": state, "code": "stolen"}))
    assert_rejected(response, status=403, message=SOMEONE_ELSE, secrets_=(state, "stolen"))
    assert slice_api.calls() == []
    assert raw_rows() == before
    assert not mallory.is_pending(state)  # consumed


def test_same_users_state_in_another_session(
    browser: Browser, browser_for: Callable[[Any], Browser], slice_api: Slice
) -> None:
    state = browser.start()
    other_tab_elsewhere = browser_for(browser.user)
    response = other_tab_elsewhere.callback(urlencode({"state": state, "code": "c"}))
    assert_rejected(response, status=400, message=UNKNOWN, secrets_=(state,))
    assert slice_api.calls() == []
    assert browser.is_pending(state)


def test_replayed_callback_is_refused(browser: Browser, slice_api: Slice) -> None:
    state = browser.start()
    query = urlencode({"state": state, "code": "once"})
    assert browser.callback(query).status_code == 302
    after_first = raw_rows()
    response = browser.callback(query)
    assert_rejected(response, status=400, message=UNKNOWN, secrets_=(state, "once"))
    assert len(slice_api.token_calls()) == 1
    assert raw_rows() == after_first


@pytest.mark.parametrize(
    "spec",
    [{"body": requests.ReadTimeout("slow")}, {"status": 503}, {"status": 401}],
    ids=["read-timeout", "503", "401"],
)
def test_reload_after_a_failed_exchange_never_redeems_the_code_again(
    browser: Browser, slice_api: Slice, spec: dict[str, Any]
) -> None:
    slice_api.answer(**spec)
    state = browser.start()
    query = urlencode({"state": state, "code": "only-once"})
    assert browser.callback(query).status_code == 502
    slice_api.answer(json={"access_token": "a", "refresh_token": "r", "expires_in": 60})
    before = raw_rows()
    response = browser.callback(query)
    assert_rejected(response, status=409, message=ALREADY_USED, secrets_=(state, "only-once"))
    assert len(slice_api.token_calls()) == 1
    assert raw_rows() == before


def test_state_older_than_ttl_is_refused(browser: Browser, slice_api: Slice) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        state = browser.start()
        clock.shift(601)
        before = raw_rows()
        response = browser.callback(urlencode({"state": state, "code": "late"}))
    assert_rejected(response, status=400, message=EXPIRED, secrets_=(state, "late"))
    assert slice_api.calls() == []
    assert raw_rows() == before
    assert not browser.is_pending(state)


def test_state_at_ttl_is_accepted(browser: Browser, slice_api: Slice) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        state = browser.start()
        clock.shift(600)
        response = browser.callback(urlencode({"state": state, "code": "just-in-time"}))
    assert response.status_code == 302
    assert len(slice_api.token_calls()) == 1


def test_evicted_state_is_refused(browser: Browser, slice_api: Slice) -> None:
    oldest = browser.start()
    for _ in range(10):
        browser.start()
    response = browser.callback(urlencode({"state": oldest, "code": "c"}))
    assert_rejected(response, status=400, message=UNKNOWN, secrets_=(oldest,))
    assert slice_api.calls() == []


@pytest.mark.parametrize("method", ["post", "head", "options", "put", "patch", "delete", "trace"])
def test_other_methods_are_not_allowed(browser: Browser, slice_api: Slice, method: str) -> None:
    state = browser.start()
    before = raw_rows()
    response = browser.callback(urlencode({"state": state, "code": "c"}), method=method)
    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert_headers(response)
    assert state.encode() not in response.content
    assert slice_api.calls() == []
    assert raw_rows() == before


@pytest.mark.parametrize(
    "query",
    ["state={state}&code=c", "error=access_denied&state={state}", "", "state=x"],
    ids=["valid-state", "error", "empty", "junk"],
)
def test_anonymous_callback_is_forbidden(
    browser: Browser, client: Client, slice_api: Slice, query: str
) -> None:
    state = browser.start()
    before = raw_rows()
    response = client.get(f"{CALLBACK}?{query.format(state=state)}")
    assert_rejected(response, status=403, message=LOGIN, secrets_=(state,), logged_in=False)
    assert slice_api.calls() == []
    assert raw_rows() == before
    assert browser.is_pending(state)


# -- token failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "status", "message", "retry"),
    [
        ({"status": 400, "json": {"error": "invalid_grant"}}, 400, CODE_EXPIRED, True),
        ({"status": 500}, 502, NO_ANSWER, True),
        ({"status": 503, "headers": {"Retry-After": "30"}}, 502, NO_ANSWER, True),
        ({"status": 429}, 502, NO_ANSWER, True),
        ({"body": requests.ReadTimeout("slow")}, 502, NO_ANSWER, True),
        ({"body": requests.ConnectTimeout("down")}, 502, NO_ANSWER, True),
        ({"json": {"access_token": "x", "token_type": "bearer"}}, 502, UNUSABLE, True),
        ({"status": 401, "json": {"error": "invalid_client"}}, 502, MISCONFIGURED, False),
        ({"status": 400, "json": {"error": "unauthorized_client"}}, 502, MISCONFIGURED, False),
        ({"status": 400, "json": {"error": "brand_new_error"}}, 502, UNUSABLE, True),
        ({"status": 302, "headers": {"Location": "https://evil.example/"}}, 502, UNUSABLE, True),
    ],
    ids=[
        "invalid_grant",
        "500",
        "503",
        "429",
        "read-timeout",
        "connect-timeout",
        "invalid-200",
        "invalid_client",
        "unauthorized_client",
        "unknown-error",
        "redirect",
    ],
)
def test_token_failure_stores_nothing(
    browser: Browser,
    slice_api: Slice,
    existing: SliceCredential,
    spec: dict[str, Any],
    status: int,
    message: str,
    retry: bool,
) -> None:
    slice_api.answer(**spec)
    state = browser.start(next_url="/after/")
    code = canary("CODE")
    before = raw_rows()
    response = browser.callback(urlencode({"state": state, "code": code}))
    assert response.status_code == status
    assert_headers(response)
    body = response.content.decode()
    assert escape(message) in body
    assert_retry_form(body, retry)
    for value in (state, code, slice_api.access, slice_api.refresh, "test-client-secret"):
        assert value not in body
    assert raw_rows() == before
    fresh = SliceCredential.objects.get(pk=existing.pk)
    assert (fresh.access_token, fresh.refresh_token) == (
        existing.access_token,
        existing.refresh_token,
    )
    assert browser.is_spent(state)
    calls = len(slice_api.token_calls())
    assert calls == (2 if "connect" in repr(spec.get("body", "")).lower() else 1)
    assert not any(c.request.url.startswith("https://evil.example") for c in slice_api.mock.calls)


# -- signals ------------------------------------------------------------------------------------


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    receivers = {}
    for name in ("credential_linked", "credential_unlinked"):

        def receiver(sender: Any, _name: str = name, **kwargs: Any) -> None:
            assert sender is SliceCredential
            kwargs.pop("signal", None)
            seen.append((_name, kwargs))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver, weak=False)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def test_credential_linked_on_link_and_relink(
    browser_for: Callable[[Any], Browser],
    make_user: Callable[..., Any],
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    browser = browser_for(make_user())
    for expected_created in (True, False):
        state = browser.start()
        with django_capture_on_commit_callbacks(execute=True):
            response = browser.callback(urlencode({"state": state, "code": "c"}))
        assert response.status_code == 302
        name, kwargs = events[-1]
        assert name == "credential_linked"
        assert set(kwargs) == {"credential", "user", "created", "request"}
        assert kwargs["created"] is expected_created
        assert kwargs["user"] == browser.user
        assert kwargs["credential"] == SliceCredential.objects.get(user=browser.user)
        assert kwargs["request"].path == CALLBACK
        assert kwargs["request"].user == browser.user
    assert [e[0] for e in events] == ["credential_linked", "credential_linked"]


def test_credential_linked_waits_for_commit(
    browser: Browser,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    state = browser.start()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        browser.callback(urlencode({"state": state, "code": "c"}))
    assert events == []  # not before commit
    assert slice_api.revoke_calls() == []  # nor the re-link's revocation of the old token
    assert len(callbacks) == 2
    for callback in callbacks:
        callback()
    assert [e[0] for e in events] == ["credential_linked"]
    assert len(slice_api.revoke_calls()) == 1


def test_credential_linked_not_sent_on_rollback(
    user: Any,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from slice_connect import services

    tokens = oauth.exchange_code(code="c", redirect_uri="https://a/", state="s", use_pkce=True)

    class Boom(Exception):
        pass

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with pytest.raises(Boom), transaction.atomic():
            services.link(user, tokens)
            raise Boom
    assert callbacks == []
    assert events == []
    assert not SliceCredential.objects.filter(user=user).exists()


# -- unlink -------------------------------------------------------------------------------------


def test_unlink_requires_post(browser: Browser, existing: SliceCredential) -> None:
    response = browser.client.get(UNLINK)
    assert response.status_code == 405
    assert SliceCredential.objects.filter(pk=existing.pk).exists()


def test_unlink_requires_login(client: Client, existing: SliceCredential) -> None:
    response = client.post(UNLINK)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert SliceCredential.objects.filter(pk=existing.pk).exists()


def test_unlink_requires_csrf(user: Any, existing: SliceCredential, slice_api: Slice) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(UNLINK)
    assert response.status_code == 403
    assert SliceCredential.objects.filter(pk=existing.pk).exists()
    assert slice_api.calls() == []


def test_unlink_with_csrf_token_works(
    user: Any,
    existing: SliceCredential,
    slice_api: Slice,
    django_capture_on_commit_callbacks: Any,
) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    page = client.get(AUTHORIZE)
    token = page.context["csrf_token"]
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(UNLINK, {"csrfmiddlewaretoken": str(token)})
    assert response.status_code == 302
    assert not SliceCredential.objects.filter(pk=existing.pk).exists()
    assert len(slice_api.revoke_calls()) == 1


def test_unlink_deletes_revokes_and_signals(
    browser: Browser,
    existing: SliceCredential,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = browser.client.post(UNLINK, {"next": "/bye/"})
    assert response.status_code == 302
    assert response["Location"] == "/bye/"
    assert not SliceCredential.objects.filter(pk=existing.pk).exists()
    assert events == [] and slice_api.revoke_calls() == []  # both wait for the commit
    for callback in callbacks:
        callback()
    (call,) = slice_api.revoke_calls()
    assert parse_qs(call.request.body) == {
        "token": [existing.refresh_token],
        "token_type_hint": ["refresh_token"],
        "client_id": ["test-client-id"],
        "client_secret": ["test-client-secret"],
    }
    assert "Authorization" not in call.request.headers
    assert [name for name, _ in events] == ["credential_unlinked"]
    kwargs = events[0][1]
    assert set(kwargs) == {"credential", "user", "request"}
    assert isinstance(kwargs["credential"], SliceCredential)
    assert kwargs["credential"].user_id == browser.user.pk
    assert kwargs["user"] == browser.user
    assert kwargs["request"].path == UNLINK


def test_unlink_hostile_next_goes_home(browser: Browser, slice_api: Slice) -> None:
    response = browser.client.post(UNLINK, {"next": "//evil.example/"})
    assert response["Location"] == "/"


def test_unlink_without_credential(
    browser_for: Callable[[Any], Browser],
    make_user: Callable[..., Any],
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    browser = browser_for(make_user())
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.client.post(UNLINK)
    assert response.status_code == 302
    assert events == [] and slice_api.calls() == []


@pytest.mark.parametrize(
    "spec",
    [{"status": 500}, {"status": 503}, {"body": requests.ReadTimeout("slow")}],
    ids=["500", "503", "timeout"],
)
def test_revocation_failure_is_logged_and_not_fatal(
    browser: Browser,
    existing: SliceCredential,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
    caplog: pytest.LogCaptureFixture,
    spec: dict[str, Any],
) -> None:
    slice_api.mock.replace(responses.POST, REVOKE_URL, **spec)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.client.post(UNLINK)
    assert response.status_code == 302
    assert not SliceCredential.objects.filter(pk=existing.pk).exists()
    assert len(slice_api.revoke_calls()) == 1
    assert [name for name, _ in events] == ["credential_unlinked"]
    warnings = [r for r in caplog.records if "Revoking a Slice token failed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert existing.refresh_token not in caplog.text


def test_no_revocation_when_turned_off(
    browser: Browser,
    existing: SliceCredential,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    settings.SLICE_CONNECT = {**BASE_CONFIG, "REVOKE_ON_UNLINK": False}
    with django_capture_on_commit_callbacks(execute=True):
        browser.client.post(UNLINK)
    assert not SliceCredential.objects.filter(pk=existing.pk).exists()
    assert slice_api.calls() == []
    assert [name for name, _ in events] == ["credential_unlinked"]


def test_deleting_the_user_unlinks_once(
    user: Any,
    existing: SliceCredential,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    user_pk = user.pk
    with django_capture_on_commit_callbacks(execute=True):
        get_user_model().objects.get(pk=user_pk).delete()
    assert not SliceCredential.objects.filter(pk=existing.pk).exists()
    assert [name for name, _ in events] == ["credential_unlinked"]
    kwargs = events[0][1]
    assert kwargs["user"].pk == user_pk
    assert kwargs["request"] is None
    (call,) = slice_api.revoke_calls()
    assert parse_qs(call.request.body)["token"] == [existing.refresh_token]


def test_unlink_of_an_undecryptable_credential_skips_revocation(
    browser: Browser,
    existing: SliceCredential,
    slice_api: Slice,
    events: list[tuple[str, dict[str, Any]]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET refresh_token = %s WHERE id = %s", [b"junk", existing.pk]
        )
    with django_capture_on_commit_callbacks(execute=True):
        response = browser.client.post(UNLINK)
    assert response.status_code == 302
    assert not SliceCredential.objects.filter(pk=existing.pk).exists()
    assert slice_api.revoke_calls() == []
    assert [name for name, _ in events] == ["credential_unlinked"]


# -- B1 by property: random callbacks -----------------------------------------------------------

PARAM_NAMES = st.sampled_from(
    ["state", "code", "error", "error_description", "error_uri", "iss", "next", "x"]
)
PARAM_VALUES = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="%0123456789ABCDEFabcdef&=;#+", max_size=20),
    st.sampled_from(["access_denied", "https://slice.test", "", "\r\n", "\x00"]),
)


@pytest.fixture
def pending_state(browser: Browser) -> str:
    return browser.start()


@hypothesis_settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(params=st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES), max_size=6))
def test_random_callbacks_without_the_state_are_all_refused(
    browser: Browser, slice_api: Slice, pending_state: str, params: list[tuple[str, str]]
) -> None:
    # One pending attempt serves every example: none of them may consume it.
    state = pending_state
    before = raw_rows()
    calls_before = len(slice_api.calls())
    response = browser.callback(urlencode(params))
    assert 400 <= response.status_code < 500
    assert_headers(response)
    assert not response.has_header("Location")
    assert len(slice_api.calls()) == calls_before
    assert raw_rows() == before
    assert browser.is_pending(state)


@hypothesis_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    extra=st.dictionaries(
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12).filter(
            lambda k: k not in ("state", "code", "error", "error_description", "error_uri", "iss")
        ),
        st.text(max_size=30),
        max_size=4,
    ),
    code=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
    ),
)
def test_unknown_parameters_never_break_a_valid_callback(
    browser: Browser, slice_api: Slice, extra: dict[str, str], code: str
) -> None:
    state = browser.start(next_url="/after/")
    calls_before = len(slice_api.token_calls())
    response = browser.callback(urlencode({**extra, "state": state, "code": code}))
    assert response.status_code == 302
    assert response["Location"] == "/after/"
    assert len(slice_api.token_calls()) == calls_before + 1
    assert parse_qs(slice_api.token_calls()[-1].request.body)["code"] == [code]


def test_next_is_escaped_on_the_authorize_page(browser: Browser) -> None:
    hostile = '/x/"><script>alert(1)</script>'
    body = browser.client.get(AUTHORIZE, {"next": hostile}).content.decode()
    assert "<script>alert(1)</script>" not in body
    assert escape(hostile) in body
