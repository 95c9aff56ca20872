"""Single-flight renewal under real concurrency, on PostgreSQL (docs/threat-model.rst R28, B5).

Every test links users for real against the django-oauth-toolkit sandbox (strict rotation,
no grace period) and slows its refresh answers, so the callers truly overlap while the first
lock holder is talking to the server. SQLite ignores ``select_for_update``, hence the marker.

Run with ``-s`` to see the timing lines (``CONCURRENCY threads=50 refresh_requests=1 ...``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import connection
from django.utils import timezone

from example_project.slice_sandbox.models import TokenRequest
from slice_connect import services, signals
from slice_connect.client import SliceClient
from slice_connect.conf import app_settings
from slice_connect.models import SliceCredential
from slice_connect.tasks import renew_credential
from tests.helpers import fingerprint

from .conftest import SliceServer
from .workers import RenewalProcesses, link_all, subprocess_env

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

#: Slows every refresh answer, so that all callers pile up behind the first one.
TOKEN_DELAY_SECONDS = 0.2
JOIN_TIMEOUT = 60.0


# -- helpers ------------------------------------------------------------------------------


@dataclass
class Race:
    results: dict[int, Any] = field(default_factory=dict)
    errors: list[tuple[int, BaseException]] = field(default_factory=list)
    #: Wall time from the common start until the last thread finished.
    seconds: float = 0.0
    #: Per thread, from the common start (after its stagger) until its call returned.
    waits: list[float] = field(default_factory=list)

    @property
    def slowest(self) -> float:
        return max(self.waits, default=0.0)


def race(count: int, call: Callable[[int], Any], *, stagger: float = 0.0) -> Race:
    """Run ``call(i)`` in ``count`` threads released together (thread i after i*stagger s).

    Each thread opens its own database connection before the start and closes it at the end.
    """
    outcome = Race()
    barrier = threading.Barrier(count + 1)

    def run(index: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=JOIN_TIMEOUT)
            if stagger:
                time.sleep(index * stagger)
            started = time.perf_counter()
            outcome.results[index] = call(index)
            outcome.waits.append(time.perf_counter() - started)
        except BaseException as exc:
            outcome.errors.append((index, exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=JOIN_TIMEOUT)
    started = time.perf_counter()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    outcome.seconds = time.perf_counter() - started
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"{len(stuck)} threads still running after {JOIN_TIMEOUT} s (deadlock?)"
    return outcome


def describe(errors: list[tuple[int, BaseException]]) -> str:
    return "; ".join(f"thread {i}: {type(e).__name__}: {e}" for i, e in errors[:5])


def refreshes() -> Any:
    return TokenRequest.objects.refreshes()


def api_self(server: SliceServer, access_token: str) -> requests.Response:
    return requests.get(
        f"{server.url}/api/v1/users/self",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )


def expire_access_token(*pks: int) -> None:
    """Make the stored access tokens look expired, so any caller must renew first."""
    past = timezone.now() - timedelta(minutes=5)
    SliceCredential.objects.filter(pk__in=pks).update(access_token_expires_at=past)


@pytest.fixture
def slow_sandbox(slice_server: SliceServer, settings: Any) -> SliceServer:
    """The sandbox with strict rotation (no grace) and slow refresh answers."""
    settings.SLICE_SANDBOX = {
        **settings.SLICE_SANDBOX,
        "TOKEN_DELAY_SECONDS": TOKEN_DELAY_SECONDS,
        "GRACE_SECONDS": 0,
    }
    assert settings.OAUTH2_PROVIDER["REFRESH_TOKEN_GRACE_PERIOD_SECONDS"] == 0
    return slice_server


@pytest.fixture
def link_users(
    slow_sandbox: SliceServer, browser_session: Any, make_user: Any
) -> Callable[[int], list[tuple[Any, SliceCredential]]]:
    """Link ``n`` new users through the real OAuth flow; return (user, credential) pairs."""

    def make(n: int) -> list[tuple[Any, SliceCredential]]:
        users = [make_user() for _ in range(n)]
        link_all(slow_sandbox.url, [browser_session(user) for user in users])
        linked = [(user, SliceCredential.objects.get(user=user)) for user in users]
        assert slow_sandbox.token_requests("authorization_code") == n
        assert refreshes().count() == 0
        return linked

    return make


@pytest.fixture
def renewals() -> Iterator[list[int]]:
    """Ids of the credentials for which ``credential_renewed`` was sent (any thread)."""
    seen: list[int] = []
    lock = threading.Lock()

    def receiver(sender: Any, credential: SliceCredential, **kwargs: Any) -> None:
        with lock:
            seen.append(credential.pk)

    signals.credential_renewed.connect(receiver, weak=False)
    yield seen
    signals.credential_renewed.disconnect(receiver)


def assert_single_rotation(server: SliceServer, user: Any, credential: SliceCredential) -> str:
    """One successful refresh reached the server; return the access token it issued."""
    assert refreshes().count() == 1
    assert refreshes().failed().count() == 0
    row = SliceCredential.objects.get(pk=credential.pk)
    assert row.is_active and row.status_reason == ""
    assert row.version == credential.version + 1
    assert row.renewal_started_at is None and row.failure_count == 0
    assert row.access_token != credential.access_token
    assert row.refresh_token != credential.refresh_token
    response = api_self(server, row.access_token)
    assert response.status_code == 200, response.text
    assert response.json()["result"]["userEmail"] == user.email
    # The server really rotated: the pre-race access token is dead now.
    assert api_self(server, credential.access_token).status_code == 401
    return str(row.access_token)


# -- one credential, many threads -------------------------------------------------------------


@pytest.mark.parametrize("threads", [2, 10, 50])
def test_threads_renew_one_credential_with_one_refresh(
    threads: int, slow_sandbox: SliceServer, link_users: Any, renewals: list[int]
) -> None:
    [(user, credential)] = link_users(1)
    expire_access_token(credential.pk)

    def call(_index: int) -> str:
        renewed = services.renew_by_id(credential.pk, force=False).credential
        assert isinstance(renewed.access_token, str)
        return renewed.access_token

    outcome = race(threads, call)

    seen = refreshes().count()
    print(
        f"\nCONCURRENCY threads={threads} refresh_requests={seen} "
        f"seconds={outcome.seconds:.2f} slowest_caller={outcome.slowest:.2f}"
    )
    assert outcome.errors == [], describe(outcome.errors)  # no NeedsReauth, no deadlock
    assert len(outcome.results) == threads
    # B5: waiting for the lock stays well below the HTTP read timeout.
    assert outcome.slowest < app_settings.HTTP_TIMEOUT[1]
    token = assert_single_rotation(slow_sandbox, user, credential)
    tokens = set(outcome.results.values())
    assert tokens == {token}, f"{len(tokens)} different access tokens"
    assert renewals == [credential.pk]


# -- one credential, several processes --------------------------------------------------------


def run_processes(
    tmp_path: Path, settings: Any, count: int, pks: list[int], calls: int
) -> tuple[list[dict[str, Any]], float]:
    """Run the renewal script in ``count`` processes released together; reports and seconds."""
    group = RenewalProcesses(tmp_path, subprocess_env(settings.SLICE_CONNECT))
    try:
        group.start(count, pks, calls=calls)
        group.release()
        reports = group.results()
    finally:
        group.stop()
    seconds = max(r["finished"] for r in reports) - min(r["started"] for r in reports)
    return reports, seconds


def test_processes_renew_one_credential_with_one_refresh(
    tmp_path: Path, slow_sandbox: SliceServer, link_users: Any, settings: Any
) -> None:
    processes = 4
    [(user, credential)] = link_users(1)
    expire_access_token(credential.pk)

    reports, seconds = run_processes(tmp_path, settings, processes, [credential.pk], calls=1)

    seen = refreshes().count()
    print(f"\nCONCURRENCY processes={processes} refresh_requests={seen} seconds={seconds:.2f}")
    calls = [c for r in reports for c in r["calls"]]
    assert [c for c in calls if "error" in c] == []
    assert len(calls) == processes
    assert sum(c["renewed"] for c in calls) == 1
    token = assert_single_rotation(slow_sandbox, user, credential)
    assert {c["fingerprint"] for c in calls} == {fingerprint(token)}
    assert {c["version"] for c in calls} == {credential.version + 1}


def test_processes_renew_ten_credentials_once_each(
    tmp_path: Path, slow_sandbox: SliceServer, link_users: Any, settings: Any
) -> None:
    """B5: 4 processes x 25 renewals over 10 credentials -> 10 refreshes, no swaps."""
    processes, calls_each = 4, 25
    linked = link_users(10)
    pks = [credential.pk for _user, credential in linked]
    expire_access_token(*pks)

    reports, seconds = run_processes(tmp_path, settings, processes, pks, calls=calls_each)

    seen = refreshes().count()
    print(
        f"\nCONCURRENCY processes={processes} calls={processes * calls_each} credentials=10 "
        f"refresh_requests={seen} seconds={seconds:.2f}"
    )
    calls = [c for r in reports for c in r["calls"]]
    assert [c for c in calls if "error" in c] == []
    assert len(calls) == processes * calls_each
    assert seen == 10 and refreshes().failed().count() == 0
    for user, credential in linked:
        row = SliceCredential.objects.get(pk=credential.pk)
        assert row.is_active and row.version == credential.version + 1
        mine = [c for c in calls if c["pk"] == credential.pk]
        assert sum(c["renewed"] for c in mine) == 1
        assert {c["fingerprint"] for c in mine} == {fingerprint(row.access_token)}
        response = api_self(slow_sandbox, row.access_token)
        assert response.json()["result"]["userEmail"] == user.email


# -- many credentials, many threads -------------------------------------------------------------


def test_twenty_users_renewed_concurrently_never_swap_tokens(
    slow_sandbox: SliceServer, link_users: Any, renewals: list[int]
) -> None:
    users = 20
    linked = link_users(users)
    expire_access_token(*(credential.pk for _user, credential in linked))

    def call(index: int) -> str:
        renewed = services.renew_by_id(linked[index][1].pk).credential
        assert isinstance(renewed.access_token, str)
        return renewed.access_token

    outcome = race(users, call)

    seen = refreshes().count()
    print(f"\nCONCURRENCY users={users} refresh_requests={seen} seconds={outcome.seconds:.2f}")
    assert outcome.errors == [], describe(outcome.errors)
    assert seen == users and refreshes().failed().count() == 0
    assert sorted(renewals) == sorted(credential.pk for _user, credential in linked)
    assert len(set(outcome.results.values())) == users
    for index, (user, credential) in enumerate(linked):
        row = SliceCredential.objects.get(pk=credential.pk)
        assert row.user_id == user.pk and row.is_active
        assert row.version == credential.version + 1
        assert outcome.results[index] == row.access_token
        response = api_self(slow_sandbox, row.access_token)
        assert response.status_code == 200, response.text
        assert response.json()["result"]["userEmail"] == user.email, f"user {index} swapped"


# -- the API client against the beat task and against itself ------------------------------------


@pytest.mark.parametrize("first", ["user_request", "beat_task"])
def test_user_request_interleaved_with_beat_renewal_refreshes_once(
    first: str, slow_sandbox: SliceServer, link_users: Any, renewals: list[int]
) -> None:
    [(user, credential)] = link_users(1)
    expire_access_token(credential.pk)

    def user_request() -> tuple[str, str]:
        with SliceClient(user) as client:
            body = client.get("users/self")
            return str(client.credential.access_token), body["result"]["userEmail"]

    def beat_task() -> str:
        # What the worker runs for each id the sweep enqueued (called in-process here).
        return str(renew_credential(credential.pk))

    order = [user_request, beat_task] if first == "user_request" else [beat_task, user_request]
    # The second caller arrives while the first one's refresh is still at the server.
    outcome = race(2, lambda index: order[index](), stagger=TOKEN_DELAY_SECONDS / 4)

    seen = refreshes().count()
    print(f"\nCONCURRENCY interleaved first={first} refresh_requests={seen}")
    assert outcome.errors == [], describe(outcome.errors)
    token = assert_single_rotation(slow_sandbox, user, credential)
    used_token, email = outcome.results[order.index(user_request)]
    assert used_token == token and email == user.email
    assert outcome.results[order.index(beat_task)] in ("renewed", "skipped")
    assert renewals == [credential.pk]


@pytest.mark.parametrize("why", ["expired_locally", "rejected_by_server"])
def test_parallel_api_calls_share_one_refresh(
    why: str, slow_sandbox: SliceServer, link_users: Any, renewals: list[int]
) -> None:
    """B5: parallel API calls holding a stale access token cause one refresh.

    ``expired_locally``: the stored expiry has passed, so each client renews before calling.
    ``rejected_by_server``: Slice ends the access token early; each call gets 401 and renews
    only if nobody replaced the token it used (``seen_version``).
    """
    from oauth2_provider.models import AccessToken

    calls = 30  # each caller and each server thread holds a PostgreSQL connection
    [(user, credential)] = link_users(1)
    if why == "expired_locally":
        expire_access_token(credential.pk)
    else:
        gone = timezone.now() - timedelta(seconds=1)
        assert AccessToken.objects.filter(user=user).update(expires=gone) == 1

    def call(_index: int) -> tuple[str, str]:
        with SliceClient(SliceCredential.objects.get(pk=credential.pk)) as client:
            body = client.get("users/self")
            return str(client.credential.access_token), body["result"]["userEmail"]

    outcome = race(calls, call)

    seen = refreshes().count()
    print(
        f"\nCONCURRENCY api_calls={calls} ({why}) refresh_requests={seen} "
        f"seconds={outcome.seconds:.2f}"
    )
    assert outcome.errors == [], describe(outcome.errors)
    token = assert_single_rotation(slow_sandbox, user, credential)
    assert set(outcome.results.values()) == {(token, user.email)}
    assert renewals == [credential.pk]
