"""services.complete_link: the callback's flow without the view (the view's pages are in
tests/test_views.py, its fuzzing in tests/test_fuzz_callback.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import responses
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest, QueryDict
from django.test import RequestFactory

from slice_connect import services, states, views
from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL

Refusal = services.Refusal


def callback_request(user: Any, query: str) -> HttpRequest:
    request = RequestFactory().get(f"/slice/callback/?{query}")
    request.user = user
    request.session = SessionStore()
    return request


def start(request: HttpRequest, next_url: str | None = "/after/") -> str:
    state = states.new_state()
    states.remember(
        request, state, redirect_uri="https://site.test/cb", use_pkce=True, next_url=next_url
    )
    return state


def refusal(request: HttpRequest, query: str) -> services.LinkRefused:
    with pytest.raises(services.LinkRefused) as refused:
        services.complete_link(request, QueryDict(query))
    return refused.value


def test_links_and_returns_the_attempts_next(user: Any, slice_mock: responses.RequestsMock) -> None:
    slice_mock.post(
        TOKEN_URL,
        json={"access_token": "a-1", "refresh_token": "r-1", "token_type": "bearer"},
    )
    request = callback_request(user, "")
    state = start(request)
    target = services.complete_link(request, QueryDict(f"state={state}&code=the-code"))
    assert target == "/after/"
    assert SliceCredential.objects.get(user=user).refresh_token == "r-1"
    assert refusal(request, f"state={state}&code=the-code").reason is Refusal.UNKNOWN_ATTEMPT


def test_without_next_goes_to_link_success_url(
    user: Any, slice_mock: responses.RequestsMock, slice_settings: Callable[..., None]
) -> None:
    slice_settings(LINK_SUCCESS_URL="/linked/")
    slice_mock.post(TOKEN_URL, json={"access_token": "a", "refresh_token": "r"})
    request = callback_request(user, "")
    state = start(request, next_url=None)
    assert services.complete_link(request, QueryDict(f"state={state}&code=c")) == "/linked/"


@pytest.mark.django_db
def test_refusals_before_anything_is_sent(user: Any, slice_mock: responses.RequestsMock) -> None:
    anonymous = callback_request(AnonymousUser(), "")
    assert refusal(anonymous, "state=s&code=c").reason is Refusal.NOT_LOGGED_IN
    request = callback_request(user, "")
    assert refusal(request, "code=c").reason is Refusal.NO_STATE
    assert refusal(request, "state=a&state=b").reason is Refusal.MALFORMED
    state = start(request)
    assert refusal(request, f"state={state}&error=access_denied").reason is Refusal.DENIED
    state = start(request)
    refused = refusal(request, f"state={state}&error=server_error")
    assert (refused.reason, refused.error) == (Refusal.SLICE_ERROR, "server_error")
    state = start(request)
    assert refusal(request, f"state={state}").reason is Refusal.NO_CODE
    state = start(request)
    assert refusal(request, f"state={state}&code=c&iss=https://evil.test").reason is (
        Refusal.WRONG_ISSUER
    )
    assert len(slice_mock.calls) == 0
    assert not SliceCredential.objects.exists()


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"error": "invalid_grant"}, Refusal.CODE_REFUSED),
        (401, {"error": "invalid_client"}, Refusal.MISCONFIGURED),
        (503, {}, Refusal.UNAVAILABLE),
        (200, {"token_type": "bearer"}, Refusal.UNUSABLE_ANSWER),
    ],
)
def test_exchange_failures_have_a_reason(
    user: Any, slice_mock: responses.RequestsMock, status: int, body: Any, reason: Refusal
) -> None:
    slice_mock.post(TOKEN_URL, status=status, json=body)
    request = callback_request(user, "")
    state = start(request)
    assert refusal(request, f"state={state}&code=c").reason is reason
    assert len(slice_mock.calls) == 1  # a code is sent once, never retried
    assert not SliceCredential.objects.exists()


def test_every_reason_has_a_page() -> None:
    for reason in Refusal:
        page = views.refusal_page(services.LinkRefused(reason, error="no_such_error"))
        assert page.message and page.status in (200, 400, 403, 409, 502)
