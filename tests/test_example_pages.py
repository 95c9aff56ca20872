"""The example project's home page: link status and friendly Slice errors (no browser)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import responses

from example_project.views import dollars, in_words
from slice_connect.models import SliceCredential
from tests.conftest import API

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.urls_example")]

EXAMPLE_TEMPLATES = Path(__file__).resolve().parent.parent / "example_project" / "templates"


@pytest.fixture(autouse=True)
def example_pages(settings: Any) -> None:
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [EXAMPLE_TEMPLATES]}]


@pytest.fixture
def logged_in(client: Any, user: Any) -> Any:
    client.force_login(user)
    return client


def test_home_needs_login(client: Any) -> None:
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/")


def test_not_linked_offers_connect(logged_in: Any) -> None:
    page = logged_in.get("/").content.decode()
    assert 'id="link-status">Not linked<' in page
    assert 'action="/slice/authorize/"' in page
    assert "Connect Slice" in page
    assert 'action="/slice/unlink/"' not in page


def test_linked_shows_profile_and_orders(
    logged_in: Any, user: Any, make_credential: Any, slice_mock: responses.RequestsMock
) -> None:
    make_credential(user)
    slice_mock.get(f"{API}users/self", json={"result": {"firstName": "Ada", "lastName": "Byron"}})
    orders = [
        {"orderTitle": "Older", "orderDate": "2025-01-02", "orderTotal": 123456},
        {"orderTitle": "Newer", "orderDate": "2025-03-04", "orderTotal": 999},
    ]
    slice_mock.get(f"{API}orders", json={"result": orders, "currentTime": 0})
    page = logged_in.get("/").content.decode()
    assert 'id="link-status">Linked<' in page
    assert "Ada Byron" in page
    assert page.index("Newer") < page.index("Older")
    assert "$1,234.56" in page and "$9.99" in page
    assert 'action="/slice/unlink/"' in page
    assert "Connect Slice" not in page
    auth = {c.request.headers["Authorization"] for c in slice_mock.calls}
    assert auth == {f"Bearer {SliceCredential.objects.get(user=user).access_token}"}


@pytest.mark.parametrize(
    ("status", "message", "reconnect"),
    [
        (503, "Slice is not answering right now.", False),
        (404, "Slice answered with an error (HTTP 404).", True),
    ],
)
def test_api_errors_are_friendly(
    logged_in: Any,
    user: Any,
    make_credential: Any,
    slice_mock: responses.RequestsMock,
    status: int,
    message: str,
    reconnect: bool,
) -> None:
    make_credential(user)
    slice_mock.get(f"{API}users/self", status=status, json={"error": "nope"})
    response = logged_in.get("/")
    page = response.content.decode()
    assert response.status_code == 200
    assert message in page
    assert ("Reconnect Slice" in page) is reconnect


def test_needs_reauth_offers_reconnect_without_calling_slice(
    logged_in: Any, user: Any, make_credential: Any, slice_mock: responses.RequestsMock
) -> None:
    make_credential(user, status="needs_reauth", status_reason="invalid_grant")
    page = logged_in.get("/").content.decode()
    assert 'id="link-status">Needs re-link<' in page
    assert "Your Slice link stopped working (Slice refused the refresh token)." in page
    assert "Reconnect Slice" in page
    assert not slice_mock.calls


def test_formatting_helpers() -> None:
    assert dollars(199) == "$1.99"
    assert dollars(None) == "-"
    assert in_words(timedelta(days=7)) == "7 days"
    assert in_words(timedelta(minutes=1)) == "1 minute"
    assert in_words(timedelta(seconds=90)) == "90 seconds"
