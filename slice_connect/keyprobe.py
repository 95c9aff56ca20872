"""Whose fault is an unreadable token: the row's, or this process's ``FERNET_KEYS``?

A worker started without the key (or with a wrong one) reads every stored token as
unreadable. Marking each credential ``needs_reauth`` would then cut every user off for a
configuration mistake of one process. So before a row is marked, the evidence is weighed:

* the keys cannot be built at all: the process's fault;
* a column of the row is not even shaped like a Fernet token, or its other column
  decrypts: the row's fault (corrupted, or written under a key since lost);
* otherwise the newest :data:`PROBE_ROWS` other credentials are read (one indexed query,
  their raw bytes only): if any of them decrypts, the keys work and the row is at fault;
  if none does, no configured key decrypts any row, which is the process's fault.

The probe runs only when an unreadable row is met; it costs one query and at most
``2 x PROBE_ROWS`` HMAC checks per key, so it is not cached (a cached verdict could
outlive the rows it was drawn from).
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db import models

from .fields import current_fernet, decrypts, keys_unusable, stored_bytes, well_formed
from .models import TOKEN_FIELDS, SliceCredential

#: Other credentials read when an unreadable one is met.
PROBE_ROWS = 20

RawRow = tuple[bytes | None, ...]

NO_KEY_READS = "no key in FERNET_KEYS decrypts any stored credential"


def raw_token_rows(queryset: models.QuerySet[SliceCredential]) -> Iterator[tuple[int, RawRow]]:
    """Yield ``(pk, (access bytes, refresh bytes))`` of ``queryset`` without decrypting.

    The columns are selected through an expression typed as a plain ``BinaryField``, so the
    token field's ``from_db_value`` (the decryption) never runs. (Not ``Cast``: MySQL has no
    ``CAST(... AS longblob)``.)
    """
    raw = {
        f"raw_{name}": models.ExpressionWrapper(models.F(name), output_field=models.BinaryField())
        for name in TOKEN_FIELDS
    }
    for pk, *values in queryset.annotate(**raw).values_list("pk", *raw):
        yield pk, tuple(None if v is None else bytes(v) for v in values)


def keys_read_stored_tokens(*, using: str | None = None, exclude_pk: int | None = None) -> bool:
    """Whether the configured keys decrypt a token of one of the newest credentials."""
    fernet = current_fernet()
    rows = SliceCredential.objects.using(using).exclude(
        status_reason=SliceCredential.Reason.UNDECRYPTABLE
    )
    if exclude_pk is not None:
        rows = rows.exclude(pk=exclude_pk)
    for _pk, raw in raw_token_rows(rows.order_by("-pk")[:PROBE_ROWS]):
        if any(value is not None and decrypts(fernet, value) for value in raw):
            return True
    return False


def configuration_fault(row: SliceCredential) -> str | None:
    """Why this process's keys, not ``row``, are to blame for its unreadable tokens.

    ``None`` means the row itself is at fault. ``row`` must have its token columns loaded.
    """
    problem = keys_unusable()
    if problem:
        return problem
    for name in TOKEN_FIELDS:
        value = getattr(row, name)
        if isinstance(value, str):
            return None  # this column decrypts: the keys are right for this row's era
        data = stored_bytes(value)
        if data is not None and not well_formed(data):
            return None  # corrupted, whatever the keys
    if keys_read_stored_tokens(using=row._state.db, exclude_pk=row.pk):
        return None
    return NO_KEY_READS


def process_fault() -> str | None:
    """Why this process cannot read stored credentials at all, or ``None`` when it can.

    ``None`` also when there is nothing to read.
    """
    problem = keys_unusable()
    if problem:
        return problem
    if not SliceCredential.objects.exclude(
        status_reason=SliceCredential.Reason.UNDECRYPTABLE
    ).exists():
        return None
    return None if keys_read_stored_tokens() else NO_KEY_READS
