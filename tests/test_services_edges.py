"""Edges of slice_connect.services that mutation testing found unchecked (docs/development.rst).

A process whose keys read nothing (the link left exactly as it was, the stamp dropped, the
operator told why), a row that is itself unreadable, ``mark_unreadable`` marking exactly
the rows named, a misconfigured client after a lost answer, and the small helpers
(``credential_of`` on odd users, ``expected_issuer``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
import time_machine
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.db.models.signals import post_delete
from django.http import QueryDict
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from slice_connect import durable, keyprobe, services
from slice_connect.exceptions import (
    ConfigurationError,
    CredentialUnreadable,
    NeedsReauth,
    NotLinked,
    RenewalInTransaction,
)
from slice_connect.models import SliceCredential
from slice_connect.signals import credential_unlinked
from tests.conftest import REVOKE_URL, TOKEN_URL

from .raw import flip_bit, raw_tokens, write_raw_tokens

pytestmark = pytest.mark.django_db

Status = SliceCredential.Status
Reason = SliceCredential.Reason
WRONG = "a-well-formed-key-that-never-encrypted-anything-here"
# A frozen "now" close to the real one (make_credential dates its tokens from the real one).
NOW = datetime.now(dt_timezone.utc).replace(microsecond=0) + timedelta(minutes=1)


@pytest.fixture
def due(
    make_user: Callable[..., Any], make_credential: Callable[..., SliceCredential]
) -> Callable[[], SliceCredential]:
    """A linked user whose access token has expired (a renewal is due)."""

    def make() -> SliceCredential:
        return make_credential(
            make_user(), access_token_expires_at=timezone.now() - timedelta(minutes=5)
        )

    return make


def critical(caplog: pytest.LogCaptureFixture, level: int = logging.CRITICAL) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "slice_connect.services" and r.levelno == level
    ]


def test_a_process_whose_keys_read_nothing_leaves_a_due_link_as_it_was(
    due: Callable[[], SliceCredential],
    settings: Any,
    slice_mock: responses.RequestsMock,
    failures: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    credential = due()
    before = raw_tokens(credential.pk)
    settings.FERNET_KEYS = [WRONG]
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(ConfigurationError) as excinfo:
            services.renew(SliceCredential.objects.get(pk=credential.pk))
    fault = keyprobe.NO_KEY_READS
    assert excinfo.value.code == "fernet_keys"
    assert str(excinfo.value) == (
        f"This process cannot decrypt stored credentials ({fault}); credential "
        f"{credential.pk} was left unchanged."
    )
    assert critical(caplog) == [
        f"Credential {credential.pk} reads as undecryptable, but this process is at fault "
        f"({fault}): check FERNET_KEYS in every process. No user was marked."
    ]
    row = SliceCredential.objects.without_tokens().get(pk=credential.pk)
    assert (row.status, row.renewal_started_at, row.failure_count) == (Status.ACTIVE, None, 0)
    assert raw_tokens(credential.pk) == before
    assert failures == [] and len(slice_mock.calls) == 0


def test_a_row_that_is_itself_unreadable_is_marked_and_said_so(
    due: Callable[[], SliceCredential],
    slice_mock: responses.RequestsMock,
    failures: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    due()  # another row the keys read: the keys are right, this row is not
    victim = due()
    access, refresh = raw_tokens(victim.pk)
    write_raw_tokens(victim.pk, access, flip_bit(refresh))
    with (
        time_machine.travel(NOW, tick=False),
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(CredentialUnreadable) as excinfo,
    ):
        services.renew(SliceCredential.objects.get(pk=victim.pk))
    assert str(excinfo.value) == f"Credential {victim.pk} cannot be decrypted."
    assert critical(caplog, logging.ERROR) == [
        f"Credential {victim.pk} cannot be decrypted with FERNET_KEYS."
    ]
    row = SliceCredential.objects.without_tokens().get(pk=victim.pk)
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.UNDECRYPTABLE)
    assert row.last_error_at == NOW
    assert [e["permanent"] for e in failures] == [True]
    assert len(slice_mock.calls) == 0


def test_mark_unreadable_marks_exactly_the_active_rows_named(
    due: Callable[[], SliceCredential],
    failures: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    first, second, third = due(), due(), due()
    SliceCredential.objects.filter(pk=second.pk).update(
        status=Status.NEEDS_REAUTH, status_reason=Reason.INVALID_GRANT
    )
    with time_machine.travel(NOW, tick=False), django_capture_on_commit_callbacks(execute=True):
        assert services.mark_unreadable([first.pk, second.pk, third.pk]) == 2
    rows = {r.pk: r for r in SliceCredential.objects.without_tokens()}
    for pk in (first.pk, third.pk):
        assert (rows[pk].status, rows[pk].status_reason) == (
            Status.NEEDS_REAUTH,
            Reason.UNDECRYPTABLE,
        )
        assert rows[pk].last_error_at == NOW
    assert rows[second.pk].status_reason == Reason.INVALID_GRANT
    errors = sorted((e["credential"].pk, e["error"], e["permanent"]) for e in failures)
    assert [(pk, permanent) for pk, _error, permanent in errors] == [
        (first.pk, True),
        (third.pk, True),
    ]
    for pk, error, _permanent in errors:
        assert type(error) is CredentialUnreadable
        assert (str(error), error.reason) == (
            f"Credential {pk} cannot be decrypted.",
            Reason.UNDECRYPTABLE,
        )


def test_mark_unreadable_marks_nobody_when_the_process_is_at_fault(
    due: Callable[[], SliceCredential],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = due()
    settings.FERNET_KEYS = [WRONG]
    with pytest.raises(ConfigurationError) as excinfo:
        services.mark_unreadable([credential.pk])
    fault = keyprobe.NO_KEY_READS
    assert (excinfo.value.code, str(excinfo.value)) == (
        "fernet_keys",
        f"This process cannot decrypt stored credentials ({fault}); nobody was marked.",
    )
    assert critical(caplog) == [f"Refusing to mark credentials undecryptable: {fault}."]
    assert SliceCredential.objects.get(pk=credential.pk).status == Status.ACTIVE


def test_a_client_rejected_after_a_lost_answer_keeps_the_doubt_on_record(
    due: Callable[[], SliceCredential],
    slice_mock: responses.RequestsMock,
    failures: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = due()
    slice_mock.post(TOKEN_URL, status=503)
    slice_mock.post(TOKEN_URL, status=401, json={"error": "invalid_client"})
    with time_machine.travel(NOW, tick=False), pytest.raises(ConfigurationError) as excinfo:
        services.renew(SliceCredential.objects.get(pk=credential.pk))
    assert excinfo.value.code == "invalid_client"
    row = SliceCredential.objects.without_tokens().get(pk=credential.pk)
    assert (row.status, row.failure_count, row.last_error_code) == (
        Status.ACTIVE,
        1,
        "invalid_client",
    )
    assert row.last_error_at == NOW and row.renewal_started_at is not None
    assert critical(caplog) == [
        f"Slice rejected our OAuth client (invalid_client) while renewing credential "
        f"{credential.pk}: check SLICE_CONNECT['CLIENT_ID'] and ['CLIENT_SECRET']. "
        "No user was marked."
    ]
    assert failures == []


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("by_id", [False, True], ids=["renew", "renew_by_id"])
def test_a_renewal_that_cannot_commit_on_its_own_says_what_to_do(
    due: Callable[[], SliceCredential],
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    by_id: bool,
) -> None:
    # What SQLite does inside a caller's transaction, forced on any database.
    monkeypatch.setattr(durable, "own_connection_possible", lambda using="default": False)
    credential = due()
    with pytest.raises(RenewalInTransaction) as excinfo, transaction.atomic():
        if by_id:
            services.renew_by_id(credential.pk)
        else:
            services.renew(credential)
    assert str(excinfo.value) == (
        "Renewal refused inside a transaction on SQLite: it could not commit on its own. "
        "Renew outside transaction.atomic() / ATOMIC_REQUESTS, or use PostgreSQL."
    )
    assert critical(caplog, logging.ERROR) == [
        "A Slice renewal was refused: it was called inside a database transaction on SQLite, "
        "where it cannot commit on its own. Renew outside transaction.atomic() (mark the view "
        "transaction.non_atomic_requests under ATOMIC_REQUESTS) or use PostgreSQL."
    ]
    assert len(slice_mock.calls) == 0


def test_a_renewal_without_rotation_says_so(
    due: Callable[[], SliceCredential],
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="slice_connect.services")
    credential = due()
    slice_mock.post(
        TOKEN_URL, json={"access_token": "new-access", "token_type": "Bearer", "expires_in": 600}
    )
    services.renew(SliceCredential.objects.get(pk=credential.pk))
    assert (
        f"Slice renewed credential {credential.pk} without rotating its refresh token."
        in critical(caplog, logging.INFO)
    )


# -- helpers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user",
    [
        None,
        SimpleNamespace(pk=1),  # no is_authenticated at all
        SimpleNamespace(is_authenticated=False, pk=1),
    ],
    ids=["none", "no-attribute", "not-authenticated"],
)
def test_credential_of_odd_users_is_none(user: Any) -> None:
    assert services.credential_of(user) is None


def test_credential_of_an_unsaved_user_is_none() -> None:
    assert services.credential_of(get_user_model()(username="unsaved")) is None


@pytest.mark.parametrize(
    ("authorize_url", "issuer"),
    [
        ("https://slice.test/oauth/authorize", "https://slice.test"),
        (
            "https://slice.test:8443/o/authorize?next=https://elsewhere.test/",
            "https://slice.test:8443",
        ),
    ],
)
def test_expected_issuer_is_the_authorize_urls_origin(
    slice_settings: Callable[..., None], authorize_url: str, issuer: str
) -> None:
    slice_settings(AUTHORIZE_URL=authorize_url, ISSUER="")
    assert services.expected_issuer() == issuer


def test_a_refused_refresh_token_is_recorded_and_logged_as_a_warning(
    due: Callable[[], SliceCredential],
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    credential = due()
    slice_mock.post(TOKEN_URL, status=400, json={"error": "invalid_grant"})
    with time_machine.travel(NOW, tick=False), pytest.raises(NeedsReauth) as excinfo:
        services.renew(SliceCredential.objects.get(pk=credential.pk))
    assert str(excinfo.value) == f"Slice refused credential {credential.pk}'s refresh token."
    row = SliceCredential.objects.without_tokens().get(pk=credential.pk)
    assert (row.status_reason, row.failure_count, row.last_error_at) == (
        Reason.INVALID_GRANT,
        1,
        NOW,
    )
    assert critical(caplog, logging.WARNING) == [
        f"Credential {credential.pk} needs re-link: invalid_grant."
    ]
    assert critical(caplog, logging.ERROR) == []


# -- the callback's refusals and unlinking ------------------------------------------------------


def test_a_refused_callback_names_its_reason_only(
    user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="slice_connect.services")
    request = RequestFactory().get("/slice/callback/")
    request.user = user
    request.session = SessionStore()
    with pytest.raises(services.LinkRefused) as excinfo:
        services.complete_link(request, QueryDict(""))
    assert (excinfo.value.reason, excinfo.value.error) == (services.Refusal.NO_STATE, "")
    assert str(excinfo.value) == "no_state"
    assert critical(caplog, logging.INFO) == ["Slice callback rejected: no_state"]


@pytest.mark.parametrize("defer", [False, True], ids=["loaded", "deferred"])
def test_a_hand_sent_post_delete_revokes_the_token_it_holds(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    django_capture_on_commit_callbacks: Any,
    defer: bool,
) -> None:
    # pre_delete did not run: the instance's own copy is revoked, unless it was not loaded.
    credential = make_credential(user)
    slice_mock.post(REVOKE_URL, status=200)
    rows = SliceCredential.objects.defer("refresh_token") if defer else SliceCredential.objects
    instance = rows.get(pk=credential.pk)
    with django_capture_on_commit_callbacks(execute=True):
        post_delete.send(sender=SliceCredential, instance=instance, using="default")
    sent = [parse_qs(c.request.body)["token"][0] for c in slice_mock.calls]
    assert sent == ([] if defer else [credential.refresh_token])


@pytest.mark.django_db(transaction=True)
def test_a_failing_unlink_receiver_does_not_fail_the_unlink(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    slice_mock: responses.RequestsMock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="slice_connect.services")
    credential = make_credential(user)
    pk = credential.pk
    slice_mock.post(REVOKE_URL, status=200)

    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("a receiver of the site's own")

    credential_unlinked.connect(broken)
    try:
        services.unlink(credential)
    finally:
        credential_unlinked.disconnect(broken)
    assert not SliceCredential.objects.exists()
    assert len(slice_mock.calls) == 1  # revoked before the signal was sent
    assert f"Unlinked Slice credential {pk} (user {user.pk})." in critical(caplog, logging.INFO)


def test_a_renewal_of_an_unsaved_credential_is_not_linked(user: Any) -> None:
    with pytest.raises(NotLinked) as excinfo:
        services.renew(SliceCredential(user=user))
    assert str(excinfo.value) == "This credential has not been saved (or was deleted)."


def test_a_stale_seen_version_stamps_nothing(
    due: Callable[[], SliceCredential], slice_mock: responses.RequestsMock
) -> None:
    # After a 401 the API client renews only if the row still holds the version it used. A
    # row renewed meanwhile is neither stamped nor posted for: the stamp's one conditional
    # UPDATE matches no row, so no second write has to take a stamp back.
    credential = due()
    stale = credential.version
    SliceCredential.objects.filter(pk=credential.pk).update(version=stale + 1)
    with CaptureQueriesContext(connection) as queries:
        result = services.renew_with_result(credential, seen_version=stale)
    assert result.renewed is False
    writes = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert len(writes) == 1
    assert SliceCredential.objects.get(pk=credential.pk).renewal_started_at is None
    assert len(slice_mock.calls) == 0
