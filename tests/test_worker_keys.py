"""A real Celery worker started without the key marks nobody; with the key it renews all.

The worker is a subprocess (``celery -A example_project.celery worker``, prefork, Redis)
sharing the PostgreSQL test database, like ``tests/test_celery_worker.py``; its
``FERNET_KEYS`` come from ``SLICE_CONNECT_TEST_FERNET_KEYS`` (see ``tests/worker_settings.py``),
so the web side (this process) and the worker disagree on the keys, as after a bad deploy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

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
USERS = 50
WAIT_SECONDS = 90.0
WRONG = "a-well-formed-key-that-never-encrypted-anything-here"


@pytest.fixture
def broker() -> Iterator[Broker]:
    with own_queue("slice-connect-test-keys") as broker:
        yield broker


@pytest.fixture
def start_worker(
    broker: Broker, slice_server: SliceServer, settings: Any, tmp_path: Path
) -> Iterator[Callable[..., CeleryWorker]]:
    workers: list[CeleryWorker] = []

    def start(fernet_keys: list[str] | None) -> CeleryWorker:
        env = subprocess_env(settings.SLICE_CONNECT, redis_url=REDIS_URL, celery_queue=broker.queue)
        if fernet_keys is not None:
            env["SLICE_CONNECT_TEST_FERNET_KEYS"] = json.dumps(fernet_keys)
        worker = CeleryWorker(env=env, log_path=tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        worker.start()
        worker.wait_ready(timeout=60)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def test_a_worker_without_the_key_marks_nobody_and_the_fixed_one_renews_everyone(
    broker: Broker,
    slice_server: SliceServer,
    start_worker: Callable[..., CeleryWorker],
    browser_session: Any,
    make_user: Callable[..., Any],
) -> None:
    users = [make_user() for _ in range(USERS)]
    link_all(slice_server.url, [browser_session(user) for user in users])
    SliceCredential.objects.update(access_token_expires_at=timezone.now() - timedelta(minutes=1))
    pks = sorted(SliceCredential.objects.values_list("pk", flat=True))
    assert len(pks) == USERS
    tokens = [
        str(t) for c in SliceCredential.objects.all() for t in (c.access_token, c.refresh_token)
    ]
    refreshes_before = slice_server.token_requests("refresh_token")

    wrong = start_worker([WRONG])
    for pk in pks:
        broker.publish(RENEW_ONE, pk)
    wait_until(
        lambda: len(wrong.events(RENEW_ONE, "succeeded")) >= USERS,
        timeout=WAIT_SECONDS,
        what="the tasks of the worker without the key",
    )
    wrong.stop()
    results = [e.result for e in wrong.events(RENEW_ONE, "succeeded")]
    marked = SliceCredential.objects.exclude(status=SliceCredential.Status.ACTIVE).count()
    log = wrong.log()
    print(
        f"\nworker without the key: {results.count(repr('failed'))} tasks failed, "
        f"users marked {marked} of {USERS}, "
        f"refresh requests {slice_server.token_requests('refresh_token') - refreshes_before}, "
        f"CRITICAL lines {log.count('CRITICAL')}"
    )
    assert results == [repr("failed")] * USERS
    assert marked == 0
    assert slice_server.token_requests("refresh_token") == refreshes_before
    assert log.count("No user was marked") == USERS
    assert not wrong.events(RENEW_ONE, "retry")
    for token in tokens:
        assert token not in log

    fixed = start_worker(None)  # the suite's own key list
    for pk in pks:
        broker.publish(RENEW_ONE, pk)
    wait_until(
        lambda: len(fixed.events(RENEW_ONE, "succeeded")) >= USERS,
        timeout=WAIT_SECONDS,
        what="the tasks of the fixed worker",
    )
    fixed.stop()
    renewed = SliceCredential.objects.filter(version=2, status=SliceCredential.Status.ACTIVE)
    print(f"worker with the key: {renewed.count()} of {USERS} renewed")
    assert [e.result for e in fixed.events(RENEW_ONE, "succeeded")] == [repr("renewed")] * USERS
    assert renewed.count() == USERS
