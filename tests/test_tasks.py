"""The Celery tasks, without a broker: called directly, ``.apply()``-ed, or captured."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import responses
from celery.exceptions import Retry
from django.utils import timezone

from slice_connect import tasks
from slice_connect.exceptions import TransientError
from slice_connect.models import SliceCredential
from slice_connect.tasks import renew_credential, renew_due_credentials, retry_delay
from tests.conftest import TOKEN_URL

pytestmark = pytest.mark.django_db

TOKEN_JSON = {
    "access_token": "task-access-3c9e",
    "refresh_token": "task-refresh-81fa",
    "token_type": "Bearer",
    "expires_in": 3600,
}
BASE = {"RENEW_RETRY_BACKOFF": 60, "RENEW_RETRY_BACKOFF_MAX": 1800}

MakeCredential = Callable[..., SliceCredential]


@pytest.fixture
def captured() -> Iterator[mock.MagicMock]:
    with mock.patch.object(renew_credential, "apply_async") as apply_async:
        yield apply_async


def due_in(make_user: Callable[..., Any], make_credential: MakeCredential, days: float) -> Any:
    return make_credential(
        make_user(), refresh_token_expires_at=timezone.now() + timedelta(days=days)
    )


# -- options ----------------------------------------------------------------------------------


def test_task_names_and_options() -> None:
    assert renew_credential.name == "slice_connect.renew_credential"
    assert renew_due_credentials.name == "slice_connect.renew_due_credentials"
    assert renew_credential.acks_late is True
    assert renew_credential.reject_on_worker_lost is True
    assert renew_credential.max_retries is None  # RENEW_MAX_RETRIES decides


# -- renew_due_credentials -----------------------------------------------------------------


def test_beat_enqueues_exactly_the_due_ids_most_urgent_first(
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    captured: mock.MagicMock,
    slice_mock: responses.RequestsMock,
) -> None:
    in_five = due_in(make_user, make_credential, 5)
    in_one = due_in(make_user, make_credential, 1)
    in_three = due_in(make_user, make_credential, 3)
    due_in(make_user, make_credential, 8)  # not due
    due_in(make_user, make_credential, 14)  # not due
    make_credential(
        make_user(),
        refresh_token_expires_at=timezone.now() + timedelta(days=2),
        status=SliceCredential.Status.NEEDS_REAUTH,
    )

    assert renew_due_credentials() == 3

    assert len(slice_mock.calls) == 0  # the beat tick never talks to Slice
    enqueued = [c.args[0] for c in captured.call_args_list]
    assert enqueued == [(in_one.pk,), (in_three.pk,), (in_five.pk,)]
    tokens = {
        str(token)
        for c in SliceCredential.objects.all()
        for token in (c.access_token, c.refresh_token)
    }
    for call in captured.call_args_list:
        (credential_id,) = call.args[0]
        assert type(credential_id) is int
        assert set(call.kwargs) == {"countdown"}
        assert not any(token in repr(call) for token in tokens)


def test_beat_spreads_countdowns_by_rate_with_jitter(
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    captured: mock.MagicMock,
    slice_settings: Callable[..., None],
) -> None:
    slice_settings(RENEW_RATE_LIMIT=4, RENEW_SPREAD=60)
    for days in range(1, 9):
        due_in(make_user, make_credential, days / 2)
    random.seed(1234)
    renew_due_credentials()
    countdowns = [c.kwargs["countdown"] for c in captured.call_args_list]
    assert len(countdowns) == 8
    for slot, countdown in enumerate(countdowns):
        # Slot n of a 4/s schedule is [n/4, (n+1)/4): in order, never bunched.
        assert slot / 4 <= countdown < (slot + 1) / 4
    offsets = [countdown * 4 - slot for slot, countdown in enumerate(countdowns)]
    assert len(set(offsets)) == len(offsets)  # jittered, not a fixed grid


def test_beat_caps_one_run_at_rate_times_spread(
    make_user: Callable[..., Any],
    make_credential: MakeCredential,
    captured: mock.MagicMock,
    slice_settings: Callable[..., None],
) -> None:
    slice_settings(RENEW_RATE_LIMIT=0.5, RENEW_SPREAD=10, RENEW_BATCH_SIZE=2)
    credentials = [due_in(make_user, make_credential, 6 - n / 2) for n in range(9)]
    most_urgent = sorted(credentials, key=lambda c: c.refresh_token_expires_at)

    assert renew_due_credentials() == 5

    assert [c.args[0][0] for c in captured.call_args_list] == [c.pk for c in most_urgent[:5]]
    assert max(c.kwargs["countdown"] for c in captured.call_args_list) < 10


def test_beat_with_nothing_due_enqueues_nothing(
    user: Any, make_credential: MakeCredential, captured: mock.MagicMock
) -> None:
    make_credential(user)
    assert renew_due_credentials() == 0
    captured.assert_not_called()


# -- renew_credential -----------------------------------------------------------------------


def test_renewed_then_skipped_is_idempotent(
    user: Any,
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = make_credential(user, refresh_token_expires_at=timezone.now() + timedelta(days=2))
    slice_mock.add(responses.POST, TOKEN_URL, json=TOKEN_JSON)
    with django_capture_on_commit_callbacks(execute=True):
        assert renew_credential(credential.pk) == "renewed"
    assert renew_credential(credential.pk) == "skipped"
    assert renew_credential.apply(args=(credential.pk,)).get() == "skipped"
    assert len(slice_mock.calls) == 1
    assert SliceCredential.objects.get(pk=credential.pk).refresh_token == "task-refresh-81fa"


def test_not_due_is_skipped_without_a_request(
    user: Any, make_credential: MakeCredential, slice_mock: responses.RequestsMock
) -> None:
    credential = make_credential(user)
    assert renew_credential(credential.pk) == "skipped"
    assert len(slice_mock.calls) == 0


def test_deleted_credential_is_gone(slice_mock: responses.RequestsMock) -> None:
    assert renew_credential(424242) == "gone"
    assert len(slice_mock.calls) == 0


@pytest.mark.parametrize(
    ("status", "error"),
    [(None, None), (400, "invalid_grant")],
    ids=["already-needs-reauth", "invalid-grant"],
)
def test_needs_reauth(
    status: int | None,
    error: str | None,
    user: Any,
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    if status is None:
        credential = make_credential(
            user,
            status=SliceCredential.Status.NEEDS_REAUTH,
            access_token_expires_at=timezone.now(),
        )
    else:
        credential = make_credential(user, access_token_expires_at=timezone.now())
        slice_mock.add(responses.POST, TOKEN_URL, json={"error": error}, status=status)
    assert renew_credential(credential.pk) == "needs_reauth"
    assert len(slice_mock.calls) == (0 if status is None else 1)


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, "invalid_client"), (400, "unsupported_token_flavour"), (302, None)],
    ids=["config", "invalid-response", "redirect"],
)
def test_permanent_non_user_failures_are_failed_without_retry(
    status: int,
    error: str | None,
    user: Any,
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    credential = make_credential(user, access_token_expires_at=timezone.now())
    headers = {"Location": "https://elsewhere.test/"} if status == 302 else None
    slice_mock.add(responses.POST, TOKEN_URL, json={"error": error}, status=status, headers=headers)
    with mock.patch.object(renew_credential, "retry") as retry:
        assert renew_credential(credential.pk) == "failed"
    retry.assert_not_called()
    assert SliceCredential.objects.get(pk=credential.pk).status == SliceCredential.Status.ACTIVE


@pytest.mark.parametrize(
    ("headers", "minimum"),
    [({}, 30.0), ({"Retry-After": "900"}, 900.0), ({"Retry-After": "99999"}, 1800.0)],
    ids=["no-retry-after", "retry-after-900", "retry-after-capped"],
)
def test_transient_error_is_retried_with_a_countdown(
    headers: dict[str, str],
    minimum: float,
    user: Any,
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    credential = make_credential(user, access_token_expires_at=timezone.now())
    slice_mock.add(responses.POST, TOKEN_URL, json={}, status=429, headers=headers)
    with mock.patch.object(renew_credential, "retry", return_value=Retry()) as retry:
        with pytest.raises(Retry):
            renew_credential(credential.pk)
    retry.assert_called_once()
    countdown = retry.call_args.kwargs["countdown"]
    assert minimum <= countdown <= 1800
    if not headers:
        assert countdown <= 60
    exc = retry.call_args.kwargs["exc"]
    assert isinstance(exc, TransientError) and exc.code == "http_429"
    assert len(slice_mock.calls) == 1


def test_retry_backoff_grows_with_retries(
    user: Any,
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
) -> None:
    credential = make_credential(user, access_token_expires_at=timezone.now())
    slice_mock.add(responses.POST, TOKEN_URL, json={}, status=503)
    countdowns = []
    for retries in range(5):
        with mock.patch.object(renew_credential, "retry", return_value=Retry()) as retry:
            renew_credential.push_request(retries=retries)
            try:
                with pytest.raises(Retry):
                    renew_credential.run(credential.pk)
            finally:
                renew_credential.pop_request()
        countdowns.append(retry.call_args.kwargs["countdown"])
    for retries, countdown in enumerate(countdowns):
        ceiling = min(1800, 60 * 2**retries)
        assert ceiling / 2 <= countdown <= ceiling


def test_gives_up_after_max_retries(
    user: Any,
    make_credential: MakeCredential,
    slice_mock: responses.RequestsMock,
    slice_settings: Callable[..., None],
) -> None:
    slice_settings(RENEW_MAX_RETRIES=3)
    credential = make_credential(user, access_token_expires_at=timezone.now())
    slice_mock.add(responses.POST, TOKEN_URL, json={}, status=503)
    with mock.patch.object(renew_credential, "retry") as retry:
        result = renew_credential.apply(args=(credential.pk,), retries=3)
    assert result.get() == "failed"
    retry.assert_not_called()
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == SliceCredential.Status.ACTIVE
    assert stored.failure_count == 1


# -- retry_delay ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retries", "low", "high"),
    [(0, 30, 60), (1, 60, 120), (3, 240, 480), (5, 900, 1800), (6, 900, 1800), (40, 900, 1800)],
)
def test_retry_delay_is_exponential_with_full_jitter_and_capped(
    retries: int, low: float, high: float, slice_settings: Callable[..., None]
) -> None:
    slice_settings(**BASE)
    random.seed(retries)
    delays = [retry_delay(retries) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert max(delays) - min(delays) > (high - low) / 2  # really jittered
    with mock.patch.object(tasks.random, "uniform", side_effect=lambda a, b: a):
        assert retry_delay(retries) == low
    with mock.patch.object(tasks.random, "uniform", side_effect=lambda a, b: b):
        assert retry_delay(retries) == high


@pytest.mark.parametrize(
    ("retries", "retry_after", "expected_low", "expected_high"),
    [
        (0, 600.0, 600, 600),  # Retry-After beyond the backoff wins
        (0, 10.0, 30, 60),  # a short Retry-After does not shorten the backoff
        (0, 0.0, 30, 60),
        (2, 5000.0, 1800, 1800),  # but the cap still holds
        (10, 90.0, 900, 1800),
    ],
)
def test_retry_delay_honours_retry_after(
    retries: int,
    retry_after: float,
    expected_low: float,
    expected_high: float,
    slice_settings: Callable[..., None],
) -> None:
    slice_settings(**BASE)
    for _ in range(50):
        assert expected_low <= retry_delay(retries, retry_after) <= expected_high


def test_retry_delay_reads_settings(slice_settings: Callable[..., None]) -> None:
    slice_settings(RENEW_RETRY_BACKOFF=timedelta(seconds=2), RENEW_RETRY_BACKOFF_MAX=5)
    assert all(1 <= retry_delay(0) <= 2 for _ in range(50))
    assert all(2.5 <= retry_delay(9) <= 5 for _ in range(50))
    assert retry_delay(0, retry_after=3600) == 5
