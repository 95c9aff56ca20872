"""Celery for real: a prefork worker on Redis, not eager (docs/threat-model.rst R25, R34, B8).

The worker is a subprocess (``celery -A example_project.celery worker``) with
``DJANGO_SETTINGS_MODULE=tests.worker_settings``: it shares the pytest-django test database
(PostgreSQL, hence the marker) and renews against the sandbox in this process's live server.
Messages are published from this process to a queue of the test's own in the tests' Redis
database (emptied before and after) and inspected raw before the worker is started.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.utils import timezone

from example_project.slice_sandbox.models import TokenRequest
from slice_connect import tasks
from slice_connect.models import SliceCredential

from .conftest import REDIS_URL, SliceServer
from .redis_queue import Broker, own_queue
from .workers import CeleryWorker, link_all, subprocess_env, wait_until

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]

RENEW_ONE = tasks.renew_credential.name
RENEW_DUE = tasks.renew_due_credentials.name
WAIT_SECONDS = 45.0
#: Small countdowns: at most 50 renewals a second, all of a sweep within one second.
RENEWAL_KNOBS = {"RENEW_RATE_LIMIT": 50, "RENEW_SPREAD": 1}


@pytest.fixture
def broker() -> Iterator[Broker]:
    with own_queue("slice-connect-test") as broker:
        yield broker


@pytest.fixture
def sandbox(slice_server: SliceServer, settings: Any) -> SliceServer:
    """Strict rotation, refresh answers slow enough for duplicate deliveries to overlap."""
    settings.SLICE_SANDBOX = {
        **settings.SLICE_SANDBOX,
        "TOKEN_DELAY_SECONDS": 0.3,
        "GRACE_SECONDS": 0,
    }
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, **RENEWAL_KNOBS}
    return slice_server


@pytest.fixture
def start_worker(
    broker: Broker, sandbox: SliceServer, settings: Any, tmp_path: Path
) -> Iterator[Callable[..., CeleryWorker]]:
    """Start a real worker on demand; it is always stopped (bounded) at teardown."""
    workers: list[CeleryWorker] = []

    def start(concurrency: int = 2) -> CeleryWorker:
        env = subprocess_env(settings.SLICE_CONNECT, redis_url=REDIS_URL, celery_queue=broker.queue)
        log_path = tmp_path / f"worker-{len(workers)}.log"
        worker = CeleryWorker(env=env, log_path=log_path, concurrency=concurrency)
        workers.append(worker)
        worker.start()
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def link_users(
    sandbox: SliceServer, browser_session: Any, make_user: Any
) -> Callable[..., list[SliceCredential]]:
    """Link ``n`` new users through the real OAuth flow, then set their renewal deadlines."""

    def make(n: int, *, access_in: timedelta, refresh_in: timedelta) -> list[SliceCredential]:
        users = [make_user() for _ in range(n)]
        link_all(sandbox.url, [browser_session(user) for user in users])
        now = timezone.now()
        SliceCredential.objects.filter(user__in=users).update(
            access_token_expires_at=now + access_in, refresh_token_expires_at=now + refresh_in
        )
        return [SliceCredential.objects.get(user=user) for user in users]

    return make


def assert_no_secret(blobs: list[bytes | str], sensitive: list[object]) -> None:
    canaries = [value for value in sensitive if isinstance(value, str) and len(value) >= 16]
    assert len(canaries) == len(sensitive), "every canary is a real token or secret"
    for blob in blobs:
        text = blob.decode() if isinstance(blob, bytes) else blob
        for secret in canaries:
            assert secret not in text, "a token or the client secret leaked"


def refreshes() -> int:
    return TokenRequest.objects.refreshes().count()


def api_self(server: SliceServer, access_token: str) -> int:
    response = requests.get(
        f"{server.url}/api/v1/users/self",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    return response.status_code


def test_worker_renews_exactly_the_due_credentials_once_each(
    broker: Broker,
    sandbox: SliceServer,
    start_worker: Callable[..., CeleryWorker],
    link_users: Callable[..., list[SliceCredential]],
) -> None:
    hour = timedelta(hours=1)
    due = link_users(4, access_in=hour, refresh_in=timedelta(days=1))
    not_due = link_users(3, access_in=hour, refresh_in=timedelta(days=13))
    assert set(SliceCredential.objects.due_for_renewal().values_list("pk", flat=True)) == {
        c.pk for c in due
    }
    old_tokens = [t for c in due + not_due for t in (c.access_token, c.refresh_token)]

    broker.publish(RENEW_DUE)

    [sweep] = broker.messages()
    assert sweep["message"]["headers"]["task"] == RENEW_DUE
    assert sweep["body"][:2] == [[], {}]
    assert_no_secret([sweep["raw"]], [*old_tokens, sandbox.client_secret])

    worker = start_worker(concurrency=2)

    def all_renewed() -> bool:
        return SliceCredential.objects.filter(pk__in=[c.pk for c in due], version=2).count() == 4

    wait_until(all_renewed, timeout=WAIT_SECONDS, what="the due credentials to be renewed")
    wait_until(
        lambda: len(worker.events(RENEW_ONE, "succeeded")) >= len(due),
        timeout=WAIT_SECONDS,
        what="the renewal tasks to finish",
    )
    worker.stop()  # nothing can run after this; then count

    [sweep_done] = worker.events(RENEW_DUE, "succeeded")
    assert sweep_done.result == str(len(due))
    done = worker.events(RENEW_ONE, "succeeded")
    assert [e.result for e in done] == ["'renewed'"] * len(due), worker.log()[-4000:]
    assert len(worker.events(RENEW_ONE, "received")) == len(due)
    assert refreshes() == len(due)
    assert TokenRequest.objects.refreshes().failed().count() == 0
    print(
        f"\nCELERY sweep due={len(due)} not_due={len(not_due)} tasks={len(done)} "
        f"refresh_requests={refreshes()}"
    )
    new_tokens = []
    for credential in due:
        row = SliceCredential.objects.get(pk=credential.pk)
        assert row.is_active and row.version == credential.version + 1
        assert row.refresh_token != credential.refresh_token
        assert row.refresh_token_expires_at > timezone.now() + timedelta(days=13)
        assert api_self(sandbox, row.access_token) == 200
        new_tokens += [row.access_token, row.refresh_token]
    for credential in not_due:
        row = SliceCredential.objects.get(pk=credential.pk)
        assert row.version == credential.version and row.last_renewed_at is None
        assert (row.access_token, row.refresh_token) == (
            credential.access_token,
            credential.refresh_token,
        )
    # The worker's log (INFO, task lines and slice_connect's own) names no token or secret.
    assert_no_secret([worker.log()], [*old_tokens, *new_tokens, sandbox.client_secret])


def test_same_message_delivered_three_times_refreshes_once(
    broker: Broker,
    sandbox: SliceServer,
    start_worker: Callable[..., CeleryWorker],
    link_users: Callable[..., list[SliceCredential]],
) -> None:
    # Due because its access token expired; the sweep would not pick it (refresh not due).
    [credential] = link_users(1, access_in=-timedelta(minutes=5), refresh_in=timedelta(days=13))
    task_id = "0b5e3d1c-5a1e-4c39-9d2a-3f0c1e2d4b5a"
    for _ in range(3):
        broker.publish(RENEW_ONE, credential.pk, task_id=task_id)

    queued = broker.messages()
    assert len(queued) == 3
    for item in queued:
        headers = item["message"]["headers"]
        assert (headers["task"], headers["id"]) == (RENEW_ONE, task_id)
        args, kwargs, _embed = item["body"]
        assert args == [credential.pk] and kwargs == {}
        assert all(type(arg) is int for arg in args)  # ids only (R25)
        assert headers["argsrepr"] == f"({credential.pk},)"
    assert len({item["message"]["properties"]["delivery_tag"] for item in queued}) == 3
    sensitive = [credential.access_token, credential.refresh_token, sandbox.client_secret]
    assert_no_secret([item["raw"] for item in queued], sensitive)

    # Three pool processes: all three deliveries run at the same time.
    worker = start_worker(concurrency=3)
    wait_until(
        lambda: len(worker.events(RENEW_ONE, "succeeded")) >= 3,
        timeout=WAIT_SECONDS,
        what="the three deliveries to finish",
    )
    worker.stop()

    results = sorted(str(e.result) for e in worker.events(RENEW_ONE, "succeeded"))
    print(f"\nCELERY deliveries=3 results={results} refresh_requests={refreshes()}")
    assert results == ["'renewed'", "'skipped'", "'skipped'"], worker.log()[-4000:]
    assert {e.id for e in worker.events(RENEW_ONE)} == {task_id}
    assert refreshes() == 1
    row = SliceCredential.objects.get(pk=credential.pk)
    assert row.is_active and row.version == credential.version + 1
    assert api_self(sandbox, row.access_token) == 200
    assert broker.client.llen(broker.queue) == 0
    assert_no_secret([worker.log()], [*sensitive, row.access_token, row.refresh_token])
