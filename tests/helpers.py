"""Helpers the tests share that are not fixtures (those live in ``tests/conftest.py``)."""

from __future__ import annotations

import hashlib

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
