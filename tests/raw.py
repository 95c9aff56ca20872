"""Reading and writing the credential table's token bytes past the ORM (and its field)."""

from __future__ import annotations

import base64

from django.db import connection

from slice_connect.models import SliceCredential

TABLE = SliceCredential._meta.db_table


def raw_tokens(pk: int) -> tuple[bytes, bytes]:
    """The stored bytes of both token columns."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT access_token, refresh_token FROM {TABLE} WHERE id = %s", [pk])
        row = cursor.fetchone()
    assert row is not None
    return bytes(row[0]), bytes(row[1])


def write_raw_tokens(pk: int, access: bytes, refresh: bytes) -> None:
    """Overwrite both token columns with ``access`` and ``refresh`` as they are."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET access_token = %s, refresh_token = %s WHERE id = %s",
            [access, refresh, pk],
        )


def flip_bit(token: bytes) -> bytes:
    """Flip one bit inside the ciphertext, keeping the token well-formed base64."""
    data = bytearray(base64.urlsafe_b64decode(token))
    data[len(data) // 2] ^= 0x01
    return base64.urlsafe_b64encode(bytes(data))
