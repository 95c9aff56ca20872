"""SliceCredential: safe text forms, renewal deadlines and the keyset id iterator."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.functional import Promise

from slice_connect import fields
from slice_connect.models import SliceCredential

pytestmark = pytest.mark.django_db

Status = SliceCredential.Status
NOW = datetime(2030, 1, 15, 12, 0, tzinfo=timezone.get_fixed_timezone(0))
RENEW_WITHIN = timedelta(days=7)  # the default


@pytest.fixture
def credential(user: Any, make_credential: Callable[..., SliceCredential]) -> SliceCredential:
    return make_credential(
        user,
        access_token=f"ACCESS-CANARY-{secrets.token_hex(8)}",
        refresh_token=f"REFRESH-CANARY-{secrets.token_hex(8)}",
    )


def test_str_and_repr_never_contain_tokens(credential: SliceCredential) -> None:
    fresh = SliceCredential.objects.get(pk=credential.pk)
    texts = [str(fresh), repr(fresh), f"{fresh!s} {fresh!r}"]
    for text in texts:
        assert isinstance(fresh.access_token, str)
        assert isinstance(fresh.refresh_token, str)
        assert fresh.access_token not in text
        assert fresh.refresh_token not in text
        assert "CANARY" not in text
    assert str(fresh) == f"Slice link of {fresh.user}"
    assert repr(fresh) == f"<SliceCredential id={fresh.pk} user_id={fresh.user_id} status=active>"


def test_repr_of_unsaved_instance(user: Any) -> None:
    unsaved = SliceCredential(user=user, access_token="ACCESS-X", refresh_token="REFRESH-X")
    assert "ACCESS-X" not in repr(unsaved) and "REFRESH-X" not in repr(unsaved)


def test_one_credential_per_user(user: Any, make_credential: Callable[..., Any]) -> None:
    make_credential(user)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_credential(user)


def test_deleting_the_user_deletes_the_credential(credential: SliceCredential) -> None:
    get_user_model().objects.filter(pk=credential.user_id).delete()
    assert not SliceCredential.objects.filter(pk=credential.pk).exists()


def test_related_name(credential: SliceCredential, user: Any) -> None:
    assert user.slice_credential == credential


def test_every_field_has_a_translated_verbose_name() -> None:
    for field in SliceCredential._meta.concrete_fields:
        if field.name == "id":
            continue
        # Given explicitly through gettext_lazy, not derived from the attribute name.
        assert isinstance(field.verbose_name, Promise), field.name


# -- deadlines --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "due"),
    [
        (RENEW_WITHIN - timedelta(seconds=1), True),
        (RENEW_WITHIN, True),  # the boundary is inclusive
        (RENEW_WITHIN + timedelta(microseconds=1), False),
        (RENEW_WITHIN + timedelta(days=1), False),
        (timedelta(0), True),
        (-timedelta(days=3), True),  # already expired: still selected (renew marks it)
    ],
    ids=str,
)
def test_due_for_renewal_boundary(
    make_credential: Callable[..., SliceCredential],
    make_user: Callable[..., Any],
    offset: timedelta,
    due: bool,
) -> None:
    credential = make_credential(make_user(), refresh_token_expires_at=NOW + offset)
    selected = list(SliceCredential.objects.due_for_renewal(now=NOW))
    assert (credential in selected) is due
    assert credential.refresh_token_due(NOW) is due


def test_due_for_renewal_follows_renew_within_live(
    make_credential: Callable[..., SliceCredential], make_user: Callable[..., Any]
) -> None:
    credential = make_credential(make_user(), refresh_token_expires_at=NOW + timedelta(days=2))
    with override_settings(
        SLICE_CONNECT={"CLIENT_ID": "x", "CLIENT_SECRET": "y", "RENEW_WITHIN": 3600}
    ):
        assert list(SliceCredential.objects.due_for_renewal(now=NOW)) == []
        assert not credential.refresh_token_due(NOW)
    with override_settings(
        SLICE_CONNECT={"CLIENT_ID": "x", "CLIENT_SECRET": "y", "RENEW_WITHIN": timedelta(days=2)}
    ):
        assert list(SliceCredential.objects.due_for_renewal(now=NOW)) == [credential]


def test_due_for_renewal_skips_inactive(
    make_credential: Callable[..., SliceCredential], make_user: Callable[..., Any]
) -> None:
    active = make_credential(make_user(), refresh_token_expires_at=NOW)
    make_credential(make_user(), refresh_token_expires_at=NOW, status=Status.NEEDS_REAUTH)
    assert list(SliceCredential.objects.due_for_renewal(now=NOW)) == [active]


def test_due_for_renewal_defaults_to_now(
    make_credential: Callable[..., SliceCredential], make_user: Callable[..., Any]
) -> None:
    now = timezone.now()
    due = make_credential(make_user(), refresh_token_expires_at=now + timedelta(days=6))
    make_credential(make_user(), refresh_token_expires_at=now + timedelta(days=8))
    assert list(SliceCredential.objects.due_for_renewal()) == [due]


@pytest.mark.parametrize(
    ("offset", "expiring"),
    [
        (timedelta(seconds=119), True),
        (timedelta(seconds=120), True),
        (timedelta(seconds=121), False),
        (-timedelta(seconds=1), True),
    ],
    ids=str,
)
def test_access_token_leeway(
    make_credential: Callable[..., SliceCredential],
    make_user: Callable[..., Any],
    offset: timedelta,
    expiring: bool,
) -> None:
    credential = make_credential(
        make_user(),
        access_token_expires_at=NOW + offset,
        refresh_token_expires_at=NOW + timedelta(days=14),
    )
    assert credential.access_token_expiring(NOW) is expiring
    assert credential.needs_renewal(NOW) is expiring


def test_needs_renewal_when_refresh_token_due(
    make_credential: Callable[..., SliceCredential], make_user: Callable[..., Any]
) -> None:
    credential = make_credential(
        make_user(),
        access_token_expires_at=NOW + timedelta(hours=1),
        refresh_token_expires_at=NOW + timedelta(days=6),
    )
    assert not credential.access_token_expiring(NOW)
    assert credential.needs_renewal(NOW)


def test_active_and_is_active(
    make_credential: Callable[..., SliceCredential], make_user: Callable[..., Any]
) -> None:
    good = make_credential(make_user())
    bad = make_credential(make_user(), status=Status.NEEDS_REAUTH)
    assert good.is_active and not bad.is_active
    assert list(SliceCredential.objects.active()) == [good]


# -- iter_ids ---------------------------------------------------------------------------


@pytest.fixture
def five(
    make_credential: Callable[..., SliceCredential], make_user: Callable[..., Any]
) -> list[SliceCredential]:
    # Ties on the deadline straddle the batch boundaries, so the pk tie-break matters.
    offsets = [3, 1, 1, 2, 1]
    return [
        make_credential(make_user(), refresh_token_expires_at=NOW + timedelta(days=d))
        for d in offsets
    ]


def _urgency_order(rows: list[SliceCredential]) -> list[int]:
    return [c.pk for c in sorted(rows, key=lambda c: (c.refresh_token_expires_at, c.pk))]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 6, 100])
def test_iter_ids_yields_every_id_once_most_urgent_first(
    five: list[SliceCredential], batch_size: int
) -> None:
    ids = list(SliceCredential.objects.all().iter_ids(batch_size=batch_size))
    assert ids == _urgency_order(five)
    assert len(set(ids)) == 5


def test_iter_ids_batches_queries(five: list[SliceCredential]) -> None:
    with CaptureQueriesContext(connection) as queries:
        ids = list(SliceCredential.objects.all().iter_ids(batch_size=2))
    assert len(ids) == 5
    assert len(queries) == 3  # 2 + 2 + 1
    for query in queries:
        assert "access_token" not in query["sql"] and 'refresh_token"' not in query["sql"]
        assert "LIMIT 2" in query["sql"]


def test_iter_ids_exact_multiple_stops_after_an_empty_page(five: list[SliceCredential]) -> None:
    five[0].delete()
    with CaptureQueriesContext(connection) as queries:
        ids = list(SliceCredential.objects.all().iter_ids(batch_size=2))
    assert ids == _urgency_order(five[1:])
    assert len(queries) == 3  # 2 + 2 + 0


def test_iter_ids_respects_the_queryset_filter(
    five: list[SliceCredential], make_credential: Callable[..., Any], make_user: Callable[..., Any]
) -> None:
    make_credential(make_user(), refresh_token_expires_at=NOW, status=Status.NEEDS_REAUTH)
    ids = list(SliceCredential.objects.due_for_renewal(now=NOW).iter_ids(batch_size=2))
    assert ids == _urgency_order(five)


def test_iter_ids_default_batch_size_from_settings(five: list[SliceCredential]) -> None:
    with override_settings(
        SLICE_CONNECT={"CLIENT_ID": "x", "CLIENT_SECRET": "y", "RENEW_BATCH_SIZE": 2}
    ):
        with CaptureQueriesContext(connection) as queries:
            ids = list(SliceCredential.objects.all().iter_ids())
    assert ids == _urgency_order(five)
    assert len(queries) == 3


def test_iter_ids_never_decrypts(five: list[SliceCredential], monkeypatch: Any) -> None:
    def boom() -> Any:
        raise AssertionError("iter_ids decrypted a token")

    monkeypatch.setattr(fields, "current_fernet", boom)
    assert len(list(SliceCredential.objects.all().iter_ids(batch_size=2))) == 5


def test_iter_ids_sees_rows_moving_without_repeating(five: list[SliceCredential]) -> None:
    order = _urgency_order(five)
    iterator = SliceCredential.objects.all().iter_ids(batch_size=2)
    first = [next(iterator), next(iterator)]
    # A renewed row moves to the back: it is yielded again at its new place, never lost.
    SliceCredential.objects.filter(pk=first[0]).update(
        refresh_token_expires_at=NOW + timedelta(days=30)
    )
    rest = list(iterator)
    assert first == order[:2]
    assert rest == [*order[2:], first[0]]
    assert set(first + rest) == set(order)


def test_without_tokens_defers_token_columns(credential: SliceCredential) -> None:
    row = SliceCredential.objects.without_tokens().get(pk=credential.pk)
    assert row.get_deferred_fields() == {"access_token", "refresh_token"}


def test_copy_from_skips_deferred_fields(credential: SliceCredential) -> None:
    target = SliceCredential.objects.get(pk=credential.pk)
    SliceCredential.objects.filter(pk=credential.pk).update(version=7, failure_count=2)
    source = SliceCredential.objects.without_tokens().get(pk=credential.pk)
    target.copy_from(source)
    assert target.version == 7 and target.failure_count == 2
    assert target.access_token == credential.access_token


def test_repr_of_deleted_deferred_instance_does_not_query(
    credential: SliceCredential, django_assert_num_queries: Any
) -> None:
    partial = SliceCredential.objects.only("pk").get(pk=credential.pk)
    SliceCredential.objects.filter(pk=credential.pk).delete()
    with django_assert_num_queries(0):
        text = repr(partial)
    assert text == f"<SliceCredential id={credential.pk} user_id=None status=None>"
