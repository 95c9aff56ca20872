"""SliceClient: bearer calls to the Slice REST API, renewing tokens itself (R26, R33, B12).

Rule and battery numbers are those of docs/threat-model.rst.

Most tests mock https://slice.test with ``responses``; the last one runs against the
django-oauth-toolkit sandbox in ``live_server``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from django.utils import timezone

from example_project.slice_sandbox.data import ORDER_COUNT, build_dataset
from slice_connect.client import SliceClient
from slice_connect.exceptions import ApiError, NeedsReauth, NotLinked, TransientError
from slice_connect.models import SliceCredential
from tests.conftest import API, TOKEN_URL

from .flow import link

EVIL = "https://evil.test/"
NEW_ACCESS = "renewed-access-77d0c1a9"
NEW_REFRESH = "renewed-refresh-0b6e2f18"

MakeCredential = Callable[..., SliceCredential]


@pytest.fixture
def credential(user: Any, make_credential: MakeCredential) -> SliceCredential:
    """A fresh credential: the access token is good for an hour."""
    return make_credential(user)


@pytest.fixture
def expiring(user: Any, make_credential: MakeCredential) -> SliceCredential:
    """A credential whose access token is inside ACCESS_TOKEN_LEEWAY."""
    return make_credential(user, access_token_expires_at=timezone.now() + timedelta(seconds=60))


def add_token(mock: responses.RequestsMock) -> None:
    mock.add(
        responses.POST,
        TOKEN_URL,
        json={
            "access_token": NEW_ACCESS,
            "refresh_token": NEW_REFRESH,
            "token_type": "Bearer",
            "expires_in": 3600,
        },
    )


def api_url(path: str) -> re.Pattern[str]:
    """Match ``API + path`` with any query string."""
    return re.compile(re.escape(API + path) + r"(\?.*)?$")


def add_api(
    mock: responses.RequestsMock,
    path: str,
    *,
    status: int = 200,
    body: Any = None,
    method: str = responses.GET,
    headers: dict[str, str] | None = None,
) -> None:
    payload = {"result": body if body is not None else {}, "currentTime": 1}
    mock.add(method, api_url(path), json=payload, status=status, headers=headers)


def token_calls(mock: responses.RequestsMock) -> int:
    return sum(1 for call in mock.calls if call.request.url == TOKEN_URL)


def api_calls(mock: responses.RequestsMock) -> list[Any]:
    return [call for call in mock.calls if str(call.request.url).startswith(API)]


def bearer(call: Any) -> str | None:
    value = call.request.headers.get("Authorization")
    return None if value is None else str(value)


# -- construction ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_client_for_user_and_for_credential(
    user: Any, credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    with SliceClient(user) as by_user:
        assert by_user.credential.pk == credential.pk
    with SliceClient(credential) as by_credential:
        assert by_credential.credential is credential
        assert str(credential.access_token) not in repr(by_credential)


@pytest.mark.django_db
def test_user_without_credential_is_not_linked(make_user: Callable[..., Any]) -> None:
    with pytest.raises(NotLinked):
        SliceClient(make_user())


# -- what a request looks like -------------------------------------------------------------


@pytest.mark.django_db
def test_sends_bearer_header_and_accepts_json(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_api(slice_mock, "users/self", body={"userEmail": "alice@example.com"})
    with SliceClient(credential) as client:
        body = client.get("users/self")
    assert body == {"result": {"userEmail": "alice@example.com"}, "currentTime": 1}
    (call,) = slice_mock.calls
    assert call.request.url == API + "users/self"
    assert bearer(call) == f"Bearer {credential.access_token}"
    assert call.request.headers["Accept"] == "application/json"
    assert str(credential.access_token) not in str(call.request.url)


@pytest.mark.django_db
def test_paths_are_relative_to_api_base_url(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_api(slice_mock, "orders/-42")
    add_api(slice_mock, "orders")
    with SliceClient(credential) as client:
        client.get("orders/-42")
        client.get("orders", since=5)
        assert client.url_for("items") == API + "items"
    urls = [str(call.request.url) for call in slice_mock.calls]
    assert urls == [API + "orders/-42", API + "orders?since=5"]


@pytest.mark.django_db
def test_absolute_href_on_same_origin_is_accepted(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_api(slice_mock, "orders/7", body={"href": API + "orders/7"})
    with SliceClient(credential) as client:
        client.get("https://slice.test/api/v1/orders/7")
        client.get("HTTPS://SLICE.TEST/api/v1/orders/7")
    assert [bearer(c) for c in slice_mock.calls] == [f"Bearer {credential.access_token}"] * 2


REFUSED_PATHS = [
    "https://evil.test/api/v1/orders",
    "http://slice.test/api/v1/orders",
    "//evil.test/api/v1/orders",
    "///evil.test/api/v1/orders",
    "\\\\evil.test\\api",
    "/\\evil.test/api",
    "orders\\..\\..\\x",
    " //evil.test/x",
    "\t//evil.test/x",
    "https://slice.test@evil.test/api/v1/orders",
    "https://slice.test.evil.test/api/v1/orders",
    "https://slice.test:8443/api/v1/orders",
    "ftp://slice.test/api/v1/orders",
]


@pytest.mark.django_db
@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_other_origins_are_refused_before_any_request(
    path: str, expiring: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_token(slice_mock)
    slice_mock.add(responses.GET, re.compile(".*"), json={"result": {}})
    with SliceClient(expiring) as client:
        with pytest.raises(ValueError, match="Refusing"):
            client.get(path)
    # Not even the renewal the expiring token would need.
    assert len(slice_mock.calls) == 0


# -- renewal from the client -----------------------------------------------------------------


@pytest.mark.django_db
def test_token_inside_leeway_is_renewed_first(
    expiring: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    old_access = expiring.access_token
    add_token(slice_mock)
    add_api(slice_mock, "users/self")
    with SliceClient(expiring) as client:
        client.get("users/self")
    assert [str(c.request.url) for c in slice_mock.calls] == [TOKEN_URL, API + "users/self"]
    assert bearer(slice_mock.calls[1]) == f"Bearer {NEW_ACCESS}"
    assert old_access != NEW_ACCESS
    stored = SliceCredential.objects.get(pk=expiring.pk)
    assert stored.access_token == NEW_ACCESS and stored.refresh_token == NEW_REFRESH


@pytest.mark.django_db
def test_401_once_renews_once_and_retries_once(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    old_access = credential.access_token
    add_token(slice_mock)
    slice_mock.add(responses.GET, api_url("orders"), json={"error": "invalid_token"}, status=401)
    add_api(slice_mock, "orders", body=[{"id": 1}])
    with SliceClient(credential) as client:
        body = client.get("orders")
    assert body["result"] == [{"id": 1}]
    assert token_calls(slice_mock) == 1
    calls = api_calls(slice_mock)
    assert [bearer(c) for c in calls] == [f"Bearer {old_access}", f"Bearer {NEW_ACCESS}"]


@pytest.mark.django_db
def test_401_forever_one_refresh_two_calls_then_api_error(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_token(slice_mock)
    slice_mock.add(responses.GET, api_url("orders"), json={"error": "invalid_token"}, status=401)
    with SliceClient(credential) as client:
        with pytest.raises(ApiError) as excinfo:
            client.get("orders")
    assert excinfo.value.status_code == 401
    assert token_calls(slice_mock) == 1
    assert len(api_calls(slice_mock)) == 2
    for secret in (NEW_ACCESS, NEW_REFRESH, "test-client-secret"):
        assert secret not in str(excinfo.value) and secret not in repr(excinfo.value)


@pytest.mark.django_db
def test_401_after_a_sibling_renewed_uses_its_token_without_refreshing(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    """Our token was replaced meanwhile: the 401 makes us pick up the new one, not spend."""
    add_token(slice_mock)
    slice_mock.add(responses.GET, api_url("orders"), json={"error": "invalid_token"}, status=401)
    add_api(slice_mock, "orders")
    with SliceClient(credential) as client:
        sibling = SliceCredential.objects.get(pk=credential.pk)
        sibling.access_token = "sibling-access"  # type: ignore[assignment]
        sibling.version += 1
        sibling.save()
        client.get("orders")
    assert token_calls(slice_mock) == 0
    assert [bearer(c) for c in api_calls(slice_mock)][1] == "Bearer sibling-access"


@pytest.mark.django_db
def test_403_does_not_refresh(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_token(slice_mock)
    slice_mock.add(
        responses.GET, api_url("orders"), json={"error": "insufficient_scope"}, status=403
    )
    with SliceClient(credential) as client:
        with pytest.raises(ApiError) as excinfo:
            client.get("orders")
    assert excinfo.value.status_code == 403
    assert token_calls(slice_mock) == 0
    assert len(api_calls(slice_mock)) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        (429, {"Retry-After": "17"}, 17.0),
        (429, {}, None),
        (500, {}, None),
        (502, {}, None),
        (503, {"Retry-After": "120"}, 120.0),
        (504, {}, None),
    ],
)
def test_429_and_5xx_are_transient(
    status: int,
    headers: dict[str, str],
    retry_after: float | None,
    credential: SliceCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    add_api(slice_mock, "orders", status=status, headers=headers)
    with SliceClient(credential) as client:
        with pytest.raises(TransientError) as excinfo:
            client.get("orders")
    assert excinfo.value.code == f"http_{status}"
    assert excinfo.value.retry_after == retry_after
    assert token_calls(slice_mock) == 0
    assert len(slice_mock.calls) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("error", "code"),
    [
        (requests.ConnectionError("refused"), "connection_error"),
        (requests.ConnectTimeout("connect timed out"), "connect_error"),
        (requests.ReadTimeout("read timed out"), "timeout"),
    ],
    ids=["connection-error", "connect-timeout", "read-timeout"],
)
def test_network_errors_are_transient(
    error: Exception, code: str, credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(responses.GET, api_url("orders"), body=error)
    with SliceClient(credential) as client:
        with pytest.raises(TransientError) as excinfo:
            client.get("orders")
    assert excinfo.value.code == code
    assert str(credential.access_token) not in str(excinfo.value)


# -- redirects (R26, B12) ------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "location",
    [
        "https://evil.test/collect",
        "//evil.test/collect",
        "http://slice.test/api/v1/orders",
        "https://slice.test:444/api/v1/orders",
    ],
)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_off_origin_or_to_http_is_not_followed(
    location: str, status: int, credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(responses.GET, api_url("orders"), status=status, headers={"Location": location})
    slice_mock.add(responses.GET, re.compile(r"https://evil\.test/.*"), json={})
    slice_mock.add(responses.GET, re.compile(r"http://slice\.test/.*"), json={})
    slice_mock.add(responses.GET, re.compile(r"https://slice\.test:444/.*"), json={})
    with SliceClient(credential) as client:
        with pytest.raises(ApiError) as excinfo:
            client.get("orders")
    assert excinfo.value.code == "redirect_off_origin"
    assert excinfo.value.status_code == status
    # Only the first request left, so no Authorization header went anywhere else.
    assert [str(c.request.url) for c in slice_mock.calls] == [API + "orders"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "location", ["/api/v1/orders/page2", "page2", "https://slice.test/api/v1/page2"]
)
def test_same_origin_redirect_is_followed_with_the_header(
    location: str, credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(responses.GET, api_url("orders"), status=302, headers={"Location": location})
    target = "orders/page2" if location.startswith("/") else "page2"
    add_api(slice_mock, target, body=[{"id": 2}])
    with SliceClient(credential) as client:
        assert client.get("orders")["result"] == [{"id": 2}]
    assert [str(c.request.url) for c in slice_mock.calls] == [API + "orders", API + target]
    assert [bearer(c) for c in slice_mock.calls] == [f"Bearer {credential.access_token}"] * 2


@pytest.mark.django_db
def test_redirect_loop_is_bounded(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(
        responses.GET, api_url("orders"), status=302, headers={"Location": API + "orders"}
    )
    with SliceClient(credential) as client:
        with pytest.raises(ApiError) as excinfo:
            client.get("orders")
    assert excinfo.value.code == "redirects"
    assert len(slice_mock.calls) == 4


# -- dead credentials --------------------------------------------------------------------------


@pytest.mark.django_db
def test_needs_reauth_credential_sends_nothing(
    user: Any, make_credential: MakeCredential, slice_mock: responses.RequestsMock
) -> None:
    make_credential(
        user,
        status=SliceCredential.Status.NEEDS_REAUTH,
        status_reason=SliceCredential.Reason.INVALID_GRANT,
    )
    add_token(slice_mock)
    add_api(slice_mock, "users/self")
    with SliceClient(user) as client:
        with pytest.raises(NeedsReauth) as excinfo:
            client.get("users/self")
    assert excinfo.value.reason == SliceCredential.Reason.INVALID_GRANT
    assert len(slice_mock.calls) == 0


@pytest.mark.django_db
def test_refresh_refused_during_call_raises_needs_reauth(
    expiring: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(responses.POST, TOKEN_URL, json={"error": "invalid_grant"}, status=400)
    add_api(slice_mock, "users/self")
    with SliceClient(expiring) as client:
        with pytest.raises(NeedsReauth):
            client.get("users/self")
        with pytest.raises(NeedsReauth) as excinfo:
            client.get("users/self")  # no second refresh
    assert excinfo.value.reason == SliceCredential.Reason.INVALID_GRANT
    assert client.credential.status_reason == SliceCredential.Reason.INVALID_GRANT
    assert token_calls(slice_mock) == 1
    assert api_calls(slice_mock) == []


# -- collections -------------------------------------------------------------------------------


def paged(rows: list[dict[str, Any]]) -> Callable[[Any], tuple[int, dict[str, str], str]]:
    def callback(request: Any) -> tuple[int, dict[str, str], str]:
        query = parse_qs(urlsplit(request.url).query)
        offset, limit = int(query["offset"][0]), int(query["limit"][0])
        page = rows[offset : offset + limit]
        return 200, {"Content-Type": "application/json"}, json.dumps({"result": page})

    return callback


def queries(mock: responses.RequestsMock) -> list[dict[str, list[str]]]:
    return [parse_qs(urlsplit(str(c.request.url)).query) for c in mock.calls]


@pytest.mark.django_db
@pytest.mark.parametrize("resource", ["orders", "items", "shipments"])
def test_iter_collection_pages_until_a_short_page(
    resource: str, credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    rows = [{"id": n} for n in range(23)]
    slice_mock.add_callback(responses.GET, api_url(resource), callback=paged(rows))
    with SliceClient(credential) as client:
        got = list(client.iter_collection(resource, since=1700000000000, limit=10))
    assert got == rows
    assert queries(slice_mock) == [
        {"limit": ["10"], "offset": [str(offset)], "since": ["1700000000000"]}
        for offset in (0, 10, 20)
    ]


@pytest.mark.django_db
def test_iter_collection_exact_multiple_needs_one_empty_page(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    rows = [{"id": n} for n in range(20)]
    slice_mock.add_callback(responses.GET, api_url("orders"), callback=paged(rows))
    with SliceClient(credential) as client:
        assert list(client.iter_collection("orders", limit=10, status="open")) == rows
    assert [q["offset"] for q in queries(slice_mock)] == [["0"], ["10"], ["20"]]
    assert all(q["status"] == ["open"] and "since" not in q for q in queries(slice_mock))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("resource", "limit"),
    [("mailboxes", 10), ("users/self", 10), ("../orders", 10), ("orders", 0), ("orders", 1001)],
)
def test_iter_collection_rejects_other_resources_and_limits(
    resource: str, limit: int, credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    with SliceClient(credential) as client:
        with pytest.raises(ValueError):
            list(client.iter_collection(resource, limit=limit))
    assert len(slice_mock.calls) == 0


@pytest.mark.django_db
def test_iter_collection_rejects_a_page_without_result_list(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(responses.GET, api_url("orders"), json={"result": {"oops": 1}})
    with SliceClient(credential) as client:
        with pytest.raises(ApiError):
            list(client.iter_collection("orders"))


@pytest.mark.django_db
def test_iter_collection_stops_on_a_repeated_page(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    """A server that ignores ``offset`` returns the first page for ever: stop, loudly."""
    page = {"result": [{"id": n} for n in range(10)]}
    slice_mock.add(responses.GET, api_url("orders"), json=page)
    seen: list[dict[str, Any]] = []
    with SliceClient(credential) as client:
        with pytest.raises(ApiError) as excinfo:
            seen.extend(client.iter_collection("orders", limit=10))
    assert excinfo.value.code == "repeated_page"
    assert len(slice_mock.calls) == 2  # the repeat is detected on the second page
    assert seen == page["result"]  # the first page was yielded once, never twice


@pytest.mark.django_db
def test_iter_collection_stops_after_api_max_pages(
    credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    slice_settings: Callable[..., None],
) -> None:
    slice_settings(API_MAX_PAGES=5)
    rows = [{"id": n} for n in range(1000)]  # 100 full pages of 10
    slice_mock.add_callback(responses.GET, api_url("orders"), callback=paged(rows))
    with SliceClient(credential) as client:
        got: list[dict[str, Any]] = []
        with pytest.raises(ApiError) as excinfo:
            got.extend(client.iter_collection("orders", limit=10))
    assert excinfo.value.code == "too_many_pages"
    assert len(slice_mock.calls) == 5 and got == rows[:50]


@pytest.mark.django_db
@pytest.mark.parametrize("value", [0, -1, "10", 2.5, True])
def test_api_max_pages_must_be_a_positive_integer(
    value: Any,
    credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    slice_settings: Callable[..., None],
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    slice_settings(API_MAX_PAGES=value)
    with SliceClient(credential) as client, pytest.raises(ImproperlyConfigured):
        list(client.iter_collection("orders"))
    assert len(slice_mock.calls) == 0


@pytest.mark.django_db
def test_stream_is_refused(credential: SliceCredential, slice_mock: responses.RequestsMock) -> None:
    with SliceClient(credential) as client, pytest.raises(TypeError):
        client.request("GET", "orders", stream=True)
    assert len(slice_mock.calls) == 0


# -- cost -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_hundred_calls_with_a_fresh_token_never_refresh(
    credential: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    add_token(slice_mock)
    add_api(slice_mock, "users/self")
    with SliceClient(credential) as client:
        for _ in range(100):
            client.get("users/self")
    assert token_calls(slice_mock) == 0
    assert len(slice_mock.calls) == 100


@pytest.mark.django_db
def test_one_get_with_a_fresh_token_runs_no_query(
    user: Any,
    credential: SliceCredential,
    slice_mock: responses.RequestsMock,
    django_assert_num_queries: Any,
) -> None:
    add_api(slice_mock, "users/self")
    with django_assert_num_queries(1):  # loading the credential
        client = SliceClient(user)
    with client:
        for _ in range(3):
            with django_assert_num_queries(0):
                client.get("users/self")


# -- against the real OAuth server ---------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_live_renew_then_page_all_orders(
    slice_server: Any, user: Any, browser_session: Any
) -> None:
    assert link(browser_session(user), slice_server.url).status_code == 302
    linked = SliceCredential.objects.get(user=user)
    SliceCredential.objects.filter(pk=linked.pk).update(
        access_token_expires_at=timezone.now() - timedelta(minutes=1)
    )
    assert slice_server.token_requests("refresh_token") == 0

    with SliceClient(user) as client:
        body = client.get("users/self")
        assert "result" in body and "currentTime" in body
        assert slice_server.token_requests("refresh_token") == 1
        orders = list(client.iter_collection("orders", limit=10))
    assert slice_server.token_requests("refresh_token") == 1

    renewed = SliceCredential.objects.get(pk=linked.pk)
    assert renewed.version == linked.version + 1
    assert renewed.refresh_token != linked.refresh_token
    expected = build_dataset(user, f"{slice_server.url}/api/v1").newest_first("orders")
    assert len(orders) == ORDER_COUNT
    assert [o["href"] for o in orders] == [o["href"] for o in expected]
