"""App configuration."""

from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_delete
from django.utils.translation import gettext_lazy as _


class SliceConnectConfig(AppConfig):
    """Wires the system checks and the deletion hook; nothing else runs at start-up."""

    name = "slice_connect"
    verbose_name = _("Slice connect")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
        from .models import SliceCredential
        from .services import credential_deleted

        post_delete.connect(
            credential_deleted, sender=SliceCredential, dispatch_uid="slice_connect.deleted"
        )
