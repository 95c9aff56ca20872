"""Re-encrypt every stored token under the newest key: ``manage.py slice_connect_rotate_keys``.

The command parses its options and prints; :func:`slice_connect.keys.rotate_keys` does the
work (on the raw column bytes: no token is decoded, saved through the model or printed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from slice_connect.keys import KeysRefused, Report, rotate_keys

#: Unreadable ids listed at the default verbosity; ``-v 2`` lists them all.
MAX_IDS_SHOWN = 100


def ids_shown(ids: Iterable[int], verbose: bool) -> str:
    """`` (ids 1, 2 and 3 more ...)`` for a summary line; empty for no ids."""
    ids = sorted(ids)
    if not ids:
        return ""
    shown = ids if verbose else ids[:MAX_IDS_SHOWN]
    more = len(ids) - len(shown)
    tail = f" and {more} more (-v 2 lists all)" if more else ""
    return f" (ids {', '.join(map(str, shown))}{tail})"


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
        batch_size: int = options["batch_size"]
        dry_run: bool = options["dry_run"]
        mark: bool = options["mark_unreadable"]
        verbose = options["verbosity"] >= 2
        keys = len(getattr(settings, "FERNET_KEYS", None) or ())
        try:
            report = rotate_keys(
                batch_size=batch_size,
                dry_run=dry_run,
                mark=mark,
                on_batch=self._print_batch if verbose else None,
                on_start=lambda: self.stdout.write(
                    f"{'Dry run: rotating' if dry_run else 'Rotating'} tokens to the first of "
                    f"{keys} FERNET_KEYS, {batch_size} rows per batch."
                ),
            )
        except KeysRefused as exc:
            raise CommandError(str(exc)) from None
        self._print(report, dry_run=dry_run, mark=mark, verbose=verbose)
        if report.still_old and not dry_run:
            raise CommandError(
                "Some rows are still under older keys: run the command again before removing "
                "any key from FERNET_KEYS."
            )

    def _print_batch(self, done: Report) -> None:
        self.stdout.write(
            f"... ids {done.first_id}-{done.last_id}: {done.rotated} rotated, "
            f"{done.current} current, {done.skipped} skipped, "
            f"{len(done.unreadable)} unreadable"
        )

    def _print(self, report: Report, *, dry_run: bool, mark: bool, verbose: bool) -> None:
        write = self.stdout.write
        write(f"rows {'to rotate' if dry_run else 'rotated'}: {report.rotated}")
        write(f"rows already current: {report.current}")
        if not dry_run:
            write(f"rows skipped (changed during the run): {report.skipped}")
        count = len(report.unreadable)
        write(f"rows unreadable with every key: {count}{ids_shown(report.unreadable, verbose)}")
        if mark:
            write(f"rows {'to mark' if dry_run else 'marked'} needs re-link: {report.marked}")
        plural = "row" if report.still_old == 1 else "rows"
        write(f"{report.still_old} {plural} still under older keys")
        if count and not mark:
            self.stderr.write(
                f"{count} credential(s) cannot be decrypted with any key in FERNET_KEYS and "
                "were left untouched; --mark-unreadable flags them for re-link."
            )
