"""Secrets at the edges: ``dumpdata`` never writes a token, ``loaddata`` restores the bytes.

A backup made with ``manage.py dumpdata`` used to hold every user's tokens in plain text
(the serializer reads the decrypted attribute). Now each token column is written as its
stored Fernet ciphertext behind a ``!fernet:`` marker, and loading that dump writes the very
same bytes back (checked with raw SQL), whatever keys the loading process has. An
undecryptable row stays ciphertext through every path. Runs on SQLite and, with
``DATABASE_URL``, on PostgreSQL.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core import serializers
from django.core.management import call_command
from django.core.serializers.base import DeserializationError
from django.db import connection, transaction
from django.test import override_settings

from slice_connect.fields import (
    DUMP_PREFIX,
    DUMP_PREFIX_BASE64,
    UNREADABLE,
    StoredCiphertext,
    UnreadableToken,
)
from slice_connect.models import TOKEN_FIELDS, SliceCredential

from .raw import TABLE, flip_bit, raw_tokens
from .raw import write_raw_tokens as write_raw

pytestmark = pytest.mark.django_db

FORMATS = ["json", "jsonl", "xml", "yaml"]
OTHER_KEY = "a-completely-different-key-for-the-loading-site"

#: Every column but ``updated_at`` (``auto_now``: a save stamps it, even a raw one).
COLUMNS = [
    f.attname
    for f in SliceCredential._meta.concrete_fields
    if f.attname not in ("updated_at", *TOKEN_FIELDS)
]


def canary() -> str:
    return f"CANARY-{secrets.token_hex(16)}"


@pytest.fixture
def rows(
    make_user: Callable[..., Any], make_credential: Callable[..., SliceCredential]
) -> dict[int, tuple[str, str]]:
    """Eight credentials with canary tokens: {pk: (access, refresh)}."""
    made = {}
    for _ in range(8):
        access, refresh = canary(), canary()
        credential = make_credential(make_user(), access_token=access, refresh_token=refresh)
        made[credential.pk] = (access, refresh)
    return made


def _ms(value: Any) -> Any:
    """Django's JSON encoder keeps datetimes to the millisecond; so does the comparison."""
    if isinstance(value, datetime):
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return value


def snapshot() -> dict[int, tuple[Any, ...]]:
    """Every row: its token bytes exactly (raw SQL), and every other column but updated_at."""
    values = SliceCredential.objects.without_tokens().values_list("pk", *COLUMNS)
    return {pk: (raw_tokens(pk), *map(_ms, rest)) for pk, *rest in values}


def dump(fmt: str = "json", *args: str) -> str:
    out = StringIO()
    call_command("dumpdata", "slice_connect", "--format", fmt, *args, stdout=out)
    return out.getvalue()


def wipe() -> None:
    """Delete every credential with SQL: no signal, no revocation, nothing but the rows."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {TABLE}")
    assert SliceCredential.objects.count() == 0


def load(text: str, fmt: str, tmp_path: Path) -> None:
    fixture = tmp_path / f"backup.{fmt}"
    fixture.write_text(text)
    call_command("loaddata", str(fixture), stdout=StringIO())


def assert_no_plaintext(text: str, tokens: dict[int, tuple[str, str]]) -> None:
    assert "CANARY" not in text
    for pair in tokens.values():
        for token in pair:
            assert token not in text


@pytest.mark.parametrize("fmt", FORMATS)
def test_dumpdata_writes_the_stored_ciphertext_never_a_token(
    rows: dict[int, tuple[str, str]], fmt: str
) -> None:
    text = dump(fmt)
    assert_no_plaintext(text, rows)
    for pk in rows:
        for raw in raw_tokens(pk):
            assert (DUMP_PREFIX + raw.decode()) in text


def test_each_token_column_is_marked_as_ciphertext(rows: dict[int, tuple[str, str]]) -> None:
    records = json.loads(dump("json"))
    assert len(records) == len(rows)
    for record in records:
        access, refresh = raw_tokens(record["pk"])
        assert record["fields"]["access_token"] == DUMP_PREFIX + access.decode()
        assert record["fields"]["refresh_token"] == DUMP_PREFIX + refresh.decode()
        assert record["fields"]["access_token"].startswith("!fernet:gAAAAA")


@pytest.mark.parametrize("fmt", FORMATS)
def test_loaddata_of_our_dump_restores_every_row_byte_for_byte(
    rows: dict[int, tuple[str, str]], fmt: str, tmp_path: Path
) -> None:
    before = snapshot()
    text = dump(fmt)
    wipe()
    load(text, fmt, tmp_path)
    after = snapshot()
    assert after == before
    print(f"{fmt}: {len(after)} rows restored, token bytes identical: {after == before}")
    # ... and they read as the same tokens.
    read = {pk: (a, r) for pk, a, r in SliceCredential.objects.values_list("pk", *TOKEN_FIELDS)}
    assert read == rows


def test_loading_over_existing_rows_restores_their_old_bytes(
    rows: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    before = snapshot()
    text = dump()
    for credential in SliceCredential.objects.all():
        credential.access_token = "changed-after-the-backup"
        credential.save()
    load(text, "json", tmp_path)
    assert snapshot() == before


def test_a_site_with_other_keys_loads_the_bytes_unchanged(
    rows: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    """Nothing is decrypted or re-encrypted on the way in: the keys travel separately."""
    before = snapshot()
    text = dump()
    wipe()
    with override_settings(FERNET_KEYS=[OTHER_KEY]):
        load(text, "json", tmp_path)
        assert isinstance(SliceCredential.objects.get(pk=min(rows)).access_token, UnreadableToken)
    assert snapshot() == before


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "bit-flipped": flip_bit,
    "truncated": lambda raw: raw[: len(raw) // 2],
    "binary": lambda raw: b"\x00\xff\x10" + secrets.token_bytes(40),
    "empty": lambda raw: b"",
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_undecryptable_row_is_dumped_and_restored_as_its_bytes(
    rows: dict[int, tuple[str, str]], corruption: str, fmt: str, tmp_path: Path
) -> None:
    pk = min(rows)
    write_raw(pk, *(CORRUPTIONS[corruption](raw) for raw in raw_tokens(pk)))
    before = snapshot()
    text = dump(fmt)
    assert_no_plaintext(text, rows)
    if corruption == "binary":
        assert DUMP_PREFIX_BASE64 in text
    wipe()
    load(text, fmt, tmp_path)
    assert snapshot() == before
    restored = SliceCredential.objects.get(pk=pk)
    for name in TOKEN_FIELDS:
        value = getattr(restored, name)
        assert isinstance(value, UnreadableToken) and not isinstance(value, str)


def test_a_dump_with_the_wrong_keys_still_holds_only_ciphertext(
    rows: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    """A process without the key can back up and restore, and never sees a token."""
    before = snapshot()
    with override_settings(FERNET_KEYS=[OTHER_KEY]):
        text = dump()
        assert_no_plaintext(text, rows)
        wipe()
        load(text, "json", tmp_path)
    assert snapshot() == before


# -- no path turns ciphertext into a token --------------------------------------------------


def test_raw_bytes_assigned_as_a_token_are_refused(rows: dict[int, tuple[str, str]]) -> None:
    pk = min(rows)
    before = raw_tokens(pk)
    credential = SliceCredential.objects.get(pk=pk)
    credential.refresh_token = before[1]  # type: ignore[assignment]
    with pytest.raises(TypeError, match="take a str token"), transaction.atomic():
        credential.save()
    assert raw_tokens(pk) == before


def test_an_unreadable_token_without_its_bytes_cannot_be_dumped(
    rows: dict[int, tuple[str, str]],
) -> None:
    credential = SliceCredential.objects.get(pk=min(rows))
    credential.access_token = UNREADABLE  # type: ignore[assignment]
    with pytest.raises(ValueError, match="cannot be dumped"):
        serializers.serialize("json", [credential])


def test_an_unsaved_token_is_dumped_encrypted(rows: dict[int, tuple[str, str]]) -> None:
    credential = SliceCredential.objects.get(pk=min(rows))
    credential.access_token = "CANARY-fresh-unsaved-token"
    text = serializers.serialize("json", [credential])
    assert "CANARY" not in text
    (record,) = json.loads(text)
    (restored,) = serializers.deserialize("json", text)
    assert isinstance(restored.object.access_token, StoredCiphertext)
    assert record["fields"]["access_token"].startswith(DUMP_PREFIX)


def test_a_marked_value_never_loads_as_a_token_string(
    rows: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    """Whatever follows the marker is stored as ciphertext, and reads back as unreadable."""
    records = json.loads(dump())
    records[0]["fields"]["access_token"] = DUMP_PREFIX + "bm90LWEtdG9rZW4"
    wipe()
    load(json.dumps(records), "json", tmp_path)
    credential = SliceCredential.objects.get(pk=records[0]["pk"])
    assert raw_tokens(credential.pk)[0] == b"bm90LWEtdG9rZW4"
    assert isinstance(credential.access_token, UnreadableToken)


def test_a_malformed_marked_value_is_refused_with_a_clear_error(
    rows: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    records = json.loads(dump())
    records[0]["fields"]["refresh_token"] = DUMP_PREFIX_BASE64 + "not base64!"
    with pytest.raises(DeserializationError, match="not valid base64"):
        load(json.dumps(records), "json", tmp_path)


def test_an_old_plaintext_fixture_still_loads_encrypted(
    rows: dict[int, tuple[str, str]], tmp_path: Path
) -> None:
    """A hand-written fixture (or a dump from before 0.x) holds plaintext: it is encrypted."""
    records = json.loads(dump())
    records[0]["fields"]["access_token"] = "CANARY-plaintext-from-an-old-dump"
    wipe()
    load(json.dumps(records), "json", tmp_path)
    pk = records[0]["pk"]
    assert b"CANARY" not in raw_tokens(pk)[0]
    assert SliceCredential.objects.get(pk=pk).access_token == "CANARY-plaintext-from-an-old-dump"
