"""Renew credentials without Celery (for cron): ``manage.py slice_connect_renew``."""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from slice_connect import services
from slice_connect.exceptions import NeedsReauth, NotLinked, SliceConnectError
from slice_connect.models import SliceCredential


class Command(BaseCommand):
    help = "Renew Slice credentials through the same locked path as the Celery task."

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--due", action="store_true", help="Credentials due for renewal (the default)."
        )
        which.add_argument(
            "--all", action="store_true", help="Every active credential, due or not (forced)."
        )
        which.add_argument(
            "--user", metavar="USER", help="One user's credential (id or username), forced."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be renewed; change nothing."
        )
        parser.add_argument(
            "--progress-every",
            type=int,
            default=100,
            metavar="N",
            help="Print a progress line every N credentials (default 100).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        force = bool(options["all"] or options["user"])
        started_at = timezone.now()
        queryset = self._queryset(options)
        total = queryset.count()
        if options["dry_run"]:
            for pk in queryset.iter_ids():
                self.stdout.write(f"would renew credential {pk}")
            self.stdout.write(f"{total} credential(s) would be renewed (dry run).")
            return
        counts = {"renewed": 0, "failed": 0, "skipped": 0}
        every = max(1, options["progress_every"])
        started = time.monotonic()
        # iter_ids walks refresh deadlines in order and a renewal moves a deadline past the
        # cursor: without this, --all would meet every renewed credential again, for ever.
        pending = queryset.exclude(last_renewed_at__gte=started_at)
        for done, pk in enumerate(pending.iter_ids(), start=1):
            counts[self._renew_one(pk, force)] += 1
            if done % every == 0 and done < total:
                rate = done / max(time.monotonic() - started, 1e-9)
                self.stdout.write(f"... {done}/{total} ({rate:.1f}/s)")
        self.stdout.write(
            f"renewed: {counts['renewed']}, failed: {counts['failed']}, "
            f"skipped: {counts['skipped']}"
        )

    def _queryset(self, options: dict[str, Any]) -> Any:
        credentials = SliceCredential.objects.all()
        if options["user"]:
            user_model = get_user_model()
            value = options["user"]
            lookup = {user_model.USERNAME_FIELD: value}
            user = user_model._default_manager.filter(**lookup).first()
            if user is None and value.isdigit():
                user = user_model._default_manager.filter(pk=int(value)).first()
            if user is None:
                raise CommandError(f"No user {value!r}.")
            if not credentials.filter(user=user).exists():
                raise CommandError(f"User {value!r} has not linked a Slice account.")
            return credentials.filter(user=user)
        if options["all"]:
            return credentials.active()
        return credentials.due_for_renewal()

    def _renew_one(self, pk: int, force: bool) -> str:
        try:
            result = services.renew_by_id(pk, force=force)
        except NotLinked:
            return "skipped"
        except NeedsReauth as exc:
            self.stderr.write(f"credential {pk}: needs re-link ({exc.reason or exc.code})")
            return "failed"
        except SliceConnectError as exc:
            self.stderr.write(f"credential {pk}: {exc.code}")
            return "failed"
        return "renewed" if result.renewed else "skipped"
