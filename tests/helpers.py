"""Helpers the tests share that are not fixtures (those live in ``tests/conftest.py``)."""

from __future__ import annotations

import hashlib
import re

from slice_connect.fields import UnreadableToken
from slice_connect.models import TOKEN_FIELDS, SliceCredential


def fingerprint(secret: str) -> str:
    """A short, non-reversible label for a secret: what a test may print or compare."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def tokens_readable(credential: SliceCredential) -> bool:
    """Whether the loaded tokens of ``credential`` decrypt with the configured keys.

    A deferred token is not read (and counts as readable).
    """
    deferred = credential.get_deferred_fields()
    return not any(
        name not in deferred and isinstance(getattr(credential, name), UnreadableToken)
        for name in TOKEN_FIELDS
    )


_SQL_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+[\"`]?(\w+)", re.IGNORECASE)


def sql_kind(sql: str) -> str:
    """What a statement does and to which table, without its values: ``INSERT
    slice_connect_callbackclaim``, ``SELECT django_session``, ``BEGIN``.

    The table is the first name after FROM, INTO or UPDATE, which comes before any value in
    the statements Django writes; nothing after it is shown.
    """
    words = sql.split(None, 1)
    verb = words[0].upper() if words else ""
    if verb not in {"SELECT", "INSERT", "UPDATE", "DELETE"}:
        return verb  # BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE
    table = _SQL_TABLE.search(sql)
    lock = " FOR UPDATE" if re.search(r"\bFOR UPDATE\b", sql) else ""
    return f"{verb} {table.group(1) if table else '?'}{lock}"
