"""The encrypted token field: ciphertext at rest, live keys, rotation, fail-closed reads."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import FieldError
from django.db import connection, transaction
from django.test import override_settings
from fernet_fields import hkdf

from slice_connect.fields import UNREADABLE, EncryptedTokenField, UnreadableToken, current_fernet
from slice_connect.models import TOKEN_FIELDS, SliceCredential
from tests.helpers import tokens_readable

from .raw import TABLE, raw_tokens

pytestmark = pytest.mark.django_db


def write_raw(pk: int, column: str, value: bytes) -> None:
    assert column in TOKEN_FIELDS
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {TABLE} SET {column} = %s WHERE id = %s", [value, pk])


def canary() -> str:
    return f"CANARY-{secrets.token_hex(12)}"


@pytest.fixture
def stored(user: Any, make_credential: Callable[..., SliceCredential]) -> SliceCredential:
    return make_credential(user, access_token=canary(), refresh_token=canary())


# -- ciphertext at rest -----------------------------------------------------------------


def test_database_holds_only_fernet_ciphertext(stored: SliceCredential) -> None:
    raw = raw_tokens(stored.pk)
    plain = (stored.access_token, stored.refresh_token)
    for value, token in zip(raw, plain, strict=True):
        assert isinstance(token, str)
        assert value.startswith(b"gAAAAA")
        assert token.encode() not in value
        assert b"CANARY" not in value
        # ... and it is ciphertext of exactly that token under the configured key.
        assert current_fernet().decrypt(value) == token.encode()


def test_ciphertext_differs_on_every_write(stored: SliceCredential) -> None:
    first = raw_tokens(stored.pk)
    stored.save()
    second = raw_tokens(stored.pk)
    assert first[0] != second[0] and first[1] != second[1]
    stored.refresh_from_db()
    assert tokens_readable(stored)


def test_round_trip(stored: SliceCredential) -> None:
    fresh = SliceCredential.objects.get(pk=stored.pk)
    assert fresh.access_token == stored.access_token
    assert fresh.refresh_token == stored.refresh_token
    assert tokens_readable(fresh)


def test_null_stays_null(stored: SliceCredential) -> None:
    field = SliceCredential._meta.get_field("access_token")
    assert field.from_db_value(None, None, connection) is None


# -- schema (R20) -----------------------------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_FIELDS)
def test_token_fields_have_no_index_or_unique(name: str) -> None:
    field = SliceCredential._meta.get_field(name)
    assert isinstance(field, EncryptedTokenField)
    assert field.db_index is False
    assert field.unique is False
    assert field.primary_key is False
    for index in SliceCredential._meta.indexes:
        assert name not in index.fields
    for constraint in SliceCredential._meta.constraints:
        assert name not in getattr(constraint, "fields", ())
    for together in SliceCredential._meta.unique_together:
        assert name not in together


def test_no_database_index_covers_a_token_column(stored: SliceCredential) -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, TABLE)
    for name, info in constraints.items():
        for column in TOKEN_FIELDS:
            assert column not in (info["columns"] or []), name


@pytest.mark.parametrize("name", TOKEN_FIELDS)
@pytest.mark.parametrize(
    "lookup", ["", "__exact", "__iexact", "__contains", "__startswith", "__in"]
)
def test_lookups_on_token_fields_raise(stored: SliceCredential, name: str, lookup: str) -> None:
    value: Any = [stored.access_token] if lookup == "__in" else stored.access_token
    with pytest.raises(FieldError):
        list(SliceCredential.objects.filter(**{f"{name}{lookup}": value}))


@pytest.mark.parametrize("name", TOKEN_FIELDS)
def test_isnull_lookup_is_allowed(stored: SliceCredential, name: str) -> None:
    assert list(SliceCredential.objects.filter(**{f"{name}__isnull": False})) == [stored]


# -- keys: live, rotation, independence from SECRET_KEY ----------------------------------


def test_rows_written_under_k1_are_readable_with_k2_k1(
    user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    with override_settings(FERNET_KEYS=["key-one"]):
        credential = make_credential(user, access_token="a-one", refresh_token="r-one")
        k1_bytes = raw_tokens(credential.pk)
    with override_settings(FERNET_KEYS=["key-two", "key-one"]):
        fresh = SliceCredential.objects.get(pk=credential.pk)
        assert (fresh.access_token, fresh.refresh_token) == ("a-one", "r-one")
        # A write under [K2, K1] uses K2: readable with K2 alone, no longer with K1 alone.
        fresh.save()
    with override_settings(FERNET_KEYS=["key-two"]):
        assert SliceCredential.objects.get(pk=credential.pk).access_token == "a-one"
    with override_settings(FERNET_KEYS=["key-one"]):
        assert isinstance(
            SliceCredential.objects.get(pk=credential.pk).access_token, UnreadableToken
        )
    assert k1_bytes != raw_tokens(credential.pk)


def test_key_list_change_takes_effect_at_once(stored: SliceCredential) -> None:
    with override_settings(FERNET_KEYS=["unrelated-key"]):
        assert isinstance(SliceCredential.objects.get(pk=stored.pk).access_token, UnreadableToken)
    assert SliceCredential.objects.get(pk=stored.pk).access_token == stored.access_token


def test_secret_key_change_leaves_rows_readable(stored: SliceCredential) -> None:
    with override_settings(SECRET_KEY="a-completely-different-secret-key"):
        fresh = SliceCredential.objects.get(pk=stored.pk)
    assert fresh.access_token == stored.access_token
    assert fresh.refresh_token == stored.refresh_token


def test_without_fernet_keys_secret_key_is_used_and_its_change_fails_closed(
    settings: Any, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    del settings.FERNET_KEYS
    credential = make_credential(user, access_token="a-sk", refresh_token="r-sk")
    raw = raw_tokens(credential.pk)[0]
    assert Fernet(hkdf.derive_fernet_key(settings.SECRET_KEY)).decrypt(raw) == b"a-sk"
    settings.SECRET_KEY = "rotated-secret-key"
    fresh = SliceCredential.objects.get(pk=credential.pk)
    assert isinstance(fresh.access_token, UnreadableToken)
    assert not tokens_readable(fresh)


def test_hkdf_off_uses_raw_fernet_keys(
    settings: Any, user: Any, make_credential: Callable[..., SliceCredential]
) -> None:
    raw_key = Fernet.generate_key().decode()
    settings.FERNET_USE_HKDF = False
    settings.FERNET_KEYS = [raw_key]
    credential = make_credential(user, access_token="a-raw", refresh_token="r-raw")
    assert Fernet(raw_key).decrypt(raw_tokens(credential.pk)[0]) == b"a-raw"


# -- fail closed ---------------------------------------------------------------------------


def _assert_unreadable(credential: SliceCredential, name: str) -> None:
    value = getattr(credential, name)
    assert isinstance(value, UnreadableToken)
    assert not isinstance(value, (str, bytes))
    assert not value
    assert repr(value) == "<unreadable token>"
    assert tokens_readable(credential) is False


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda b: b"garbage", id="garbage"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[: len(b) // 2], id="truncated"),
        pytest.param(lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:], id="bit-flip"),
        pytest.param(lambda b: b"\xff\xfe\x00\x01" * 8, id="binary"),
        pytest.param(lambda b: Fernet(Fernet.generate_key()).encrypt(b"other-key"), id="other-key"),
    ],
)
@pytest.mark.parametrize("name", TOKEN_FIELDS)
def test_corrupted_row_reads_as_unreadable(
    stored: SliceCredential, name: str, corrupt: Callable[[bytes], bytes]
) -> None:
    index = TOKEN_FIELDS.index(name)
    bad = corrupt(raw_tokens(stored.pk)[index])
    write_raw(stored.pk, name, bad)
    fresh = SliceCredential.objects.get(pk=stored.pk)
    _assert_unreadable(fresh, name)
    other = TOKEN_FIELDS[1 - index]
    assert getattr(fresh, other) == getattr(stored, other)


@pytest.mark.parametrize("name", TOKEN_FIELDS)
def test_saving_an_unreadable_instance_raises_and_keeps_the_bytes(
    stored: SliceCredential, name: str
) -> None:
    write_raw(stored.pk, name, b"corrupted-bytes")
    before = raw_tokens(stored.pk)
    fresh = SliceCredential.objects.get(pk=stored.pk)
    with pytest.raises(ValueError, match="undecryptable"), transaction.atomic():
        fresh.save()
    with pytest.raises(ValueError), transaction.atomic():
        fresh.save(update_fields=[name])
    assert raw_tokens(stored.pk) == before


def test_wrong_key_list_reads_unreadable_and_refuses_to_save(stored: SliceCredential) -> None:
    before = raw_tokens(stored.pk)
    with override_settings(FERNET_KEYS=["the-wrong-key"]):
        fresh = SliceCredential.objects.get(pk=stored.pk)
        for name in TOKEN_FIELDS:
            _assert_unreadable(fresh, name)
        with pytest.raises(ValueError), transaction.atomic():
            fresh.save()
    assert raw_tokens(stored.pk) == before
    assert SliceCredential.objects.get(pk=stored.pk).access_token == stored.access_token


def test_bookkeeping_can_still_be_saved_on_an_unreadable_row(stored: SliceCredential) -> None:
    before = raw_tokens(stored.pk)
    with override_settings(FERNET_KEYS=["the-wrong-key"]):
        fresh = SliceCredential.objects.get(pk=stored.pk)
        fresh.status = SliceCredential.Status.NEEDS_REAUTH
        fresh.status_reason = SliceCredential.Reason.UNDECRYPTABLE
        fresh.save(update_fields=["status", "status_reason"])
    assert raw_tokens(stored.pk) == before
    assert SliceCredential.objects.get(pk=stored.pk).status == "needs_reauth"


def test_unreadable_token_cannot_be_assigned_and_saved(stored: SliceCredential) -> None:
    before = raw_tokens(stored.pk)
    stored.refresh_token = UNREADABLE  # type: ignore[assignment]
    with pytest.raises(ValueError), transaction.atomic():
        stored.save()
    assert raw_tokens(stored.pk) == before


def test_unreadable_row_never_exposes_ciphertext(stored: SliceCredential) -> None:
    ciphertext = raw_tokens(stored.pk)
    with override_settings(FERNET_KEYS=["the-wrong-key"]):
        fresh = SliceCredential.objects.get(pk=stored.pk)
        values = [getattr(fresh, name) for name in TOKEN_FIELDS]
        (listed,) = SliceCredential.objects.values_list(*TOKEN_FIELDS)
    for value in [*values, *listed]:
        assert isinstance(value, UnreadableToken)
        for raw in ciphertext:
            assert raw.decode() not in repr(value)


def test_deferred_tokens_count_as_readable_until_loaded(stored: SliceCredential) -> None:
    write_raw(stored.pk, "access_token", b"garbage")
    deferred = SliceCredential.objects.without_tokens().get(pk=stored.pk)
    assert deferred.get_deferred_fields() == set(TOKEN_FIELDS)
    assert tokens_readable(deferred) is True  # nothing decrypted yet
    assert deferred.get_deferred_fields() == set(TOKEN_FIELDS)  # and nothing was loaded
