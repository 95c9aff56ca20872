"""Fixtures shared by the whole suite.

Tests that need a service carry a marker (``postgres``, ``redis``, ``browser``). Where the
service is missing they skip with the reason; where ``SLICE_CONNECT_REQUIRE`` names it
(comma-separated, or ``all``), as ``.ci/run`` does, they fail instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hypothesis  # imported before any test: a late import crashed CPython 3.11.7 AST
import pytest
import requests
import responses
from django.contrib.auth import get_user_model
from django.utils import timezone
from urllib3.exceptions import MaxRetryError
from urllib3.exceptions import SSLError as Urllib3SSLError

from slice_connect.models import SliceCredential
from slice_connect.signals import credential_renewal_failed
from tests import profiles
from tests import settings as test_settings

# Quick by default, long with SLICE_CONNECT_TEST_PROFILE=long (tests/profiles.py).
hypothesis.settings.register_profile("ci", max_examples=1000)
hypothesis.settings.register_profile("dev", max_examples=200)
hypothesis.settings.load_profile(profiles.HYPOTHESIS_PROFILE)

# The mocked Slice: SLICE_CONNECT as tests/settings.py (the one place it is written)
# configures it; tests change it with ``{**BASE_CONFIG, ...}``.
BASE_CONFIG: dict[str, Any] = dict(test_settings.SLICE_CONNECT)
AUTHORIZE_URL = BASE_CONFIG["AUTHORIZE_URL"]
TOKEN_URL = BASE_CONFIG["TOKEN_URL"]
REVOKE_URL = BASE_CONFIG["REVOKE_URL"]
API = BASE_CONFIG["API_BASE_URL"]
API_URL = f"{API}users/self"

REDIS_URL = os.environ.get("SLICE_CONNECT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CHROMIUM = os.environ.get("SLICE_CONNECT_TEST_CHROMIUM", "/usr/bin/chromium")


def required_services() -> set[str]:
    return {s.strip() for s in os.environ.get("SLICE_CONNECT_REQUIRE", "").split(",") if s.strip()}


def service_missing(service: str, reason: str) -> None:
    """Skip, or fail where CI requires ``service``."""
    required = required_services()
    if service in required or "all" in required:
        pytest.fail(f"{reason} (SLICE_CONNECT_REQUIRE={os.environ['SLICE_CONNECT_REQUIRE']})")
    pytest.skip(reason)


def _redis_reachable() -> bool:
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1):
            return True
    except OSError:
        return False


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"slice_connect test profile: {profiles.PROFILE} "
        f"(SLICE_CONNECT_TEST_PROFILE), hypothesis profile: {profiles.HYPOTHESIS_PROFILE}"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres"):
        from django.conf import settings

        engine = settings.DATABASES["default"]["ENGINE"]
        if "postgresql" not in engine:
            service_missing(
                "postgres",
                "needs PostgreSQL: run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/test",
            )
    if item.get_closest_marker("redis") and not _redis_reachable():
        service_missing("redis", f"needs Redis at {REDIS_URL} (SLICE_CONNECT_TEST_REDIS_URL)")
    if item.get_closest_marker("browser") and not shutil.which(CHROMIUM):
        service_missing("browser", f"needs Chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="session", autouse=True)
def _close_stray_connections(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Close connections live-server threads still hold when the session ends.

    A browser's keep-alive connection can outlive its test, and the server thread serving
    it keeps a PostgreSQL session open, so the test database could not be dropped.
    """
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _close_kept_alive_slice_connections() -> Iterator[None]:
    """Close the test thread's kept-alive connections to Slice after each test.

    slice_connect.http keeps one OAuth session per thread. A connection it kept open to the
    live server would keep one of the server's request threads alive past the session, and
    Python 3.13 aborts when such a daemon thread writes to stderr at interpreter shutdown.
    """
    yield
    from slice_connect import http

    http.close_thread_session()


# -- users and credentials ---------------------------------------------------------------


@pytest.fixture
def make_user(db: Any) -> Callable[..., Any]:
    def make(username: str | None = None, **fields: Any) -> Any:
        username = username or f"user-{secrets.token_hex(4)}"
        fields.setdefault("email", f"{username}@example.com")
        return get_user_model().objects.create_user(username=username, password="pw", **fields)

    return make


@pytest.fixture
def user(make_user: Callable[..., Any]) -> Any:
    return make_user("alice")


@pytest.fixture
def make_credential(db: Any) -> Callable[..., SliceCredential]:
    """Create a credential directly, with fresh-looking tokens unless told otherwise."""

    def make(user: Any, **fields: Any) -> SliceCredential:
        now = timezone.now()
        values: dict[str, Any] = {
            "access_token": f"access-{secrets.token_hex(8)}",
            "refresh_token": f"refresh-{secrets.token_hex(8)}",
            "access_token_expires_at": now + timedelta(hours=1),
            "refresh_token_expires_at": now + timedelta(days=14),
        }
        values.update(fields)
        return SliceCredential.objects.create(user=user, **values)

    return make


# -- settings ----------------------------------------------------------------------------------


@pytest.fixture
def failures() -> Iterator[list[dict[str, Any]]]:
    """The keyword arguments of every ``credential_renewal_failed`` sent during the test."""
    events: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        events.append(kwargs)

    credential_renewal_failed.connect(receiver)
    yield events
    credential_renewal_failed.disconnect(receiver)


@pytest.fixture
def slice_settings(settings: Any) -> Callable[..., None]:
    """``slice_settings(RENEW_WITHIN=..., ...)``: change SLICE_CONNECT keys for one test.

    The rest of tests/settings.py's SLICE_CONNECT stays; pytest-django restores it after.
    """

    def update(**values: Any) -> None:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, **values}

    return update


# -- Slice, mocked (for fault injection and unit edges) -----------------------------------------


@pytest.fixture
def slice_mock() -> Iterator[responses.RequestsMock]:
    """Slice at ``https://slice.test``: nothing answers until a test registers it.

    A request to a URL nobody registered fails the test (``ConnectionError``); registered
    answers need not all be used.
    """
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


# -- the Slice sandbox as a live peer ---------------------------------------------------------


@dataclass
class SliceServer:
    """The sandbox (django-oauth-toolkit) running in the live server, configured as Slice."""

    url: str
    client_id: str
    client_secret: str
    redirect_uri: str

    def token_requests(self, grant_type: str | None = None) -> int:
        from example_project.slice_sandbox.models import TokenRequest

        rows = TokenRequest.objects.all()
        if grant_type:
            rows = rows.filter(grant_type=grant_type)
        return rows.count()


@pytest.fixture
def slice_server(live_server: Any, settings: Any) -> Iterator[SliceServer]:
    """Point SLICE_CONNECT at the sandbox inside ``live_server`` and register our client."""
    from example_project.slice_sandbox.setup import ensure_application

    base = live_server.url
    server = SliceServer(
        url=base,
        client_id=f"client-{secrets.token_hex(6)}",
        client_secret=f"secret-{secrets.token_hex(16)}",
        redirect_uri=f"{base}/slice/callback/",
    )
    ensure_application(server.client_id, server.client_secret, [server.redirect_uri])
    settings.SLICE_CONNECT = {
        "CLIENT_ID": server.client_id,
        "CLIENT_SECRET": server.client_secret,
        "AUTHORIZE_URL": f"{base}/oauth/authorize",
        "TOKEN_URL": f"{base}/oauth/token",
        "REVOKE_URL": f"{base}/oauth/revoke",
        "API_BASE_URL": f"{base}/api/v1/",
        "REDIRECT_URI": server.redirect_uri,
    }
    yield server


@pytest.fixture
def browser_session(live_server: Any) -> Iterator[Callable[[Any], requests.Session]]:
    """A ``requests`` session logged in as ``user`` on the live server (a real cookie jar).

    Sessions are closed before the live server stops: a keep-alive connection outliving it
    makes Django's server thread touch the shared test database from the wrong thread.
    """
    sessions: list[requests.Session] = []

    def make(user: Any) -> requests.Session:
        from django.conf import settings as django_settings
        from django.contrib.sessions.backends.db import SessionStore

        store = SessionStore()
        store["_auth_user_id"] = str(user.pk)
        store["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        store["_auth_user_hash"] = user.get_session_auth_hash()
        store.save()
        session = requests.Session()
        session.cookies.set(django_settings.SESSION_COOKIE_NAME, store.session_key)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


def certificate_error(url: str = "https://slice.test/") -> requests.exceptions.SSLError:
    """What requests raises when a certificate fails verification (before sending)."""
    cause = ssl.SSLCertVerificationError(1, "certificate verify failed")
    return requests.exceptions.SSLError(MaxRetryError(None, url, Urllib3SSLError(cause)))  # type: ignore[arg-type]


def query_of(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)
