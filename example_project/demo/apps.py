from __future__ import annotations

from django.apps import AppConfig


class DemoConfig(AppConfig):
    """Connects the demo's receivers: the "linked" message and the sandbox user mirror."""

    name = "example_project.demo"
    label = "demo"
    verbose_name = "Slice Connect demo"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from django.db.models.signals import post_delete, post_save

        from slice_connect.signals import credential_linked

        from . import receivers, sandbox_db

        credential_linked.connect(receivers.say_linked, dispatch_uid="demo-say-linked")
        post_save.connect(
            sandbox_db.mirror_user, sender=settings.AUTH_USER_MODEL, dispatch_uid="demo-mirror"
        )
        post_delete.connect(
            sandbox_db.unmirror_user, sender=settings.AUTH_USER_MODEL, dispatch_uid="demo-unmirror"
        )
