"""Fail closed (R17, R19, R21; battery B9): undecryptable rows stop at the database's edge.

Rule and battery numbers are those of docs/threat-model.rst.

A corrupted row (garbage, truncated or bit-flipped ciphertext) or a wrong key list must
never yield ciphertext as a token, never send a request to Slice, never break an admin page
and never change the stored bytes. Slice is ``responses`` with no registered URL, so any
request at all would be recorded (and fail).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import responses
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import transaction
from django.db.models import F, Value
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from slice_connect import services
from slice_connect.client import SliceClient
from slice_connect.exceptions import CredentialUnreadable, NeedsReauth
from slice_connect.fields import UnreadableToken
from slice_connect.models import TOKEN_FIELDS, SliceCredential
from tests.helpers import tokens_readable

from .raw import flip_bit, raw_tokens
from .raw import write_raw_tokens as write_raw

pytestmark = pytest.mark.django_db

Status = SliceCredential.Status
Reason = SliceCredential.Reason


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda raw: b"\x00not-a-fernet-token\xff" + secrets.token_bytes(16),
    "truncated": lambda raw: raw[: len(raw) // 2],
    "bit-flipped": flip_bit,
}


@pytest.fixture
def no_http(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    """Slice with no URL registered: every request would be recorded and refused."""
    return slice_mock


@pytest.fixture(params=[*CORRUPTIONS, "wrong-key"])
def broken(
    request: pytest.FixtureRequest,
    settings: Any,
    user: Any,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
) -> SliceCredential:
    """An active credential (access token expired) whose tokens cannot be decrypted.

    Another credential (already needing a re-link, so no renewal touches it) reads fine
    under the final key list: the broken row alone is at fault. When no row reads at all,
    the process's keys are, and nobody is marked (tests/test_keyprobe.py).
    """
    credential = make_credential(
        user,
        access_token=f"CANARY-access-{secrets.token_hex(8)}",
        refresh_token=f"CANARY-refresh-{secrets.token_hex(8)}",
        access_token_expires_at=timezone.now() - timedelta(minutes=5),
    )
    if request.param == "wrong-key":
        settings.FERNET_KEYS = ["a-key-that-never-encrypted-anything"]
    else:
        corrupt = CORRUPTIONS[request.param]
        write_raw(credential.pk, *(corrupt(raw) for raw in raw_tokens(credential.pk)))
    make_credential(make_user(), status=Status.NEEDS_REAUTH, status_reason=Reason.INVALID_GRANT)
    return credential


def assert_sentinel(value: Any, ciphertext: tuple[bytes, ...]) -> None:
    assert isinstance(value, UnreadableToken)
    assert not isinstance(value, (str, bytes, memoryview))
    for raw in ciphertext:
        assert raw.decode("latin-1") not in repr(value)


# -- reading -----------------------------------------------------------------------------


def test_reading_yields_the_sentinel_never_ciphertext(broken: SliceCredential) -> None:
    before = raw_tokens(broken.pk)
    fresh = SliceCredential.objects.get(pk=broken.pk)
    for name in TOKEN_FIELDS:
        assert_sentinel(getattr(fresh, name), before)
    for value in SliceCredential.objects.filter(pk=broken.pk).values_list(*TOKEN_FIELDS).get():
        assert_sentinel(value, before)
    assert tokens_readable(fresh) is False
    assert raw_tokens(broken.pk) == before


# -- renewal and the API client: typed error, zero requests --------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_renew_raises_marks_and_sends_nothing(
    broken: SliceCredential, no_http: responses.RequestsMock, force: bool
) -> None:
    before = raw_tokens(broken.pk)
    credential = SliceCredential.objects.get(pk=broken.pk)
    with pytest.raises(CredentialUnreadable) as caught:
        services.renew(credential, force=force)
    assert caught.value.reason == Reason.UNDECRYPTABLE
    assert len(no_http.calls) == 0
    row = SliceCredential.objects.without_tokens().get(pk=broken.pk)
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.UNDECRYPTABLE)
    assert row.version == broken.version
    # Once marked, further attempts stop before decrypting anything, still without a request.
    with pytest.raises(NeedsReauth):
        services.renew(credential, force=True)
    assert len(no_http.calls) == 0
    assert raw_tokens(broken.pk) == before


def test_renew_command_drill_flags_and_never_crashes(
    broken: SliceCredential, no_http: responses.RequestsMock
) -> None:
    before = raw_tokens(broken.pk)
    out, err = StringIO(), StringIO()
    call_command("slice_connect_renew", "--all", stdout=out, stderr=err)
    assert "renewed: 0, failed: 1, skipped: 0" in out.getvalue()
    assert "undecryptable" in err.getvalue()
    call_command("slice_connect_renew", "--all", stdout=out, stderr=err)  # nothing left active
    assert len(no_http.calls) == 0
    assert SliceCredential.objects.without_tokens().get(pk=broken.pk).status == Status.NEEDS_REAUTH
    assert raw_tokens(broken.pk) == before


def test_client_raises_a_typed_error_and_sends_nothing(
    broken: SliceCredential, user: Any, no_http: responses.RequestsMock
) -> None:
    before = raw_tokens(broken.pk)
    with SliceClient(user) as client, pytest.raises(CredentialUnreadable):
        client.get("orders")
    with SliceClient(user) as client, pytest.raises(NeedsReauth):
        client.get("orders")
    assert len(no_http.calls) == 0
    assert raw_tokens(broken.pk) == before


@pytest.mark.parametrize("name", TOKEN_FIELDS)
def test_one_bad_column_is_enough(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    no_http: responses.RequestsMock,
    name: str,
) -> None:
    credential = make_credential(user, access_token_expires_at=timezone.now() - timedelta(1))
    access, refresh = raw_tokens(credential.pk)
    if name == "access_token":
        access = flip_bit(access)
    else:
        refresh = flip_bit(refresh)
    write_raw(credential.pk, access, refresh)
    with SliceClient(user) as client, pytest.raises(CredentialUnreadable):
        client.get("orders")
    assert len(no_http.calls) == 0
    assert raw_tokens(credential.pk) == (access, refresh)


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param(lambda: Value("plain-text-token"), id="value"),
        pytest.param(lambda: F("refresh_token"), id="column"),
    ],
)
def test_sql_expressions_are_refused_for_token_columns(
    user: Any, make_credential: Callable[..., SliceCredential], expression: Callable[[], Any]
) -> None:
    """Upstream would store the encrypted repr of the expression and read it back as a token."""
    credential = make_credential(user)
    before = raw_tokens(credential.pk)
    with pytest.raises(TypeError, match="not SQL expressions"), transaction.atomic():
        SliceCredential.objects.filter(pk=credential.pk).update(access_token=expression())
    assert raw_tokens(credential.pk) == before


# -- admin -------------------------------------------------------------------------------


def admin_pages(pk: int) -> list[str]:
    name = "admin:slice_connect_slicecredential"
    return [
        reverse(f"{name}_changelist"),
        reverse(f"{name}_changelist") + "?status__exact=needs_reauth",
        reverse(f"{name}_change", args=[pk]),
        reverse(f"{name}_history", args=[pk]),
        reverse(f"{name}_delete", args=[pk]),
    ]


def test_every_admin_page_renders(
    broken: SliceCredential, admin_client: Any, no_http: responses.RequestsMock
) -> None:
    before = raw_tokens(broken.pk)
    for marked in (False, True):
        if marked:
            with pytest.raises(CredentialUnreadable):
                services.renew(SliceCredential.objects.get(pk=broken.pk))
        for url in admin_pages(broken.pk):
            response = admin_client.get(url)
            assert response.status_code == 200, url
            body = response.content
            assert b"CANARY" not in body
            assert b"gAAAAA" not in body
            for raw in before:
                assert raw not in body
    assert len(no_http.calls) == 0
    assert raw_tokens(broken.pk) == before


def test_admin_renew_action_reports_and_keeps_the_page(
    broken: SliceCredential, admin_client: Any, no_http: responses.RequestsMock
) -> None:
    before = raw_tokens(broken.pk)
    url = reverse("admin:slice_connect_slicecredential_changelist")
    response = admin_client.post(
        url, {"action": "renew_now", "_selected_action": [broken.pk]}, follow=True
    )
    assert response.status_code == 200
    assert b"undecryptable" in response.content
    assert len(no_http.calls) == 0
    assert raw_tokens(broken.pk) == before


# -- keys independent of SECRET_KEY; missing keys fail the checks ---------------------------


def test_secret_key_change_leaves_every_row_readable(
    make_user: Callable[..., Any], make_credential: Callable[..., SliceCredential]
) -> None:
    tokens = {
        make_credential(make_user(), access_token=f"a-{i}", refresh_token=f"r-{i}").pk: (
            f"a-{i}",
            f"r-{i}",
        )
        for i in range(50)
    }
    with override_settings(SECRET_KEY="an-entirely-new-secret-key", SECRET_KEY_FALLBACKS=[]):
        read = dict(
            (pk, (access, refresh))
            for pk, access, refresh in SliceCredential.objects.values_list("pk", *TOKEN_FIELDS)
        )
    assert read == tokens


@pytest.mark.parametrize("keys", [[], None, ()])
def test_missing_fernet_keys_fail_the_check_in_production(settings: Any, keys: Any) -> None:
    settings.DEBUG = False
    settings.FERNET_KEYS = keys
    with pytest.raises(SystemCheckError, match=r"slice_connect\.E003"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_deleted_fernet_keys_fail_the_check_in_production(settings: Any) -> None:
    settings.DEBUG = False
    del settings.FERNET_KEYS
    with pytest.raises(SystemCheckError, match=r"slice_connect\.E003"):
        call_command("check", stdout=StringIO(), stderr=StringIO())


def test_fernet_keys_set_pass_the_check_in_production(settings: Any) -> None:
    settings.DEBUG = False
    err = StringIO()
    call_command("check", stdout=StringIO(), stderr=err)
    assert "slice_connect.E003" not in err.getvalue()


def test_mark_unreadable_flags_active_rows_and_signals_after_commit(
    broken: SliceCredential,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from slice_connect.signals import credential_renewal_failed

    before = raw_tokens(broken.pk)
    already = make_credential(make_user(), status=SliceCredential.Status.NEEDS_REAUTH)
    events: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        events.append(kwargs)

    credential_renewal_failed.connect(receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            assert services.mark_unreadable([broken.pk, already.pk]) == 1
    finally:
        credential_renewal_failed.disconnect(receiver)
    broken.refresh_from_db(fields=["status", "status_reason"])
    assert (broken.status, broken.status_reason) == ("needs_reauth", "undecryptable")
    assert raw_tokens(broken.pk) == before
    assert [(e["credential"].pk, e["permanent"]) for e in events] == [(broken.pk, True)]
    assert isinstance(events[0]["error"], CredentialUnreadable)
