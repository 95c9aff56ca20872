"""AsyncSliceClient: the SliceClient contract in async code, on the same transport rules.

Scenarios run through ``async_to_sync``, so the client's thread-sensitive ORM calls come back
to the test's thread (and its database transaction), as they do in a Django async view.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import responses
from asgiref.sync import async_to_sync
from django.utils import timezone

from slice_connect.client import AsyncSliceClient
from slice_connect.exceptions import (
    ApiError,
    NeedsReauth,
    NotLinked,
    ResponseLost,
    ResponseTooLarge,
    TransientError,
)
from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL
from tests.faulty_server import Fault, FaultyServer, token_json
from tests.profiles import pick

pytestmark = pytest.mark.django_db

MakeCredential = Callable[..., SliceCredential]

# As in test_transport: the quick profile halves the timeouts and the drip (same ratios).
CONNECT, READ = pick((0.25, 0.5), (0.5, 1.0))
DRIP = READ / 5  # well inside READ: only the call's deadline can end a dripping answer


@pytest.fixture
def api(settings: Any) -> Callable[[Fault], FaultyServer]:
    servers: list[FaultyServer] = []

    def start(fault: Fault) -> FaultyServer:
        server = FaultyServer(fault).start()
        servers.append(server)
        settings.SLICE_CONNECT = {
            **settings.SLICE_CONNECT,
            "API_BASE_URL": f"{server.url}/api/v1/",
            "TOKEN_URL": f"{server.url}/oauth/token",
            "HTTP_TIMEOUT": (CONNECT, READ),
        }
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.stop()


def run(scenario: Callable[[], Any]) -> Any:
    return async_to_sync(scenario)()


def call(target: Any, method: str = "get", *args: Any, **kwargs: Any) -> Any:
    async def scenario() -> Any:
        async with AsyncSliceClient(target) as client:
            return await getattr(client, method)(*args, **kwargs)

    return run(scenario)


@pytest.mark.parametrize("encoding", ["", "gzip", "deflate"])
def test_get_returns_json_with_any_coding(
    encoding: str, api: Any, user: Any, make_credential: MakeCredential
) -> None:
    credential = make_credential(user)
    server = api(Fault("answer", encoding=encoding))
    assert call(credential, "get", "orders", status="open")["token_type"] == "Bearer"
    (request,) = server.requests
    assert request.path == "/api/v1/orders?status=open"
    assert request.headers["authorization"] == f"Bearer {credential.access_token}"
    assert request.headers["accept-encoding"] == "gzip, deflate"


def test_a_user_works_and_an_unlinked_one_is_not_linked(
    api: Any, user: Any, make_user: Any, make_credential: MakeCredential
) -> None:
    make_credential(user)
    api(Fault("answer"))
    assert call(user, "get", "users/self")["token_type"] == "Bearer"
    with pytest.raises(NotLinked):
        call(make_user(), "get", "users/self")


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        (Fault("drip_status", drip_interval=DRIP), ResponseLost, "timeout"),
        (Fault("drip_headers", drip_interval=DRIP), ResponseLost, "timeout"),
        (Fault("slow_drip", drip_interval=DRIP), ResponseLost, "timeout"),
        (Fault("never_answer"), ResponseLost, "timeout"),
        (Fault("reset"), ResponseLost, "connection_error"),
        (Fault("endless_body"), ResponseTooLarge, "response_too_large"),
        (Fault("bomb"), ResponseTooLarge, "response_too_large"),
    ],
    ids=["drip_status", "drip_headers", "drip_body", "never", "reset", "endless", "bomb"],
)
def test_the_same_bounds_and_classification(
    fault: Fault, error: type[Exception], code: str, api: Any, user: Any, make_credential: Any
) -> None:
    import time
    import tracemalloc

    credential = make_credential(user)
    api(fault)
    tracemalloc.start()
    started = time.monotonic()
    with pytest.raises(error) as excinfo:
        call(credential, "get", "orders")
    elapsed = time.monotonic() - started
    _now, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert type(excinfo.value) is error and excinfo.value.code == code  # type: ignore[attr-defined]
    assert elapsed <= CONNECT + READ + 0.5, f"{elapsed:.2f}s"
    assert peak < 40 * 1024 * 1024


def test_connection_refused_is_never_sent(
    settings: Any, user: Any, make_credential: MakeCredential
) -> None:
    from tests.faulty_server import closed_port

    settings.SLICE_CONNECT = {
        **settings.SLICE_CONNECT,
        "API_BASE_URL": f"http://127.0.0.1:{closed_port()}/",
    }
    with pytest.raises(TransientError) as excinfo:
        call(make_credential(user), "get", "orders")
    assert type(excinfo.value) is TransientError and excinfo.value.code == "connect_error"


def test_an_unencodable_token_is_never_sent(
    api: Any, user: Any, make_credential: MakeCredential
) -> None:
    server = api(Fault("answer"))
    with pytest.raises(TransientError) as excinfo:
        call(make_credential(user, access_token="jeton-\u20ac"), "get", "orders")
    assert excinfo.value.code == "unencodable_request" and server.requests == []


# -- renewal, 401, redirects, paging: with a mocked API (httpx MockTransport) --------------


class MockApi:
    """An ``httpx.MockTransport`` answering from a list, recording requests."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = [(a.status_code, list(a.headers.multi_items()), a.content) for a in answers]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status, headers, content = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        # A stream, as from a real server (content= would mark it consumed already).
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(content))

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


@pytest.fixture
def slice_tokens(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    mock = slice_mock
    mock.add(
        responses.POST,
        TOKEN_URL,
        body=token_json("renewed"),
        content_type="application/json",
    )
    return mock


def with_mock(target: Any, mock: MockApi, method: str, *args: Any, **kwargs: Any) -> Any:
    async def scenario() -> Any:
        async with AsyncSliceClient(target, client=mock.client()) as client:
            result = getattr(client, method)(*args, **kwargs)
            if method == "aiter_collection":
                return [row async for row in result]
            return await result

    return run(scenario)


def test_an_expiring_access_token_is_renewed_first(
    user: Any, make_credential: MakeCredential, slice_tokens: responses.RequestsMock
) -> None:
    credential = make_credential(
        user, access_token_expires_at=timezone.now() + timedelta(seconds=30)
    )
    mock = MockApi(httpx.Response(200, json={"result": {"id": 1}}))
    assert with_mock(credential, mock, "get", "users/self") == {"result": {"id": 1}}
    assert len(slice_tokens.calls) == 1
    assert mock.requests[0].headers["Authorization"] == "Bearer renewed-access-token-0123456789"
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.refresh_token == "renewed-refresh-token-0123456789" and stored.version == 2


def test_401_renews_once_and_retries_once(
    user: Any, make_credential: MakeCredential, slice_tokens: responses.RequestsMock
) -> None:
    credential = make_credential(user)
    mock = MockApi(httpx.Response(401))
    with pytest.raises(ApiError) as excinfo:
        with_mock(credential, mock, "get", "orders")
    assert excinfo.value.status_code == 401
    assert len(mock.requests) == 2 and len(slice_tokens.calls) == 1


def test_needs_reauth_sends_nothing(user: Any, make_credential: MakeCredential) -> None:
    credential = make_credential(user, status=SliceCredential.Status.NEEDS_REAUTH)
    mock = MockApi(httpx.Response(200, json={}))
    with pytest.raises(NeedsReauth):
        with_mock(credential, mock, "get", "orders")
    assert mock.requests == []


@pytest.mark.parametrize(
    ("location", "followed"),
    [("https://slice.test/api/v1/moved", True), ("https://evil.test/steal", False)],
)
def test_redirects_only_within_the_api_origin(
    location: str, followed: bool, user: Any, make_credential: MakeCredential
) -> None:
    credential = make_credential(user)
    mock = MockApi(
        httpx.Response(302, headers={"Location": location}), httpx.Response(200, json={"ok": 1})
    )
    if followed:
        assert with_mock(credential, mock, "get", "orders") == {"ok": 1}
        assert [str(r.url) for r in mock.requests][-1] == location
    else:
        with pytest.raises(ApiError) as excinfo:
            with_mock(credential, mock, "get", "orders")
        assert excinfo.value.code == "redirect_off_origin" and len(mock.requests) == 1


def test_aiter_collection_pages_and_stops_on_a_repeated_page(
    user: Any, make_credential: MakeCredential
) -> None:
    credential = make_credential(user)
    pages = [{"result": [{"id": n} for n in range(i, i + 2)]} for i in (0, 2)]
    mock = MockApi(
        *(httpx.Response(200, json=p) for p in pages), httpx.Response(200, json=pages[1])
    )
    with pytest.raises(ApiError) as excinfo:
        with_mock(credential, mock, "aiter_collection", "orders", limit=2)
    assert excinfo.value.code == "repeated_page"
    offsets = [re.search(r"offset=(\d+)", str(r.url)).group(1) for r in mock.requests]  # type: ignore[union-attr]
    assert offsets == ["0", "2", "4"]

    short = MockApi(httpx.Response(200, json={"result": [{"id": 1}]}))
    assert with_mock(credential, short, "aiter_collection", "items") == [{"id": 1}]


def test_using_it_without_async_with_is_a_clear_error(
    user: Any, make_credential: MakeCredential
) -> None:
    async def scenario() -> None:
        await AsyncSliceClient(user).get("orders")

    with pytest.raises(RuntimeError, match="async with"):
        run(scenario)
