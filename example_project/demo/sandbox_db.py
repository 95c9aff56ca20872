"""The sandbox's own SQLite file, for the demo without PostgreSQL.

A renewal keeps the credential's row locked while it posts to the token endpoint, and
here that endpoint is served by the same site. SQLite locks a whole file, so if the
sandbox wrote its tokens to the site's file the two would wait on each other. The router
sends the sandbox's apps (django-oauth-toolkit and slice_sandbox) to the ``sandbox``
database instead, as the real Slice has its own database.

Both files get the full schema (``migrate --database`` each). django-oauth-toolkit's
tables point at the user table, so users are mirrored into the sandbox file, same ids.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models

SANDBOX = "sandbox"
SANDBOX_APPS = frozenset({"oauth2_provider", "slice_sandbox"})


def sandbox_db_in_use() -> bool:
    """Whether the sandbox has a database of its own (SQLite demo)."""
    return SANDBOX in settings.DATABASES


class SandboxRouter:
    """Route the sandbox's apps to the ``sandbox`` database."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str | None:
        return SANDBOX if model._meta.app_label in SANDBOX_APPS else None

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        return SANDBOX if model._meta.app_label in SANDBOX_APPS else None

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool | None:
        # A sandbox row may point at a user loaded from the site's database: the mirror
        # in the sandbox file has the same id.
        labels = {obj1._meta.app_label, obj2._meta.app_label}
        return True if labels & SANDBOX_APPS else None


def _fields(user: models.Model) -> dict[str, Any]:
    return {
        field.attname: getattr(user, field.attname)
        for field in user._meta.concrete_fields
        if not field.primary_key
    }


def mirror_user(sender: Any, instance: Any, using: str, raw: bool = False, **kwargs: Any) -> None:
    """``post_save`` receiver: copy the user into the sandbox database."""
    if raw or using == SANDBOX or not sandbox_db_in_use():
        return
    sender._base_manager.using(SANDBOX).update_or_create(pk=instance.pk, defaults=_fields(instance))


def unmirror_user(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    """``post_delete`` receiver: delete the mirror (and its sandbox tokens)."""
    if using == SANDBOX or not sandbox_db_in_use():
        return
    sender._base_manager.using(SANDBOX).filter(pk=instance.pk).delete()


def sync_users() -> int:
    """Mirror every user into the sandbox database; return how many there are."""
    if not sandbox_db_in_use():
        return 0
    user_model = get_user_model()
    users = list(user_model._base_manager.using("default").all())
    for user in users:
        mirror_user(user_model, user, using="default")
    user_model._base_manager.using(SANDBOX).exclude(pk__in=[u.pk for u in users]).delete()
    return len(users)
