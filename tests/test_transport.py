"""One bounded transport for the four calls to Slice (docs/threat-model.rst R39-R41, R45).

Each of the code exchange, the refresh (through ``services.renew``, the real path, which
retries a lost answer once), the revocation and an API call meets a raw-socket server that
drips its status line, its headers or its body one byte at a time (each byte well inside the
read timeout, so only a wall-clock deadline ends the call), sends an endless body, answers
compressed (gzip and deflate, unasked), or sends a compression bomb. Every call must end
within its budget (connect + read) plus 0.5 s per attempt, with a bounded peak memory, and
end in the taxonomy: never sent, sent but the answer lost, or answered.

Run with ``-s`` to print the table (call x fault -> outcome, elapsed against the budget,
peak memory).
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from slice_connect import oauth, services
from slice_connect.client import SliceClient
from slice_connect.exceptions import (
    ApiError,
    ResponseLost,
    ResponseTooLarge,
    SliceConnectError,
    TransientError,
)
from slice_connect.models import SliceCredential
from tests.faulty_server import Fault, FaultyServer
from tests.profiles import pick

pytestmark = pytest.mark.django_db

# The long profile's timeouts; the quick one halves them (and the drip), keeping the ratios:
# the dripping calls wait for their whole budget, which is most of this module's time.
CONNECT, READ = pick((0.25, 0.5), (0.5, 1.0))
BUDGET = CONNECT + READ
SLACK = 0.5
DRIP = READ / 5  # well inside READ: per-recv timeouts never fire, only the deadline can
MiB = 1024 * 1024

FAULTS = {
    "drip_status": Fault("drip_status", drip_interval=DRIP),
    "drip_headers": Fault("drip_headers", drip_interval=DRIP),
    "drip_body": Fault("slow_drip", drip_interval=DRIP),
    "endless_body": Fault("endless_body"),
    "gzip": Fault("answer", encoding="gzip"),
    "deflate": Fault("answer", encoding="deflate"),
    "bomb": Fault("bomb"),
}

#: fault -> the outcome every call must have ("ok", or the answer lost / too large).
OUTCOMES = {
    "drip_status": "lost",
    "drip_headers": "lost",
    "drip_body": "lost",
    "endless_body": "too_large",
    "gzip": "ok",
    "deflate": "ok",
    "bomb": "too_large",
}


@dataclass
class Outcome:
    result: Any
    error: SliceConnectError | None
    elapsed: float
    peak: int


def measured(call: Callable[[], Any]) -> Outcome:
    tracemalloc.start()
    started = time.monotonic()
    try:
        result, error = call(), None
    except SliceConnectError as exc:
        result, error = None, exc
    elapsed = time.monotonic() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return Outcome(result, error, elapsed, peak)


def report(call: str, fault: str, outcome: Outcome, attempts: int) -> None:
    what = "ok" if outcome.error is None else f"{type(outcome.error).__name__}"
    code = "" if outcome.error is None else f"({outcome.error.code})"
    print(
        f"\ntransport {call:9} {fault:13} {what + code:40} attempts={attempts} "
        f"elapsed={outcome.elapsed:5.2f}s budget={attempts * BUDGET:.1f}s "
        f"peak={outcome.peak / MiB:6.2f} MiB"
    )


@pytest.fixture
def server(request: pytest.FixtureRequest, settings: Any) -> Iterator[FaultyServer]:
    fault = FAULTS[request.param]
    with FaultyServer(fault) as running:
        settings.SLICE_CONNECT = {
            **settings.SLICE_CONNECT,
            "TOKEN_URL": f"{running.url}/oauth/token",
            "REVOKE_URL": f"{running.url}/oauth/revoke",
            "API_BASE_URL": f"{running.url}/api/v1/",
            "HTTP_TIMEOUT": (CONNECT, READ),
        }
        yield running


def check(outcome: Outcome, fault: str, attempts: int, *, memory: int) -> None:
    assert outcome.elapsed <= attempts * BUDGET + SLACK, f"{outcome.elapsed:.2f}s over budget"
    assert outcome.peak <= memory, f"peak {outcome.peak / MiB:.1f} MiB"


@pytest.mark.parametrize("server", list(FAULTS), indirect=True)
def test_code_exchange(server: FaultyServer) -> None:
    fault = next(k for k, v in FAULTS.items() if v == server.fault)
    outcome = measured(
        lambda: oauth.exchange_code(
            code="the-code", redirect_uri="https://site.test/cb", state="s" * 43, use_pkce=True
        )
    )
    expected = OUTCOMES[fault]
    if expected == "ok":
        assert outcome.error is None and outcome.result.refresh_token.startswith("net-refresh")
    else:
        assert type(outcome.error) is ResponseLost  # maybe redeemed: never retried
        assert outcome.error.code == ("timeout" if expected == "lost" else "response_too_large")
    assert len(server.requests) == 1
    check(outcome, fault, 1, memory=4 * MiB)
    report("exchange", fault, outcome, 1)


@pytest.mark.parametrize("server", list(FAULTS), indirect=True)
def test_refresh(
    server: FaultyServer, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    fault = next(k for k, v in FAULTS.items() if v == server.fault)
    credential = make_credential(user)
    outcome = measured(lambda: services.renew(credential, force=True))
    expected = OUTCOMES[fault]
    stored = SliceCredential.objects.get(pk=credential.pk)
    if expected == "ok":
        assert outcome.error is None
        assert stored.refresh_token == "net-refresh-token-0123456789"
        attempts = 1
    else:
        # A lost answer may hide a rotation: one same-token retry, then the journal stays.
        assert type(outcome.error) is ResponseLost
        assert outcome.error.code == ("timeout" if expected == "lost" else "response_too_large")
        assert stored.renewal_started_at is not None and stored.version == credential.version
        attempts = 2
    assert len(server.requests) == attempts
    # The row lock is held for the POSTs only: at most twice the budget (README's rule).
    check(outcome, fault, attempts, memory=8 * MiB)
    report("refresh", fault, outcome, attempts)


@pytest.mark.parametrize("server", list(FAULTS), indirect=True)
def test_revoke(server: FaultyServer) -> None:
    fault = next(k for k, v in FAULTS.items() if v == server.fault)
    outcome = measured(lambda: oauth.revoke("a-refresh-token"))
    assert outcome.error is None  # best effort: never raises
    assert outcome.result is (OUTCOMES[fault] == "ok")
    assert len(server.requests) == 1
    check(outcome, fault, 1, memory=4 * MiB)
    report("revoke", fault, outcome, 1)


@pytest.mark.parametrize("server", list(FAULTS), indirect=True)
def test_api_call(
    server: FaultyServer, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    fault = next(k for k, v in FAULTS.items() if v == server.fault)
    credential = make_credential(user)  # a fresh access token: no renewal
    with SliceClient(credential) as client:
        outcome = measured(lambda: client.get("orders"))
    expected = OUTCOMES[fault]
    if expected == "ok":
        assert outcome.error is None and outcome.result["token_type"] == "Bearer"
    elif expected == "lost":
        assert type(outcome.error) is ResponseLost and outcome.error.code == "timeout"
    else:
        assert type(outcome.error) is ResponseTooLarge
        assert outcome.error.limit == 10 * MiB and outcome.error.status_code == 200
    assert len(server.requests) == 1
    # The default cap (10 MiB) is read at most once, then joined: well under 100 MB.
    check(outcome, fault, 1, memory=40 * MiB)
    report("api", fault, outcome, 1)


# -- the API cap and a 200 MB answer -------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [Fault("endless_body"), Fault("bomb", bomb_bytes=200 * MiB)],
    ids=["200MB-plain", "200MB-gzip"],
)
def test_a_200_mb_api_answer_stays_bounded(
    fault: Fault, settings: Any, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    credential = make_credential(user)
    with FaultyServer(fault) as running:
        settings.SLICE_CONNECT = {
            **settings.SLICE_CONNECT,
            "API_BASE_URL": f"{running.url}/api/v1/",
            "HTTP_TIMEOUT": (2.0, 10.0),
        }
        with SliceClient(credential) as client:
            outcome = measured(lambda: client.get("orders"))
    assert type(outcome.error) is ResponseTooLarge
    assert outcome.peak < 100 * MiB, f"{outcome.peak / MiB:.1f} MiB"
    report("api-200MB", "bomb" if fault.mode == "bomb" else "endless", outcome, 1)


def test_api_cap_follows_the_setting(
    settings: Any, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    body = b'{"result": [' + b'"x",' * 100_000 + b'"x"]}'
    credential = make_credential(user)
    with FaultyServer(Fault("answer", body=body, encoding="gzip")) as running:
        settings.SLICE_CONNECT = {
            **settings.SLICE_CONNECT,
            "API_BASE_URL": f"{running.url}/api/v1/",
            "API_MAX_RESPONSE_BYTES": 100_000,  # the gzip is far smaller: decoded bytes count
        }
        with SliceClient(credential) as client, pytest.raises(ResponseTooLarge) as excinfo:
            client.get("orders")
        assert excinfo.value.limit == 100_000
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "API_MAX_RESPONSE_BYTES": len(body)}
        with SliceClient(credential) as client:
            assert len(client.get("orders")["result"]) == 100_001


# -- nothing escapes the taxonomy (R45) ----------------------------------------------------


def test_deeply_nested_api_json_is_an_api_error(
    settings: Any, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    body = b"[" * 50_000 + b"]" * 50_000
    credential = make_credential(user)
    with FaultyServer(Fault("answer", body=body)) as running:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "API_BASE_URL": f"{running.url}/"}
        with SliceClient(credential) as client, pytest.raises(ApiError) as excinfo:
            client.get("orders")
    assert "invalid JSON" in str(excinfo.value)


def test_a_token_that_cannot_go_into_a_header_is_never_sent(
    settings: Any, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    credential = make_credential(user, access_token="jeton-\u20ac-non-latin-1")
    with FaultyServer(Fault("answer")) as running:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "API_BASE_URL": f"{running.url}/"}
        with SliceClient(credential) as client, pytest.raises(TransientError) as excinfo:
            client.get("orders")
        assert running.requests == []
    assert type(excinfo.value) is TransientError
    assert excinfo.value.code == "unencodable_request"
    assert "jeton" not in str(excinfo.value)


def test_a_row_deleted_during_a_call_is_not_linked(
    user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    from slice_connect.exceptions import NotLinked

    credential = make_credential(user, access_token_expires_at=SliceCredential().linked_at)
    SliceCredential.objects.filter(pk=credential.pk).delete()
    with pytest.raises(NotLinked):
        SliceClient(credential).get("orders")


# -- connections ---------------------------------------------------------------------------


def test_refreshes_reuse_a_connection_and_a_code_exchange_never_does(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """A kept-alive connection may have been closed by the server meanwhile, which looks like
    a lost answer: harmless for a refresh (retried once with the same token), fatal for a
    code (never redeemed twice). So a code exchange always opens a connection of its own."""
    from slice_connect import http

    made: list[Any] = []
    real = http.new_session

    def counting() -> Any:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(http, "new_session", counting)
    monkeypatch.setattr(http._local, "session", None, raising=False)
    with FaultyServer(Fault("answer")) as running:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "TOKEN_URL": f"{running.url}/t"}
        for _ in range(3):
            oauth.refresh("a-refresh-token")
        assert len(made) == 1  # one kept-alive session for this thread
        for _ in range(2):
            oauth.exchange_code(
                code="c", redirect_uri="https://site.test/cb", state="s" * 43, use_pkce=True
            )
        assert len(made) == 3  # one new session, closed afterwards, per exchange
        assert len(running.requests) == 5
