"""Edges of the token field and the key checks (docs/threat-model.rst R51, R52)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from slice_connect import fields
from slice_connect.fields import EncryptedTokenField, StoredCiphertext


def test_stored_ciphertext_never_shows_its_bytes_and_compares_by_value() -> None:
    one, same, other = (
        StoredCiphertext(b"gAAAA1"),
        StoredCiphertext(b"gAAAA1"),
        StoredCiphertext(b"x"),
    )
    assert repr(one) == "<stored ciphertext>" and "gAAAA1" not in repr(one)
    assert one == same and one != other and one != b"gAAAA1"
    assert hash(one) == hash(same) and len({one, same, other}) == 2
    assert fields.stored_bytes(one) == b"gAAAA1"
    assert fields.stored_bytes("a plain token") is None


@pytest.mark.parametrize("keys", [None, [], ()])
def test_unset_keys_are_check_e003s_business(keys: Any) -> None:
    assert fields.key_problems(keys) == []


def test_a_dump_that_is_not_fernet_text_is_refused() -> None:
    with pytest.raises(ValidationError):
        fields.parse_dump_text(fields.DUMP_PREFIX + "not fernet text!")
    with pytest.raises(ValidationError):
        fields.parse_dump_text(fields.DUMP_PREFIX_BASE64 + "%%%")
    assert fields.parse_dump_text("a plain value") is None


def test_the_field_takes_only_str_tokens_and_keeps_none() -> None:
    field = EncryptedTokenField()
    assert field.get_db_prep_save(None, connection) is None
    with pytest.raises(TypeError):
        field.get_db_prep_save(b"bytes are not a token", connection)
    assert field.fernet is fields.current_fernet()
