"""B8 (docs/threat-model.rst R31, R34, R35): a real Celery worker SIGKILLed at four points.

Each drill links one user for real against the sandbox (django-oauth-toolkit in the live
server, strict rotation, grace 0 unless said otherwise), makes the credential due (expired
access token), publishes one ``renew_credential`` message to a queue of the test's own on
the tests' Redis and starts a real prefork worker (``celery -A tests.crash_worker``: the
example app plus one env-chosen SIGKILL, see :mod:`tests.crash_worker`). The worker shares
the test database, hence PostgreSQL. Then the next attempt runs and the sandbox's
``TokenRequest`` rows are counted.

=====================  ============================================  =====================
kill point             next attempt                                  pass
=====================  ============================================  =====================
(a) before the POST    the requeued message (reject_on_worker_lost)  1 refresh, linked
(b) after the POST,    the message once the whole worker died and    1 extra request,
    before commit      the lease passed (parent, time-machine)       lost_rotation
(b) same, pool         the requeued message, at once                 1 extra request; the
    process only                                                     label: see the test
(b') same, grace 30 s  the requeued message, at once                 linked, 0 lost
(c) after commit,      the requeued message                          "skipped", 1 refresh
    before ack
(d) after ack          nothing is redelivered; the next beat         1 refresh, linked
=====================  ============================================  =====================

Run with ``-s`` to see one ``CRASH`` line per drill.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import requests
import time_machine
from django.utils import timezone

from example_project.celery import app
from example_project.slice_sandbox.conf import oauth2_provider_settings
from example_project.slice_sandbox.models import TokenRequest
from slice_connect import tasks
from slice_connect.models import SliceCredential

from .conftest import REDIS_URL, SliceServer
from .crash_worker import DrillWorker
from .redis_queue import Broker, own_queue
from .workers import link_all, subprocess_env, wait_until

pytestmark = [
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]

RENEW_ONE = tasks.renew_credential.name
WAIT_SECONDS = 45.0
Status = SliceCredential.Status
Reason = SliceCredential.Reason


# -- broker, sandbox, worker -------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[Broker]:
    with own_queue("slice-connect-drill") as broker:
        yield broker


@pytest.fixture
def sandbox(slice_server: SliceServer, settings: Any) -> SliceServer:
    """Strict rotation (grace 0): a refresh token works once."""
    settings.SLICE_SANDBOX = {**settings.SLICE_SANDBOX, "GRACE_SECONDS": 0}
    assert settings.OAUTH2_PROVIDER["REFRESH_TOKEN_GRACE_PERIOD_SECONDS"] == 0
    return slice_server


@pytest.fixture
def start_worker(
    broker: Broker, sandbox: SliceServer, settings: Any, tmp_path: Path
) -> Iterator[Callable[..., DrillWorker]]:
    """Start a drill worker; every one is stopped (bounded, SIGKILL of its group) at teardown."""
    workers: list[DrillWorker] = []

    def start(kill_at: str, scope: str) -> DrillWorker:
        env = subprocess_env(settings.SLICE_CONNECT, redis_url=REDIS_URL, celery_queue=broker.queue)
        env.update(
            SLICE_CONNECT_TEST_KILL_AT=kill_at,
            SLICE_CONNECT_TEST_KILL_SCOPE=scope,
            SLICE_CONNECT_TEST_KILL_MARKER=str(tmp_path / "killed"),
        )
        worker = DrillWorker(env=env, log_path=tmp_path / f"worker-{len(workers)}.log")
        worker.concurrency = 1
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()


@dataclass
class Drill:
    server: SliceServer
    credential: SliceCredential
    marker: Path

    def row(self) -> SliceCredential:
        return SliceCredential.objects.get(pk=self.credential.pk)

    def killed(self) -> bool:
        return self.marker.exists()


@pytest.fixture
def drill(
    sandbox: SliceServer, browser_session: Any, make_user: Any, tmp_path: Path
) -> Callable[[], Drill]:
    def make() -> Drill:
        user = make_user()
        link_all(sandbox.url, [browser_session(user)])
        SliceCredential.objects.filter(user=user).update(
            access_token_expires_at=timezone.now() - timedelta(minutes=5)
        )
        assert refreshes() == 0
        return Drill(sandbox, SliceCredential.objects.get(user=user), tmp_path / "killed")

    return make


def refreshes(status: int | None = None) -> int:
    rows = TokenRequest.objects.refreshes()
    if status is not None:
        rows = rows.filter(status_code=status)
    return rows.count()


def api_self(server: SliceServer, access_token: str) -> int:
    response = requests.get(
        f"{server.url}/api/v1/users/self",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    return response.status_code


def assert_linked(drill: Drill, *, version: int) -> SliceCredential:
    """The link survived: active, rotated once, and its tokens work at the server."""
    row = drill.row()
    assert (row.status, row.status_reason) == (Status.ACTIVE, Reason.NONE)
    assert row.version == version
    assert row.renewal_started_at is None
    assert api_self(drill.server, str(row.access_token)) == 200
    return row


def report(point: str, drill: Drill, worker: DrillWorker, extra: int) -> None:
    row = drill.row()
    received = len(worker.events(RENEW_ONE, "received"))
    results = [e.result for e in worker.events(RENEW_ONE, "succeeded")]
    print(
        f"\nCRASH point={point} status={row.status} reason={row.status_reason or '-'} "
        f"refreshes={refreshes()} extra_token_requests={extra} deliveries={received} "
        f"results={results}"
    )


def wait_for_result(worker: DrillWorker, result: str) -> None:
    wait_until(
        lambda: any(e.result == result for e in worker.events(RENEW_ONE, "succeeded")),
        timeout=WAIT_SECONDS,
        what=f"a {result} renewal",
    )


# -- the drills ------------------------------------------------------------------------------


def test_a_killed_before_the_post_costs_nothing(
    broker: Broker, drill: Callable[[], Drill], start_worker: Callable[..., DrillWorker]
) -> None:
    d = drill()
    broker.publish(RENEW_ONE, d.credential.pk, task_id=str(uuid.uuid4()))
    worker = start_worker("before_post", "process")

    wait_for_result(worker, "'renewed'")
    worker.stop()

    assert d.killed()
    # Killed after the journal stamp, before any request: the redelivery sent the only one.
    report("before_post", d, worker, extra=refreshes() - 1)
    assert len(worker.events(RENEW_ONE, "received")) == 2
    assert refreshes() == refreshes(200) == 1
    assert_linked(d, version=d.credential.version + 1)
    assert broker.queued() == 0 and broker.unacked() == []


def test_b_killed_after_the_post_loses_the_link_as_a_counted_lost_rotation(
    broker: Broker, drill: Callable[[], Drill], start_worker: Callable[..., DrillWorker]
) -> None:
    d = drill()
    task_id = str(uuid.uuid4())
    broker.publish(RENEW_ONE, d.credential.pk, task_id=task_id)
    worker = start_worker("after_post", "worker")

    wait_until(worker.exited, timeout=WAIT_SECONDS, what="the worker to be killed")
    assert d.killed()
    # Slice rotated; we kept the old pair, and the journal says a request may be spent.
    assert refreshes() == refreshes(200) == 1
    row = d.row()
    assert row.status == Status.ACTIVE and row.version == d.credential.version
    assert row.refresh_token == d.credential.refresh_token
    assert row.renewal_started_at is not None
    # Nothing was acked: the broker redelivers once the visibility timeout passes. That
    # redelivery is run here, as renew_credential's own body, that much later.
    assert broker.unacked() == [task_id]
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    later = timezone.now() + timedelta(seconds=visibility)
    with time_machine.travel(later, tick=True):
        assert tasks.renew_credential(d.credential.pk) == "needs_reauth"
        assert tasks.renew_credential(d.credential.pk) == "needs_reauth"  # no loop

    report("after_post", d, worker, extra=refreshes() - 1)
    assert refreshes() == 2  # exactly one extra request ...
    assert TokenRequest.objects.refreshes().failed().get().error == "invalid_grant"
    row = d.row()
    # ... and the loss is counted as what it is, not as a revoked link.
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.LOST_ROTATION)
    assert row.last_error_code == Reason.LOST_ROTATION
    assert row.renewal_started_at is None


def test_b_pool_process_killed_after_the_post_redelivered_at_once(
    broker: Broker, drill: Callable[[], Drill], start_worker: Callable[..., DrillWorker]
) -> None:
    """(b) as Celery really redelivers it: reject_on_worker_lost requeues within a second.

    The link is lost (strict AS), with exactly one extra request and no loop, and the loss
    is counted as ``lost_rotation``: the redelivered task finds a journal stamp it did not
    set, so the refresh token may already have been spent.
    """
    d = drill()
    broker.publish(RENEW_ONE, d.credential.pk, task_id=str(uuid.uuid4()))
    worker = start_worker("after_post", "process")

    wait_for_result(worker, "'needs_reauth'")
    worker.stop()

    assert d.killed()
    report("after_post_requeued", d, worker, extra=refreshes() - 1)
    assert len(worker.events(RENEW_ONE, "received")) == 2
    assert refreshes() == 2 and refreshes(200) == 1  # exactly one extra request, no loop
    row = d.row()
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.LOST_ROTATION)
    assert broker.queued() == 0 and broker.unacked() == []


def test_b_grace_window_killed_after_the_post_loses_nothing(
    broker: Broker,
    drill: Callable[[], Drill],
    start_worker: Callable[..., DrillWorker],
    settings: Any,
) -> None:
    settings.SLICE_SANDBOX = {**settings.SLICE_SANDBOX}
    settings.OAUTH2_PROVIDER = oauth2_provider_settings(GRACE_SECONDS=30)
    d = drill()
    broker.publish(RENEW_ONE, d.credential.pk, task_id=str(uuid.uuid4()))
    worker = start_worker("after_post", "process")

    wait_for_result(worker, "'renewed'")
    worker.stop()

    assert d.killed()
    report("after_post_grace30", d, worker, extra=refreshes() - 1)
    assert len(worker.events(RENEW_ONE, "received")) == 2
    # The redelivery presented the rotated-away token inside the grace window: answered.
    assert refreshes() == refreshes(200) == 2
    assert_linked(d, version=d.credential.version + 1)
    assert broker.queued() == 0 and broker.unacked() == []


def test_c_killed_after_commit_before_ack_is_redelivered_and_skipped(
    broker: Broker, drill: Callable[[], Drill], start_worker: Callable[..., DrillWorker]
) -> None:
    d = drill()
    broker.publish(RENEW_ONE, d.credential.pk, task_id=str(uuid.uuid4()))
    worker = start_worker("after_commit", "process")

    wait_for_result(worker, "'skipped'")
    worker.stop()

    assert d.killed()
    report("after_commit", d, worker, extra=refreshes() - 1)
    # acks_late + reject_on_worker_lost: the unacked message came back, and found the
    # committed renewal: no second request.
    assert len(worker.events(RENEW_ONE, "received")) == 2
    # The first delivery finished (and logged) its renewal before the process died.
    assert [e.result for e in worker.events(RENEW_ONE, "succeeded")] == ["'renewed'", "'skipped'"]
    assert refreshes() == refreshes(200) == 1
    assert_linked(d, version=d.credential.version + 1)
    assert broker.queued() == 0 and broker.unacked() == []


def test_d_killed_after_ack_is_not_redelivered(
    broker: Broker, drill: Callable[[], Drill], start_worker: Callable[..., DrillWorker]
) -> None:
    d = drill()
    broker.publish(RENEW_ONE, d.credential.pk, task_id=str(uuid.uuid4()))
    worker = start_worker("after_ack", "worker")

    wait_until(worker.exited, timeout=WAIT_SECONDS, what="the worker to be killed")
    assert d.killed()
    assert broker.queued() == 0 and broker.unacked() == []  # acked: nothing comes back
    # The next beat: the sweep does not select it, and a stray duplicate is skipped.
    with mock.patch.object(tasks.renew_credential, "apply_async") as enqueue:
        assert tasks.renew_due_credentials() == 0
    enqueue.assert_not_called()
    assert tasks.renew_credential(d.credential.pk) == "skipped"

    report("after_ack", d, worker, extra=refreshes() - 1)
    assert refreshes() == refreshes(200) == 1
    assert_linked(d, version=d.credential.version + 1)
