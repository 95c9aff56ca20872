"""``LOCK_TIMEOUT`` on PostgreSQL: a renewal waits that long for a row lock, then gives up.

The renewal sets ``lock_timeout`` inside its own statements (the journal stamp and the
locking ``SELECT``), not with a statement of its own; these tests hold the row locked from
another connection and check that each of the two waits ends with
:class:`RenewalLockTimeout` after about ``LOCK_TIMEOUT``, that nothing is sent to Slice,
and that the settings do not outlive the renewal's statements.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from django.db import connection, connections, transaction
from django.utils import timezone

from slice_connect import services
from slice_connect.exceptions import RenewalLockTimeout
from slice_connect.models import SliceCredential

from .conftest import TOKEN_URL

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

LOCK_TIMEOUT = 1


class RowLock:
    """Holds a credential's row lock from another connection until released."""

    def __init__(self, pk: int) -> None:
        self.pk = pk
        self.held = threading.Event()
        self.release = threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with transaction.atomic():
                SliceCredential.objects.select_for_update().get(pk=self.pk)
                self.held.set()
                self.release.wait(timeout=30)
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            connections.close_all()

    def __enter__(self) -> RowLock:
        self.thread.start()
        assert self.held.wait(timeout=10), self.errors
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(timeout=30)
        assert not self.errors, self.errors


@pytest.fixture
def due(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_settings: Callable[..., None],
) -> Iterator[SliceCredential]:
    slice_settings(LOCK_TIMEOUT=LOCK_TIMEOUT, HTTP_TIMEOUT=(0.1, 0.2))
    yield make_credential(user, access_token_expires_at=timezone.now() - timedelta(minutes=1))


def _session_setting(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SHOW {name}")
        return str(cursor.fetchone()[0])


def _renew_timed(credential: SliceCredential) -> tuple[BaseException, float]:
    began = time.monotonic()
    with pytest.raises(RenewalLockTimeout) as caught:
        services.renew(credential)
    return caught.value, time.monotonic() - began


@pytest.mark.parametrize(
    "stamped",
    [
        pytest.param(False, id="the-stamp-waits"),
        pytest.param(True, id="the-locking-select-waits"),
    ],
)
def test_a_held_row_lock_ends_the_renewal_after_lock_timeout(
    due: SliceCredential, slice_mock: responses.RequestsMock, stamped: bool
) -> None:
    if stamped:
        # A stamp is on record (a sibling's): the stamp matches nothing and does not wait,
        # so it is the SELECT ... FOR UPDATE that waits.
        SliceCredential.objects.filter(pk=due.pk).update(renewal_started_at=timezone.now())
    before = SliceCredential.objects.values_list("renewal_started_at", "version").get(pk=due.pk)
    with RowLock(due.pk):
        error, seconds = _renew_timed(due)
    assert error.code == "lock_timeout"
    assert LOCK_TIMEOUT * 0.9 <= seconds < LOCK_TIMEOUT + 5, seconds
    assert len(slice_mock.calls) == 0
    after = SliceCredential.objects.values_list("renewal_started_at", "version").get(pk=due.pk)
    assert after == before  # the stamp that timed out was rolled back with its statement
    assert _session_setting("lock_timeout") == "0"  # only the renewal's statements waited less


def test_the_renewals_settings_do_not_outlive_it(
    due: SliceCredential, slice_mock: responses.RequestsMock
) -> None:
    slice_mock.add(
        responses.POST,
        TOKEN_URL,
        json={
            "access_token": "new-access",
            "refresh_token": "new-refresh",
            "token_type": "Bearer",
            "expires_in": 3600,
        },
    )
    assert services.renew_with_result(due).renewed
    # Both were set for the renewal's own statements (the stamp commits without waiting for
    # the WAL flush); the connection goes back to the site as it was.
    assert _session_setting("lock_timeout") == "0"
    assert _session_setting("synchronous_commit") == "on"
