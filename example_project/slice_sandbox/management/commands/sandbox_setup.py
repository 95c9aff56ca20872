from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from example_project.slice_sandbox.setup import DEFAULT_NAME, ensure_application


class Command(BaseCommand):
    help = "Create or update the sandbox's OAuth Application for the Slice Connect client."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--client-id", required=True)
        parser.add_argument("--client-secret", required=True)
        parser.add_argument(
            "--redirect-uri",
            action="append",
            required=True,
            dest="redirect_uris",
            help="Allowed redirect URI; repeat the option for several.",
        )
        parser.add_argument("--name", default=DEFAULT_NAME, help="Shown on the consent page.")
        parser.add_argument("--owner", help="Username of the Application's owner (optional).")

    def handle(self, *args: Any, **options: Any) -> None:
        owner = None
        if options["owner"]:
            user_model = get_user_model()
            try:
                owner = user_model._default_manager.get_by_natural_key(options["owner"])
            except user_model.DoesNotExist:
                raise CommandError(f"No user named {options['owner']!r}.") from None
        application = ensure_application(
            options["client_id"],
            options["client_secret"],
            options["redirect_uris"],
            user=owner,
            name=options["name"],
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Application {application.name!r} ready: client_id={application.client_id}, "
                f"redirect URIs: {application.redirect_uris}"
            )
        )
