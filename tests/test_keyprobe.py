"""A configuration mistake is never user damage: a process whose keys read nothing marks nobody.

A worker started without the key (or with a wrong one) reads every token as unreadable.
Before, each renewal then marked its credential ``needs_reauth`` (undecryptable): one bad
deploy cut every user off. Now renewal refuses with ``ConfigurationError`` (logged CRITICAL,
no user marked, no signal, no request to Slice) unless the row alone is at fault: it is
not even shaped like a Fernet token, its other column decrypts, or other rows decrypt.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
import responses
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.utils import timezone

from slice_connect import keyprobe, services, tasks
from slice_connect.client import SliceClient
from slice_connect.exceptions import ConfigurationError, CredentialUnreadable
from slice_connect.models import SliceCredential
from tests.helpers import tokens_readable

from .raw import flip_bit, raw_tokens
from .raw import write_raw_tokens as write_raw

pytestmark = pytest.mark.django_db

Status = SliceCredential.Status
Reason = SliceCredential.Reason
WRONG = "a-well-formed-key-that-never-encrypted-anything-here"
USERS = 50


@pytest.fixture
def no_http(slice_mock: responses.RequestsMock) -> responses.RequestsMock:
    """Slice with no URL registered: any request at all would be recorded (and fail)."""
    return slice_mock


@pytest.fixture
def linked(
    make_user: Callable[..., Any], make_credential: Callable[..., SliceCredential]
) -> list[SliceCredential]:
    """Fifty linked users under the suite's key, every one due (access token expired)."""
    expired = timezone.now() - timedelta(minutes=5)
    return [make_credential(make_user(), access_token_expires_at=expired) for _ in range(USERS)]


def marked() -> int:
    return SliceCredential.objects.filter(status=Status.NEEDS_REAUTH).count()


def all_raw(credentials: list[SliceCredential]) -> dict[int, tuple[bytes, bytes]]:
    return {c.pk: raw_tokens(c.pk) for c in credentials}


#: Ways a process can start with keys that read none of the stored rows.
MISCONFIGURED: dict[str, Callable[[Any], None]] = {
    "wrong-key": lambda s: setattr(s, "FERNET_KEYS", [WRONG]),
    "keys-unset": lambda s: delattr(s, "FERNET_KEYS"),  # falls back to SECRET_KEY
    "plain-string": lambda s: setattr(s, "FERNET_KEYS", s.FERNET_KEYS[0]),
    "none-entry": lambda s: setattr(s, "FERNET_KEYS", [None]),
    "blank-entry": lambda s: setattr(s, "FERNET_KEYS", ["  "]),
    "not-a-fernet-key": lambda s: (
        setattr(s, "FERNET_USE_HKDF", False),
        setattr(s, "FERNET_KEYS", [WRONG]),
    ),
}


@pytest.mark.parametrize("mistake", list(MISCONFIGURED))
def test_a_process_whose_keys_read_nothing_marks_nobody(
    linked: list[SliceCredential],
    settings: Any,
    no_http: responses.RequestsMock,
    failures: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
    mistake: str,
) -> None:
    before = all_raw(linked)
    MISCONFIGURED[mistake](settings)
    caplog.set_level(logging.DEBUG)
    refused = 0
    with django_capture_on_commit_callbacks(execute=True):
        for credential in linked:
            with pytest.raises(ConfigurationError) as caught:
                services.renew(SliceCredential.objects.get(pk=credential.pk))
            assert caught.value.code == "fernet_keys"
            refused += 1
    print(f"{mistake}: users marked {marked()} of {USERS}, refused {refused}")
    assert marked() == 0
    assert refused == USERS
    assert failures == []
    assert len(no_http.calls) == 0
    assert all_raw(linked) == before
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == USERS
    assert "No user was marked" in critical[0].getMessage()
    for record in caplog.records:
        assert "gAAAAA" not in record.getMessage()


def test_the_celery_task_marks_nobody_and_does_not_retry(
    linked: list[SliceCredential],
    settings: Any,
    no_http: responses.RequestsMock,
    failures: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.FERNET_KEYS = [WRONG]
    with django_capture_on_commit_callbacks(execute=True):
        results = [tasks.renew_credential.apply(args=(c.pk,)) for c in linked]
    outcomes = [result.get() for result in results]
    print(f"task: {outcomes.count('failed')} failed, users marked {marked()} of {USERS}")
    assert outcomes == ["failed"] * USERS
    assert all(result.state == "SUCCESS" for result in results)  # no retry scheduled
    assert marked() == 0
    assert failures == []
    assert len(no_http.calls) == 0


def test_the_renew_command_marks_nobody(
    linked: list[SliceCredential], settings: Any, no_http: responses.RequestsMock
) -> None:
    settings.FERNET_KEYS = [WRONG]
    out, err = StringIO(), StringIO()
    call_command("slice_connect_renew", "--all", stdout=out, stderr=err)
    assert "renewed: 0, failed: 50, skipped: 0" in out.getvalue()
    assert err.getvalue().count(": fernet_keys") == USERS
    assert marked() == 0
    assert len(no_http.calls) == 0


def test_the_api_client_marks_nobody(
    linked: list[SliceCredential], settings: Any, no_http: responses.RequestsMock
) -> None:
    """A web process without the key: each user's API call fails, no user is cut off."""
    settings.FERNET_KEYS = [WRONG]
    for credential in linked[:10]:
        with SliceClient(credential.user) as client, pytest.raises(ConfigurationError):
            client.get("users/self")
    assert marked() == 0
    assert len(no_http.calls) == 0


def test_mark_unreadable_refuses_when_no_key_reads_anything(
    linked: list[SliceCredential], settings: Any, failures: list[dict[str, Any]]
) -> None:
    settings.FERNET_KEYS = [WRONG]
    with pytest.raises(ConfigurationError, match="nobody was marked"):
        services.mark_unreadable([c.pk for c in linked])
    assert marked() == 0
    assert failures == []


# -- the row's own problem: still marked, exactly that row ---------------------------------


@pytest.mark.parametrize("columns", ["both", "access", "refresh"])
def test_one_corrupt_row_among_readable_ones_is_marked(
    linked: list[SliceCredential],
    no_http: responses.RequestsMock,
    failures: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
    columns: str,
) -> None:
    victim = linked[17]
    access, refresh = raw_tokens(victim.pk)
    if columns in ("both", "access"):
        access = flip_bit(access)
    if columns in ("both", "refresh"):
        refresh = flip_bit(refresh)
    write_raw(victim.pk, access, refresh)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(CredentialUnreadable):
        services.renew(SliceCredential.objects.get(pk=victim.pk))
    print(f"one bit-flipped row ({columns}): users marked {marked()} of {USERS}")
    assert marked() == 1
    row = SliceCredential.objects.without_tokens().get(pk=victim.pk)
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.UNDECRYPTABLE)
    assert [e["credential"].pk for e in failures] == [victim.pk]
    assert len(no_http.calls) == 0


def test_rows_under_a_lost_key_are_marked_when_others_read(
    linked: list[SliceCredential],
    settings: Any,
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    no_http: responses.RequestsMock,
) -> None:
    """Rows written under a key that was then dropped from the list: their own problem."""
    settings.FERNET_KEYS = [WRONG]
    readable = make_credential(make_user())  # written (and readable) under the new list
    with pytest.raises(CredentialUnreadable):
        services.renew(SliceCredential.objects.get(pk=linked[0].pk))
    assert marked() == 1
    assert tokens_readable(SliceCredential.objects.get(pk=readable.pk))


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda raw: b"not-a-fernet-token", id="garbage"),
        pytest.param(lambda raw: raw[: len(raw) // 2], id="truncated"),
        pytest.param(lambda raw: bytes(b ^ 0x80 for b in raw), id="binary"),
    ],
)
def test_a_malformed_row_is_its_own_problem_even_alone(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    no_http: responses.RequestsMock,
    garbage: Callable[[bytes], bytes],
) -> None:
    """Bytes that are no Fernet token at all are corrupt whatever the keys."""
    credential = make_credential(user)
    write_raw(credential.pk, *(garbage(raw) for raw in raw_tokens(credential.pk)))
    with pytest.raises(CredentialUnreadable):
        services.renew(SliceCredential.objects.get(pk=credential.pk), force=True)
    assert marked() == 1


def test_a_lone_well_formed_row_that_no_key_reads_is_not_marked(
    user: Any, make_credential: Callable[..., SliceCredential], no_http: responses.RequestsMock
) -> None:
    """Alone, a bit flip and a wrong key look the same: no user is marked on a guess."""
    credential = make_credential(user)
    write_raw(credential.pk, *(flip_bit(raw) for raw in raw_tokens(credential.pk)))
    with pytest.raises(ConfigurationError):
        services.renew(SliceCredential.objects.get(pk=credential.pk), force=True)
    assert marked() == 0


def test_rows_already_marked_undecryptable_are_no_evidence(
    linked: list[SliceCredential], settings: Any
) -> None:
    """Rows flagged undecryptable are skipped by the probe; so are the rows being judged."""
    settings.FERNET_KEYS = [WRONG]
    assert keyprobe.keys_read_stored_tokens() is False
    settings.FERNET_KEYS = [Fernet.generate_key().decode() + "x", WRONG]
    assert keyprobe.keys_read_stored_tokens() is False


def test_the_probe_is_one_query_and_cheap(
    linked: list[SliceCredential], settings: Any, django_assert_num_queries: Any
) -> None:
    settings.FERNET_KEYS = [WRONG, secrets.token_urlsafe(32)]
    row = SliceCredential.objects.get(pk=linked[0].pk)
    with django_assert_num_queries(1):
        assert keyprobe.configuration_fault(row) == keyprobe.NO_KEY_READS
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        keyprobe.configuration_fault(row)
    per_probe = (time.perf_counter() - started) / rounds
    print(f"probe (20 rows x 2 columns x 2 keys, all failing): {per_probe * 1000:.2f} ms")
    assert per_probe < 0.05
