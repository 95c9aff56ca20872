"""Return credentials marked undecryptable to active once their tokens read again.

``manage.py slice_connect_reactivate``: after the keys are fixed (the missing key put back
in ``FERNET_KEYS``), every credential with status ``needs_reauth`` and reason
``undecryptable`` whose two tokens now decrypt becomes ``active`` again, one locked row at a
time. Safe to re-run (a second run finds nothing to do); prints counts and ids, never a
token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from slice_connect.fields import keys_unusable
from slice_connect.management.commands.slice_connect_rotate_keys import refuse_invalid_keys
from slice_connect.models import SliceCredential

logger = logging.getLogger("slice_connect.reactivate")

Status = SliceCredential.Status
Reason = SliceCredential.Reason

#: Ids listed per outcome at the default verbosity; ``-v 2`` lists them all.
MAX_IDS_SHOWN = 100


@dataclass
class Outcome:
    """Ids per outcome of one run."""

    reactivated: list[int] = field(default_factory=list)
    unreadable: list[int] = field(default_factory=list)
    expired: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)


def marked_undecryptable() -> Any:
    return SliceCredential.objects.filter(
        status=Status.NEEDS_REAUTH, status_reason=Reason.UNDECRYPTABLE
    )


class Command(BaseCommand):
    help = (
        "Return Slice credentials marked undecryptable to active when both their tokens "
        "decrypt with the current FERNET_KEYS. Idempotent; prints counts and ids only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would change; write nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        refuse_invalid_keys()
        problem = keys_unusable()
        if problem:
            raise CommandError(f"FERNET_KEYS cannot be used, nothing was changed: {problem}")
        dry_run: bool = options["dry_run"]
        verbose = options["verbosity"] >= 2
        outcome = Outcome()
        for pk in self._candidates():
            self._one(pk, outcome, dry_run=dry_run)
        self._print(outcome, dry_run=dry_run, verbose=verbose)
        logger.info(
            "Reactivation%s: %d reactivated, %d still unreadable, %d expired, %d changed.",
            " (dry run)" if dry_run else "",
            len(outcome.reactivated),
            len(outcome.unreadable),
            len(outcome.expired),
            len(outcome.changed),
        )

    @staticmethod
    def _candidates() -> Iterator[int]:
        # Ids first (no token is loaded here): each row is then read again under its lock.
        return iter(list(marked_undecryptable().order_by("pk").values_list("pk", flat=True)))

    def _one(self, pk: int, outcome: Outcome, *, dry_run: bool) -> None:
        with transaction.atomic():
            row = SliceCredential.objects.select_for_update().filter(pk=pk).first()
            if row is None or (row.status, row.status_reason) != (
                Status.NEEDS_REAUTH,
                Reason.UNDECRYPTABLE,
            ):
                outcome.changed.append(pk)  # unlinked, re-linked or reactivated meanwhile
                return
            if not row.tokens_readable or row.refresh_token is None:
                outcome.unreadable.append(pk)
                return
            now = timezone.now()
            if row.refresh_token_expires_at <= now:
                # Readable, but too late: the user must link again, for this reason now.
                outcome.expired.append(pk)
                if not dry_run:
                    row.status_reason = Reason.REFRESH_EXPIRED
                    row.save(update_fields=["status_reason", "updated_at"])
                return
            outcome.reactivated.append(pk)
            if dry_run:
                return
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
        logger.info("Reactivated Slice credential %s: its tokens decrypt again.", pk)

    def _print(self, outcome: Outcome, *, dry_run: bool, verbose: bool) -> None:
        write = self.stdout.write
        label = "to reactivate" if dry_run else "reactivated"
        write(f"credentials {label}: {len(outcome.reactivated)}{ids(outcome.reactivated, verbose)}")
        write(
            f"credentials still unreadable: {len(outcome.unreadable)}"
            f"{ids(outcome.unreadable, verbose)}"
        )
        write(
            f"credentials readable but expired (left needs re-link): {len(outcome.expired)}"
            f"{ids(outcome.expired, verbose)}"
        )
        write(f"credentials changed during the run (skipped): {len(outcome.changed)}")


def ids(values: list[int], verbose: bool) -> str:
    if not values:
        return ""
    shown = values if verbose else values[:MAX_IDS_SHOWN]
    more = len(values) - len(shown)
    tail = f" and {more} more (-v 2 lists all)" if more else ""
    return f" (ids {', '.join(map(str, shown))}{tail})"
