from __future__ import annotations

from django.apps import AppConfig


class SliceSandboxConfig(AppConfig):
    name = "example_project.slice_sandbox"
    label = "slice_sandbox"
    verbose_name = "Slice sandbox"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
