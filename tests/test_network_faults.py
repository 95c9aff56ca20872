"""Battery B4 (docs/threat-model.rst R12, R13, R31): real network faults on loopback.

Every case talks to a real socket on 127.0.0.1 (``tests/faulty_server.py``, one server per
test on an ephemeral port) or to a loopback address that fails in the connect phase, through
the real requests/urllib3/ssl stack: nothing is mocked between slice_connect and the kernel.
Each fault is run through the three callers:

* the code exchange, ``oauth.exchange_code`` -- never retried once the request may have
  reached Slice (R13), retried once on a connect-phase failure;
* the refresh, ``services.renew(credential, force=True)`` -- at most two POSTs per call, the
  second (same refresh token) only after a lost answer (R31); the stored ciphertext is left
  untouched by every failure;
* the API, ``SliceClient.get`` -- one request, a ``TransientError`` coded ``timeout`` or
  ``connection_error``.

Pass (B4): every call ends within ``(connect + read) * 1.1 + 0.2 s`` per attempt (two attempts'
worth where a second is allowed); the TLS failure is logged at ERROR as a security event.
B4's "a refresh makes at most 3 attempts with backoff" is about the Celery task's retries
across calls (tests/test_tasks.py); here each ``renew()`` call is held to at most 2 requests.

Timeouts are scaled down so the module runs in about 20 s: ``HTTP_TIMEOUT`` is (0.5, 1.0)
instead of the default (3.05, 10). B4's read timeouts of 1, 10 and 30 s become 0.2, 0.5 and
1.0 s: 30 s -> 1.0 s is a 1/30 scale; applied to 1 s and 10 s it would give 0.033 s and 0.33 s,
and 0.033 s is too close to scheduler noise to be measured against the 0.2 s slack, so the
short and middle values are 0.2 s and 0.5 s (same order, each still a separate case: a timeout
shorter than, about half of, and equal to the suite's read timeout). B4's 5 s latency with
2 s jitter becomes 0.5 s +- 0.2 s: it answers under a 1.0 s read timeout and always times
out under a 0.2 s one (the shortest latency, 0.3 s, is 0.1 s over).

Those are the long profile's values (``SLICE_CONNECT_TEST_PROFILE=long``). The quick
profile halves the connect and read timeouts, the three read-timeout cases and the drip
(``SCALE``), which halves the time the module spends waiting; the latency cases keep their
values (halved, their margins would be within scheduler noise on a loaded machine).

Run with ``-s`` to see one ``B4`` line per case and caller (the report's table).
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import certifi
import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection
from requests.adapters import HTTPAdapter

from slice_connect import oauth, services
from slice_connect.client import SliceClient
from slice_connect.exceptions import ResponseLost, SliceConnectError, TransientError
from slice_connect.models import SliceCredential
from tests.faulty_server import (
    Blackhole,
    Fault,
    FaultyServer,
    TlsFiles,
    closed_port,
    make_tls_files,
)
from tests.profiles import pick

pytestmark = pytest.mark.django_db

#: 1 under the long profile, 0.5 under the quick one (see the module docstring).
SCALE = pick(0.5, 1.0)
CONNECT = 0.5 * SCALE
READ = 1.0 * SCALE
#: A byte every READ / 10 s: far inside the read timeout, so only the deadline can end the
#: drip, and still several bytes before it even when the server thread waits for a CPU.
DRIP = READ / 10
#: Allowed overrun per attempt: 10 % of the timeout plus this (thread start, DB, logging).
SLACK = 0.2
REDIRECT_URI = "https://app.test/slice/callback/"
STATE = "b4-state-0123456789abcdefghijklmnopqrstuvwxyz"
CODE = "b4-code-0123456789"
#: Under the reserved TLD (RFC 6761): resolution fails locally, without any network.
INVALID_HOST = "slice-connect-b4.invalid"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")

Where = Literal["server", "tls_untrusted", "tls_trusted", "refused", "dns", "blackhole"]
Outcome = Literal["ok", "lost", "not_sent"]


@dataclass(frozen=True)
class Case:
    """One B4 fault and what each caller must make of it."""

    id: str
    where: Where
    fault: Fault | None = None
    read: float = READ
    #: ok: the call succeeds; lost: sent, no usable answer; not_sent: connect-phase failure.
    outcome: Outcome = "lost"
    #: The code of the API's TransientError.
    api_code: str = ""
    #: The shortest an attempt can take (the timeout that must fire), for a sanity check.
    min_attempt: float = 0.0


LATENCY = Fault("answer", delay=0.5, jitter=0.2)

CASES = [
    Case("healthy", "server", Fault("answer", delay=0.1), outcome="ok"),
    Case("connection_refused", "refused", outcome="not_sent", api_code="connect_error"),
    Case("dns_failure", "dns", outcome="not_sent", api_code="connect_error"),
    Case(
        "connect_timeout",
        "blackhole",
        outcome="not_sent",
        api_code="connect_error",
        min_attempt=CONNECT,
    ),
    # B4 "read timeout at 1, 10 and 30 s", scaled (see the module docstring): shorter than,
    # about half of and equal to the suite's read timeout.
    *(
        Case(
            f"read_timeout_{name}",
            "server",
            Fault("never_answer"),
            read,
            api_code="timeout",
            min_attempt=read,
        )
        for name, read in (("short", 0.2 * SCALE), ("middle", 0.5 * SCALE), ("full", READ))
    ),
    Case("latency_under_read_timeout", "server", LATENCY, 1.0, outcome="ok", min_attempt=0.3),
    Case("latency_over_read_timeout", "server", LATENCY, 0.2, api_code="timeout", min_attempt=0.2),
    Case("reset_after_request", "server", Fault("reset"), api_code="connection_error"),
    Case("cut_mid_body", "server", Fault("cut_mid_body"), api_code="connection_error"),
    Case(
        "slow_drip",
        "server",
        Fault("slow_drip", drip_interval=DRIP),
        api_code="timeout",
        min_attempt=CONNECT + READ,
    ),
    Case("slow_close", "server", Fault("slow_close"), outcome="ok"),
    Case(
        "tls_invalid_certificate",
        "tls_untrusted",
        Fault("answer"),
        outcome="not_sent",
        api_code="connect_error",
    ),
    # Not in B4's list; R13's "never after send" where requests raises its TLS error late.
    Case("tls_error_after_request", "tls_trusted", Fault("garbage"), api_code="tls_error"),
]


def bound(read: float, attempts: int) -> float:
    """B4's limit: each attempt within its timeout + 10 %, plus the fixed slack."""
    return attempts * ((CONNECT + read) * 1.1 + SLACK)


# -- endpoints ----------------------------------------------------------------------------


@dataclass
class Endpoint:
    """Where a case's calls go: a base URL, and the server behind it if there is one."""

    base_url: str
    server: FaultyServer | None = None
    #: CA bundle that trusts the server (trusted TLS only).
    ca_bundle: str | None = None

    def stop(self) -> None:
        """Stop the server (bounded joins), so its counters are final."""
        if self.server is not None:
            alive = self.server.stop()
            assert not alive, f"server threads did not stop: {alive}"

    @property
    def requests(self) -> int:
        return len(self.server.requests) if self.server else 0


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(Path(tmp_path_factory.mktemp("b4-tls")))


_dns_checked: dict[str, str | None] = {}


def dns_failure_problem() -> str | None:
    """Why a ``.invalid`` name cannot serve as a DNS failure here, or ``None`` if it can."""
    if INVALID_HOST not in _dns_checked:
        started = time.monotonic()
        try:
            socket.getaddrinfo(INVALID_HOST, 80)
        except socket.gaierror:
            took = time.monotonic() - started
            problem = None if took < 1.0 else f"resolving {INVALID_HOST} took {took:.1f} s"
        else:
            problem = f"{INVALID_HOST} resolves here (a wildcard resolver?)"
        _dns_checked[INVALID_HOST] = problem
    return _dns_checked[INVALID_HOST]


@pytest.fixture
def open_endpoint(
    tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Case], Endpoint]]:
    """Start what ``case`` needs; everything is stopped (bounded) after the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    # requests.post honours REQUESTS_CA_BUNDLE; the untrusted cases use certifi's bundle.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    stack = ExitStack()

    def start(case: Case) -> Endpoint:
        if case.where == "refused":
            return Endpoint(f"http://127.0.0.1:{closed_port()}")
        if case.where == "dns":
            problem = dns_failure_problem()
            if problem:
                pytest.skip(f"no local DNS failure: {problem}")
            return Endpoint(f"http://{INVALID_HOST}")
        if case.where == "blackhole":
            hole = Blackhole()
            stack.callback(hole.close)
            if not hole.fill():
                pytest.skip(
                    "no loopback connect timeout here: the kernel answers connects beyond a "
                    "full accept queue (tcp_abort_on_overflow, or not Linux)"
                )
            return Endpoint(f"http://127.0.0.1:{hole.port}")
        assert case.fault is not None
        context = tls_files.server_context() if case.where.startswith("tls") else None
        server = FaultyServer(case.fault, ssl_context=context)
        stack.callback(server.stop)
        server.start()
        endpoint = Endpoint(server.url, server)
        if case.where == "tls_trusted":
            endpoint.ca_bundle = str(tls_files.ca_cert)
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", endpoint.ca_bundle)
        return endpoint

    with stack:
        yield start


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """URLs of every HTTP attempt requests makes (connect failures included)."""
    seen: list[str] = []
    original = HTTPAdapter.send

    def send(self: HTTPAdapter, request: requests.PreparedRequest, *args: Any, **kw: Any) -> Any:
        seen.append(str(request.url))
        return original(self, request, *args, **kw)

    monkeypatch.setattr(HTTPAdapter, "send", send)
    return seen


def configure(settings: Any, endpoint: Endpoint, read: float) -> None:
    settings.SLICE_CONNECT = {
        **django_settings.SLICE_CONNECT,
        "TOKEN_URL": f"{endpoint.base_url}/oauth/token",
        "API_BASE_URL": f"{endpoint.base_url}/api/v1/",
        "HTTP_TIMEOUT": (CONNECT, read),
    }


# -- helpers ------------------------------------------------------------------------------


def raw_row(pk: int) -> tuple[Any, ...]:
    """The stored ciphertext of both tokens and the version, read with raw SQL."""
    table = SliceCredential._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT access_token, refresh_token, version FROM {table} WHERE id = %s", [pk]
        )
        row = cursor.fetchone()
    assert row is not None
    return tuple(row)


@dataclass
class Run:
    error: SliceConnectError | None
    elapsed: float


def timed(call: Callable[[], object]) -> Run:
    started = time.monotonic()
    try:
        call()
    except SliceConnectError as exc:
        return Run(exc, time.monotonic() - started)
    return Run(None, time.monotonic() - started)


def tls_errors(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == logger
        and record.levelno == logging.ERROR
        and "TLS" in record.getMessage()
    ]


def report(flow: str, case: Case, run: Run, requests_seen: int, tries: int, limit: float) -> None:
    outcome = "ok" if run.error is None else f"{type(run.error).__name__}({run.error.code})"
    print(
        f"\nB4 {flow:8} {case.id:27} {outcome:32} requests={requests_seen} attempts={tries} "
        f"elapsed={run.elapsed:.2f}s bound={limit:.2f}s"
    )


def check_elapsed(case: Case, run: Run, tries: int) -> float:
    limit = bound(case.read, tries)
    assert run.elapsed <= limit, f"{case.id}: {run.elapsed:.2f}s > {limit:.2f}s"
    assert run.elapsed >= 0.9 * case.min_attempt * tries, f"{case.id}: ended too early"
    return limit


def check_tls_logged(case: Case, caplog: pytest.LogCaptureFixture, logger: str) -> None:
    if case.where.startswith("tls"):
        assert tls_errors(caplog, logger), f"{case.id}: no TLS security event from {logger}"


def check_sent_requests(endpoint: Endpoint, case: Case) -> None:
    if case.fault is not None and case.fault.mode == "slow_drip":
        assert endpoint.server is not None and endpoint.server.dripped >= 3  # a real drip


# -- the three callers ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_code_exchange(
    case: Case,
    open_endpoint: Callable[[Case], Endpoint],
    attempts: list[str],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    endpoint = open_endpoint(case)
    configure(settings, endpoint, case.read)

    run = timed(
        lambda: oauth.exchange_code(
            code=CODE, redirect_uri=REDIRECT_URI, state=STATE, use_pkce=True
        )
    )
    endpoint.stop()

    tries = len(attempts)
    if case.outcome == "ok":
        assert run.error is None
        assert (endpoint.requests, tries) == (1, 1)
    elif case.outcome == "lost":
        # R13: sent, so never sent again -- whatever the failure.
        assert type(run.error) is ResponseLost
        assert (endpoint.requests, tries) == (1, 1)
    else:
        # Surely not sent: exactly one retry, and nothing ever reached an HTTP server.
        assert type(run.error) is TransientError and run.error.code == "connect_error"
        assert (endpoint.requests, tries) == (0, 2)
        if endpoint.server is not None:
            assert endpoint.server.tls_failures == 2
    if endpoint.server is not None:
        for request in endpoint.server.requests:
            form = request.form
            assert form["grant_type"] == ["authorization_code"] and form["code"] == [CODE]
            assert form["code_verifier"] == [oauth.pkce_verifier(STATE)]
    check_sent_requests(endpoint, case)
    limit = check_elapsed(case, run, tries)
    check_tls_logged(case, caplog, "slice_connect.http")
    report("exchange", case, run, endpoint.requests, tries, limit)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_refresh(
    case: Case,
    open_endpoint: Callable[[Case], Endpoint],
    attempts: list[str],
    settings: Any,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    endpoint = open_endpoint(case)
    configure(settings, endpoint, case.read)
    credential = make_credential(user)
    refresh_token = str(credential.refresh_token)
    before = raw_row(credential.pk)

    run = timed(lambda: services.renew(credential, force=True))
    endpoint.stop()

    tries = len(attempts)
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == SliceCredential.Status.ACTIVE
    if case.outcome == "ok":
        assert run.error is None
        assert (endpoint.requests, tries) == (1, 1)
        assert stored.access_token == "net-access-token-0123456789"
        assert stored.refresh_token == "net-refresh-token-0123456789"
        assert raw_row(credential.pk)[2] == before[2] + 1
    else:
        # Nothing stored on any failure: the ciphertext bytes and the version are unchanged.
        assert raw_row(credential.pk) == before
        assert stored.failure_count == 1
        if case.outcome == "lost":
            # One immediate retry with the same token after a lost answer, never more.
            assert type(run.error) is ResponseLost
            assert (endpoint.requests, tries) == (2, 2)
        else:
            assert type(run.error) is TransientError and run.error.code == "connect_error"
            assert (endpoint.requests, tries) == (0, 1)
    assert endpoint.requests <= 2 and tries <= 2
    if endpoint.server is not None:
        for request in endpoint.server.requests:
            assert request.form["grant_type"] == ["refresh_token"]
            assert request.form["refresh_token"] == [refresh_token]
    check_sent_requests(endpoint, case)
    limit = check_elapsed(case, run, tries)
    check_tls_logged(case, caplog, "slice_connect.http")
    report("refresh", case, run, endpoint.requests, tries, limit)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_api_get(
    case: Case,
    open_endpoint: Callable[[Case], Endpoint],
    attempts: list[str],
    settings: Any,
    user: Any,
    make_credential: Callable[..., SliceCredential],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    endpoint = open_endpoint(case)
    configure(settings, endpoint, case.read)
    credential = make_credential(user)  # access token valid for an hour: no renewal
    session = requests.Session()
    if endpoint.ca_bundle:
        session.verify = endpoint.ca_bundle
    result: list[Any] = []

    with SliceClient(credential, session=session) as client:
        run = timed(lambda: result.append(client.get("orders")))
    endpoint.stop()

    tries = len(attempts)
    assert tries == 1, "the API client never retries a transport failure"
    if case.outcome == "ok":
        assert run.error is None and result[0]["token_type"] == "Bearer"
    else:
        # One classification for every call: never sent, or sent with the answer lost.
        expected = TransientError if case.outcome == "not_sent" else ResponseLost
        assert type(run.error) is expected and run.error.code == case.api_code
    assert endpoint.requests == (0 if case.outcome == "not_sent" else 1)
    if endpoint.server is not None and endpoint.server.requests:
        request = endpoint.server.requests[0]
        assert request.path == "/api/v1/orders"
        assert request.headers["authorization"] == f"Bearer {credential.access_token}"
    check_sent_requests(endpoint, case)
    limit = check_elapsed(case, run, tries)
    check_tls_logged(case, caplog, "slice_connect.http")
    report("api", case, run, endpoint.requests, tries, limit)
