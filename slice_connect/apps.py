"""App configuration."""

from __future__ import annotations

import sys

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.db.models.signals import post_delete, pre_delete
from django.utils.translation import gettext_lazy as _


def running_management_command() -> bool:
    """Whether Django is being set up by ``manage.py`` / ``django-admin`` (any command).

    Those processes run the system checks themselves (every command that checks stops on
    an Error and lists them all), so start-up leaves the reporting to them: ``manage.py
    check`` shows every problem with its id, and a command that skips checks (such as
    ``collectstatic`` in an image build without secrets) still runs.
    """
    from django.core.management import ManagementUtility

    code = ManagementUtility.execute.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def refuse_fatal_configuration() -> None:
    """Raise ``ImproperlyConfigured`` listing every fatal configuration problem, if any.

    Django runs system checks only in ``manage.py``; WSGI and ASGI servers and Celery
    workers would otherwise start, and fail (or worse, mark users) at the first renewal.
    """
    from .checks import fatal_problems

    problems = fatal_problems()
    if not problems:
        return
    lines = [f"  {p.id}: {p.msg} HINT: {p.hint}" for p in problems]
    raise ImproperlyConfigured(
        f"slice_connect cannot start: {len(problems)} configuration problem(s):\n"
        + "\n".join(lines)
    )


class SliceConnectConfig(AppConfig):
    """Wires the system checks and the deletion hook, and refuses a fatal configuration."""

    name = "slice_connect"
    verbose_name = _("Slice connect")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)
        from .models import SliceCredential
        from .services import credential_deleted, credential_deleting

        pre_delete.connect(
            credential_deleting, sender=SliceCredential, dispatch_uid="slice_connect.deleting"
        )
        post_delete.connect(
            credential_deleted, sender=SliceCredential, dispatch_uid="slice_connect.deleted"
        )
        if not running_management_command():
            refuse_fatal_configuration()
