"""AsyncSliceClient under a real ASGI server, with sync callers, on PostgreSQL.

uvicorn serves the Django site (an async view, ``tests/urls_async.py``) in its own process,
while the sandbox, a
strictly rotating OAuth server (django-oauth-toolkit, no grace period, each refresh answered
after 0.2 s), runs in the live server. One credential whose access token has expired is then
used at once by 30 coroutines in the async view and by 10 threads with the sync client: the
sandbox must see exactly one refresh, every call must succeed, and the event loop must never
be blocked for more than 50 ms (a watchdog coroutine in the view measures the loop thread's
CPU time between its ticks, and prints the wall-clock gap too).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.db import connection
from django.utils import timezone

from slice_connect.client import SliceClient
from slice_connect.models import SliceCredential

from .flow import link
from .workers import subprocess_env

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

COROUTINES, THREADS = 30, 10
MAX_STALL_MS = 50


@pytest.fixture
def asgi_site(slice_server: Any, settings: Any) -> Iterator[str]:
    """Serve the test site with uvicorn in a process of its own, on the test database.

    Its own process, so that the event loop measured is the site's alone: the sandbox and
    the sync callers (this process) do not share its interpreter lock.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    env = subprocess_env(settings.SLICE_CONNECT)
    env["SLICE_CONNECT_TEST_ROOT_URLCONF"] = "tests.urls_async"
    command = [sys.executable, "-m", "uvicorn", "tests.asgi:application"]
    command += ["--fd", str(listener.fileno()), "--lifespan", "off", "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, pass_fds=[listener.fileno()])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "uvicorn exited"
            try:
                requests.get(f"{url}/accounts/login/", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        listener.close()


def test_thirty_coroutines_and_ten_threads_cause_one_refresh(
    slice_server: Any, asgi_site: str, settings: Any, user: Any, browser_session: Any
) -> None:
    settings.SLICE_SANDBOX = {
        **settings.SLICE_SANDBOX,
        "TOKEN_DELAY_SECONDS": 0.2,
        "GRACE_SECONDS": 0,
    }
    assert link(browser_session(user), slice_server.url).status_code == 302
    credential = SliceCredential.objects.get(user=user)
    SliceCredential.objects.filter(pk=credential.pk).update(
        access_token_expires_at=timezone.now() - timedelta(minutes=5)
    )
    refreshes_before = slice_server.token_requests("refresh_token")

    start = threading.Barrier(THREADS + 1)
    outcomes: list[Any] = []

    def sync_caller() -> None:
        try:
            start.wait()
            row = SliceCredential.objects.get(pk=credential.pk)
            outcomes.append(SliceClient(row).get("users/self"))
        except Exception as exc:  # recorded, asserted below
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sync_caller) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    answer = requests.get(f"{asgi_site}/burst/{user.pk}/{COROUTINES}/", timeout=60)
    for thread in threads:
        thread.join(60)

    assert answer.status_code == 200, answer.text[:300]
    burst = answer.json()
    print(
        f"\nasync burst: {burst['ok']}/{COROUTINES} coroutines ok, "
        f"{sum(isinstance(o, dict) for o in outcomes)}/{THREADS} threads ok, "
        f"refreshes={slice_server.token_requests('refresh_token') - refreshes_before}, "
        f"longest event-loop stall={burst['longest_stall_ms']} ms wall-clock, "
        f"{burst['longest_busy_ms']} ms of the loop's own CPU"
    )
    assert burst["errors"] == [] and burst["ok"] == COROUTINES
    assert all(isinstance(o, dict) and "result" in o for o in outcomes), outcomes
    assert slice_server.token_requests("refresh_token") - refreshes_before == 1
    # Blocked = the loop busy running a callback (its thread's CPU time between two ticks of
    # the watchdog). The wall-clock gap is printed too; it also counts waiting for a CPU on
    # a loaded machine and for the interpreter lock, which no code on the loop can prevent.
    assert burst["longest_busy_ms"] < MAX_STALL_MS
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.version == credential.version + 1 and stored.is_active
