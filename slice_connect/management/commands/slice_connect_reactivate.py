"""Return credentials marked undecryptable to active once their tokens read again.

``manage.py slice_connect_reactivate``: after the keys are fixed (the missing key put back
in ``FERNET_KEYS``), every credential with status ``needs_reauth`` and reason
``undecryptable`` whose two tokens now decrypt becomes ``active`` again, one locked row at a
time (:func:`slice_connect.keys.reactivate`). Safe to re-run (a second run finds nothing to
do); prints counts and ids, never a token.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from slice_connect.keys import KeysRefused, reactivate

#: Ids listed per outcome at the default verbosity; ``-v 2`` lists them all.
MAX_IDS_SHOWN = 100


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
        dry_run: bool = options["dry_run"]
        verbose = options["verbosity"] >= 2
        try:
            outcome = reactivate(dry_run=dry_run)
        except KeysRefused as exc:
            raise CommandError(str(exc)) from None
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
