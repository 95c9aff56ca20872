"""Key operations on stored credentials: rotate every token to the newest key, reactivate.

The management commands ``slice_connect_rotate_keys`` and ``slice_connect_reactivate`` parse
their options, call :func:`rotate_keys` or :func:`reactivate` and print the result; the
algorithms live here.

Rotation works on the raw column bytes with :meth:`MultiFernet.rotate` (which keeps each
token's original timestamp): no token is ever decoded into a Python string, no model
``save()`` runs, and nothing returned or logged contains a token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from . import checks, keyprobe, services
from .fields import UnreadableToken, current_fernet, keys_unusable, primary_fernet
from .keyprobe import RawRow, raw_token_rows
from .models import TOKEN_FIELDS, SliceCredential

__all__ = [
    "KeysRefused",
    "Plan",
    "Reactivation",
    "Report",
    "plan_row",
    "reactivate",
    "refuse_invalid_keys",
    "rotate_keys",
]

rotation_logger = logging.getLogger("slice_connect.rotate_keys")
reactivation_logger = logging.getLogger("slice_connect.reactivate")

Status = SliceCredential.Status
Reason = SliceCredential.Reason


class KeysRefused(Exception):
    """``FERNET_KEYS`` (or the options) cannot be used: nothing was changed.

    The message names the problem, never a key or a token.
    """


def refuse_invalid_keys() -> None:
    """Raise :class:`KeysRefused` listing every problem of ``FERNET_KEYS`` (checks E005-E008)."""
    problems = checks.check_fernet_keys()
    errors = [message for message in problems if message.is_serious()]
    if errors:
        listed = "; ".join(f"{message.id}: {message.msg}" for message in errors)
        raise KeysRefused(f"FERNET_KEYS is invalid, nothing was changed. {listed}")


# -- rotation ----------------------------------------------------------------------------


def _column(name: str) -> str:
    field = SliceCredential._meta.pk if name == "pk" else SliceCredential._meta.get_field(name)
    column = getattr(field, "column", None)
    assert isinstance(column, str)
    return column


def _chunks(ids: Sequence[int], size: int = 500) -> Iterator[Sequence[int]]:
    """``ids`` in slices small enough for any database's parameter limit."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _decrypts(fernet: MultiFernet, value: bytes) -> bool:
    try:
        fernet.decrypt(value)
    except (InvalidToken, TypeError, ValueError):
        return False
    return True


@dataclass
class Plan:
    """What to do with one row, decided from the bytes read outside any lock."""

    pk: int
    raw: RawRow
    #: The re-encrypted bytes per column (``None`` keeps a column that is already current).
    rotated: RawRow | None = None
    unreadable: bool = False


def plan_row(pk: int, raw: RawRow, primary: MultiFernet, keyring: MultiFernet) -> Plan:
    """Rotate the columns not under the newest key; any undecryptable column spoils the row."""
    plan = Plan(pk, raw)
    rotated: list[bytes | None] = []
    for value in raw:
        if value is None or _decrypts(primary, value):
            rotated.append(None)
            continue
        try:
            rotated.append(keyring.rotate(value))
        except (InvalidToken, TypeError, ValueError):
            plan.unreadable = True
            return plan
    if any(value is not None for value in rotated):
        plan.rotated = tuple(rotated)
    return plan


@dataclass
class Report:
    """Counts of one run (or one batch); ids only, never a token."""

    rotated: int = 0
    current: int = 0
    skipped: int = 0
    marked: int = 0
    unreadable: list[int] = field(default_factory=list)
    still_old: int = 0
    #: The first and last id of the batch (per-batch reports only).
    first_id: int | None = None
    last_id: int | None = None

    def add(self, done: Report) -> None:
        self.rotated += done.rotated
        self.current += done.current
        self.skipped += done.skipped
        self.marked += done.marked
        self.unreadable.extend(done.unreadable)


def _check_rotation(batch_size: int, mark: bool) -> None:
    """Raise :class:`KeysRefused` when the run must not start."""
    if not getattr(settings, "FERNET_KEYS", None):
        raise KeysRefused(
            "FERNET_KEYS is not set: refusing to rotate tokens onto SECRET_KEY. Put a new "
            "key first in FERNET_KEYS, keeping the old ones after it."
        )
    refuse_invalid_keys()
    if batch_size < 1:
        raise KeysRefused("--batch-size must be at least 1.")
    if mark:
        fault = keyprobe.process_fault()
        if fault is not None:
            raise KeysRefused(
                f"Refusing to mark anything: {fault}. This process's FERNET_KEYS are "
                "wrong or incomplete (a user is never marked for that); fix them first."
            )


def rotate_keys(
    *,
    batch_size: int = 500,
    dry_run: bool = False,
    mark: bool = False,
    on_start: Callable[[], None] | None = None,
    on_batch: Callable[[Report], None] | None = None,
) -> Report:
    """Re-encrypt every credential's tokens under the first key of ``FERNET_KEYS``.

    Batches of ``batch_size`` rows in id order, each written in one transaction, so the run
    is safe to interrupt and re-run. ``mark`` also sets rows no key decrypts to needs
    re-link (:func:`services.mark_unreadable`). ``on_start`` is called once the checks
    passed, ``on_batch`` with each batch's report.
    Raises :class:`KeysRefused`, changing nothing, when the keys or options are unusable.
    The returned report's ``still_old`` counts rows left under older keys (a renewal by a
    process on the old key list): run again before removing any key.
    """
    _check_rotation(batch_size, mark)
    if on_start is not None:
        on_start()
    primary, keyring = primary_fernet(), current_fernet()
    report = Report()
    for batch in _batches(batch_size):
        done = _rotate_batch(batch, primary, keyring, dry_run=dry_run, mark=mark)
        report.add(done)
        if on_batch is not None:
            on_batch(done)
    if not dry_run:
        report.still_old = _count_still_old(batch_size)
    else:
        report.still_old = report.rotated
        if mark:
            report.marked = sum(
                SliceCredential.objects.active().filter(pk__in=ids).count()
                for ids in _chunks(report.unreadable)
            )
    _log_rotation(report, dry_run=dry_run)
    return report


def _rotate_batch(
    batch: list[tuple[int, RawRow]],
    primary: MultiFernet,
    keyring: MultiFernet,
    *,
    dry_run: bool,
    mark: bool,
) -> Report:
    """Plan each row of ``batch``, then write the plans (or, in a dry run, count them)."""
    plans = [plan_row(pk, raw, primary, keyring) for pk, raw in batch]
    if dry_run:
        done = Report(rotated=sum(plan.rotated is not None for plan in plans))
        done.unreadable = [plan.pk for plan in plans if plan.unreadable]
    else:
        done = _write_batch(plans, mark=mark)
    done.current = sum(plan.rotated is None and not plan.unreadable for plan in plans)
    done.first_id, done.last_id = batch[0][0], batch[-1][0]
    return done


def _log_rotation(report: Report, *, dry_run: bool) -> None:
    rotation_logger.info(
        "Key rotation%s: %d rotated, %d current, %d skipped, %d unreadable, %d marked, "
        "%d still under older keys.",
        " (dry run)" if dry_run else "",
        report.rotated,
        report.current,
        report.skipped,
        len(report.unreadable),
        report.marked,
        report.still_old,
    )


def _batches(batch_size: int) -> Iterator[list[tuple[int, RawRow]]]:
    """Read the raw rows in ascending id order, ``batch_size`` at a time (keyset)."""
    last = 0
    while True:
        rows = SliceCredential.objects.filter(pk__gt=last).order_by("pk")[:batch_size]
        batch = list(raw_token_rows(rows))
        if not batch:
            return
        yield batch
        last = batch[-1][0]
        if len(batch) < batch_size:
            return


def _write_batch(plans: Sequence[Plan], *, mark: bool) -> Report:
    """Lock the batch's rows, then write each one whose bytes are still the ones read.

    The lock keeps a renewal from writing new tokens between our check and our write; a
    renewal that committed since the read changed the bytes, so its row is skipped (its new
    tokens were written under the newest key by then, or the next run will rotate them).
    """
    done = Report()
    pending = [plan for plan in plans if plan.rotated is not None or plan.unreadable]
    if not pending:
        return done
    with transaction.atomic():
        # An id range, not ``pk__in``: any batch size stays within SQLite's parameter
        # limit. Rows in the range that need nothing are locked briefly too.
        locked = dict(
            raw_token_rows(
                SliceCredential.objects.select_for_update()
                .filter(pk__gte=pending[0].pk, pk__lte=pending[-1].pk)
                .order_by("pk")
            )
        )
        to_mark: list[int] = []
        to_store: list[Plan] = []
        for plan in pending:
            if locked.get(plan.pk) != plan.raw:
                done.skipped += 1
            elif plan.unreadable:
                done.unreadable.append(plan.pk)
                to_mark.append(plan.pk)
            else:
                to_store.append(plan)
        _store(to_store)
        done.rotated = len(to_store)
        for ids in _chunks(to_mark) if mark else ():
            done.marked += services.mark_unreadable(ids)
    return done


def _store(plans: Sequence[Plan]) -> None:
    """Write the re-encrypted bytes of the changed columns with SQL, past the field."""
    by_columns: dict[tuple[str, ...], list[list[Any]]] = {}
    for plan in plans:
        assert plan.rotated is not None
        changed = [
            (name, value)
            for name, value in zip(TOKEN_FIELDS, plan.rotated, strict=True)
            if value is not None
        ]
        columns = tuple(name for name, _value in changed)
        by_columns.setdefault(columns, []).append([*(v for _n, v in changed), plan.pk])
    quote = connection.ops.quote_name
    table, pk = quote(SliceCredential._meta.db_table), quote(_column("pk"))
    with connection.cursor() as cursor:
        for columns, rows in by_columns.items():
            assignments = ", ".join(f"{quote(_column(name))} = %s" for name in columns)
            sql = f"UPDATE {table} SET {assignments} WHERE {pk} = %s"  # noqa: S608
            cursor.executemany(sql, rows)


def _count_still_old(batch_size: int) -> int:
    """Re-scan every row: how many decrypt with some key, but not with the newest."""
    primary, keyring = primary_fernet(), current_fernet()
    still_old = 0
    for batch in _batches(batch_size):
        for _pk, raw in batch:
            values = [value for value in raw if value is not None]
            if all(_decrypts(primary, value) for value in values):
                continue
            if all(_decrypts(keyring, value) for value in values):
                still_old += 1
    return still_old


# -- reactivation ------------------------------------------------------------------------


@dataclass
class Reactivation:
    """Ids per outcome of one :func:`reactivate` run."""

    reactivated: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)


def marked_undecryptable() -> QuerySet[SliceCredential]:
    return SliceCredential.objects.filter(
        status=Status.NEEDS_REAUTH, status_reason=Reason.UNDECRYPTABLE
    )


def reactivation_candidates() -> Iterator[int]:
    """Ids of the credentials marked undecryptable (no token is loaded here)."""
    return iter(list(marked_undecryptable().order_by("pk").values_list("pk", flat=True)))


def reactivate(*, dry_run: bool = False) -> Reactivation:
    """Return credentials marked undecryptable to active once both their tokens decrypt.

    Each candidate is read again under its row lock and decided as it is then; one read
    but expired gets reason ``refresh_expired`` instead. Idempotent. Raises
    :class:`KeysRefused`, changing nothing, when ``FERNET_KEYS`` is invalid or unusable.
    """
    refuse_invalid_keys()
    problem = keys_unusable()
    if problem:
        raise KeysRefused(f"FERNET_KEYS cannot be used, nothing was changed: {problem}")
    outcome = Reactivation()
    for pk in reactivation_candidates():
        _reactivate_one(pk, outcome, dry_run=dry_run)
    reactivation_logger.info(
        "Reactivation%s: %d reactivated, %d still unreadable, %d expired, %d changed.",
        " (dry run)" if dry_run else "",
        len(outcome.reactivated),
        len(outcome.unreadable),
        len(outcome.expired),
        len(outcome.changed),
    )
    return outcome


def _reactivate_one(pk: int, outcome: Reactivation, *, dry_run: bool) -> None:
    with transaction.atomic():
        row = SliceCredential.objects.select_for_update().filter(pk=pk).first()
        if row is None or (row.status, row.status_reason) != (
            Status.NEEDS_REAUTH,
            Reason.UNDECRYPTABLE,
        ):
            outcome.changed.append(pk)  # unlinked, re-linked or reactivated meanwhile
            return
        tokens = [row.access_token, row.refresh_token]
        if row.refresh_token is None or any(isinstance(t, UnreadableToken) for t in tokens):
            outcome.unreadable.append(pk)
            return
        if row.refresh_token_expires_at <= timezone.now():
            # Readable, but too late: the user must link again, for this reason now.
            outcome.expired.append(pk)
            if not dry_run:
                row.status_reason = Reason.REFRESH_EXPIRED
                row.save(update_fields=["status_reason", "updated_at"])
            return
        outcome.reactivated.append(pk)
        if dry_run:
            return
        _make_active(row)
    reactivation_logger.info("Reactivated Slice credential %s: its tokens decrypt again.", pk)


def _make_active(row: SliceCredential) -> None:
    row.status = Status.ACTIVE
    row.status_reason = Reason.NONE
    row.renewal_started_at = None
    row.failure_count = 0
    row.last_error_code = ""
    row.last_error_at = None
    row.save(
        update_fields=[
            "status",
            "status_reason",
            "renewal_started_at",
            "failure_count",
            "last_error_code",
            "last_error_at",
            "updated_at",
        ]
    )
