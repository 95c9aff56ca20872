"""Re-encrypt every stored token under the newest key: ``manage.py slice_connect_rotate_keys``.

Works on the raw column bytes with :meth:`MultiFernet.rotate` (which keeps each token's
original timestamp): no token is ever decoded into a Python string, no model ``save()`` runs,
and nothing printed or logged contains a token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import InvalidToken, MultiFernet
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from slice_connect import checks, keyprobe, services
from slice_connect.fields import current_fernet, primary_fernet
from slice_connect.keyprobe import RawRow, raw_token_rows
from slice_connect.models import TOKEN_FIELDS, SliceCredential

__all__ = ["Command", "Plan", "Report", "plan_row", "raw_token_rows"]

logger = logging.getLogger("slice_connect.rotate_keys")

#: Unreadable ids listed at the default verbosity; ``-v 2`` lists them all.
MAX_IDS_SHOWN = 100


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
    """Counts of one run; ids only, never a token."""

    rotated: int = 0
    current: int = 0
    skipped: int = 0
    marked: int = 0
    unreadable: list[int] = field(default_factory=list)
    still_old: int = 0


def refuse_invalid_keys() -> None:
    """Raise ``CommandError`` listing every problem of ``FERNET_KEYS`` (checks E005-E008)."""
    problems = checks.check_fernet_keys()
    errors = [message for message in problems if message.is_serious()]
    if errors:
        listed = "; ".join(f"{message.id}: {message.msg}" for message in errors)
        raise CommandError(f"FERNET_KEYS is invalid, nothing was changed. {listed}")


class Command(BaseCommand):
    help = (
        "Re-encrypt every Slice credential's tokens under the first key of FERNET_KEYS, in "
        "batches; safe to interrupt and re-run. Prints counts and ids, never a token."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            metavar="N",
            help="Rows per batch; each batch is one transaction (default 500).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would change; write nothing."
        )
        parser.add_argument(
            "--mark-unreadable",
            action="store_true",
            help="Set credentials no key can decrypt to needs re-link (undecryptable).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not getattr(settings, "FERNET_KEYS", None):
            raise CommandError(
                "FERNET_KEYS is not set: refusing to rotate tokens onto SECRET_KEY. Put a new "
                "key first in FERNET_KEYS, keeping the old ones after it."
            )
        refuse_invalid_keys()
        batch_size = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        dry_run: bool = options["dry_run"]
        mark: bool = options["mark_unreadable"]
        verbose = options["verbosity"] >= 2
        if mark:
            fault = keyprobe.process_fault()
            if fault is not None:
                raise CommandError(
                    f"Refusing to mark anything: {fault}. This process's FERNET_KEYS are "
                    "wrong or incomplete (a user is never marked for that); fix them first."
                )
        keys = len(settings.FERNET_KEYS)
        self.stdout.write(
            f"{'Dry run: rotating' if dry_run else 'Rotating'} tokens to the first of {keys} "
            f"FERNET_KEYS, {batch_size} rows per batch."
        )

        primary, keyring = primary_fernet(), current_fernet()
        report = Report()
        for batch in self._batches(batch_size):
            plans = [plan_row(pk, raw, primary, keyring) for pk, raw in batch]
            done = Report()
            if dry_run:
                done.rotated = sum(plan.rotated is not None for plan in plans)
                done.unreadable = [plan.pk for plan in plans if plan.unreadable]
            else:
                done = self._write_batch(plans, mark=mark)
            done.current = sum(plan.rotated is None and not plan.unreadable for plan in plans)
            self._add(report, done)
            if verbose:
                self.stdout.write(
                    f"... ids {batch[0][0]}-{batch[-1][0]}: {done.rotated} rotated, "
                    f"{done.current} current, {done.skipped} skipped, "
                    f"{len(done.unreadable)} unreadable"
                )

        if dry_run:
            report.still_old = report.rotated
            if mark:
                report.marked = sum(
                    SliceCredential.objects.active().filter(pk__in=ids).count()
                    for ids in _chunks(report.unreadable)
                )
        else:
            report.still_old = self._count_still_old(batch_size)
        self._print(report, dry_run=dry_run, mark=mark, verbose=verbose)
        logger.info(
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
        if report.still_old and not dry_run:
            raise CommandError(
                "Some rows are still under older keys: run the command again before removing "
                "any key from FERNET_KEYS."
            )

    # -- batches -----------------------------------------------------------------------

    def _batches(self, batch_size: int) -> Iterator[list[tuple[int, RawRow]]]:
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

    def _write_batch(self, plans: Sequence[Plan], *, mark: bool) -> Report:
        """Lock the batch's rows, then write each one whose bytes are still the ones read.

        The lock keeps a renewal from writing new tokens between our check and our write;
        a renewal that committed since the read changed the bytes, so its row is skipped
        (its new tokens were written under the newest key by then, or the next run will
        rotate them).
        """
        done = Report()
        pending = [plan for plan in plans if plan.rotated is not None or plan.unreadable]
        if not pending:
            return done
        with transaction.atomic():
            # An id range, not ``pk__in``: any --batch-size stays within SQLite's
            # parameter limit. Rows in the range that need nothing are locked briefly too.
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
            self._store(to_store)
            done.rotated = len(to_store)
            for ids in _chunks(to_mark) if mark else ():
                done.marked += services.mark_unreadable(ids)
        return done

    def _store(self, plans: Sequence[Plan]) -> None:
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

    def _count_still_old(self, batch_size: int) -> int:
        """Re-scan every row: how many decrypt with some key, but not with the newest."""
        primary, keyring = primary_fernet(), current_fernet()
        still_old = 0
        for batch in self._batches(batch_size):
            for _pk, raw in batch:
                values = [value for value in raw if value is not None]
                if all(_decrypts(primary, value) for value in values):
                    continue
                if all(_decrypts(keyring, value) for value in values):
                    still_old += 1
        return still_old

    # -- output ------------------------------------------------------------------------

    @staticmethod
    def _add(total: Report, done: Report) -> None:
        total.rotated += done.rotated
        total.current += done.current
        total.skipped += done.skipped
        total.marked += done.marked
        total.unreadable.extend(done.unreadable)

    def _print(self, report: Report, *, dry_run: bool, mark: bool, verbose: bool) -> None:
        write = self.stdout.write
        write(f"rows {'to rotate' if dry_run else 'rotated'}: {report.rotated}")
        write(f"rows already current: {report.current}")
        if not dry_run:
            write(f"rows skipped (changed during the run): {report.skipped}")
        count = len(report.unreadable)
        write(f"rows unreadable with every key: {count}{self._ids(report.unreadable, verbose)}")
        if mark:
            write(f"rows {'to mark' if dry_run else 'marked'} needs re-link: {report.marked}")
        plural = "row" if report.still_old == 1 else "rows"
        write(f"{report.still_old} {plural} still under older keys")
        if count and not mark:
            self.stderr.write(
                f"{count} credential(s) cannot be decrypted with any key in FERNET_KEYS and "
                "were left untouched; --mark-unreadable flags them for re-link."
            )

    @staticmethod
    def _ids(ids: Iterable[int], verbose: bool) -> str:
        ids = sorted(ids)
        if not ids:
            return ""
        shown = ids if verbose else ids[:MAX_IDS_SHOWN]
        more = len(ids) - len(shown)
        tail = f" and {more} more (-v 2 lists all)" if more else ""
        return f" (ids {', '.join(map(str, shown))}{tail})"
