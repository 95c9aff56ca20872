"""Admin: who is linked and how healthy each link is; never a token."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import services
from .exceptions import SliceConnectError
from .models import TOKEN_FIELDS, SliceCredential


class RefreshExpiryFilter(admin.SimpleListFilter):
    """Filter by how soon the refresh token expires."""

    title = _("refresh token expires")
    parameter_name = "refresh_expires"
    WINDOWS = {"expired": None, "1d": 1, "3d": 3, "7d": 7}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("expired", _("already expired")),
            ("1d", _("within 1 day")),
            ("3d", _("within 3 days")),
            ("7d", _("within 7 days")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value not in self.WINDOWS:
            return queryset
        now = timezone.now()
        days = self.WINDOWS[value]
        if days is None:
            return queryset.filter(refresh_token_expires_at__lte=now)
        return queryset.filter(
            refresh_token_expires_at__gt=now,
            refresh_token_expires_at__lte=now + timedelta(days=days),
        )


@admin.register(SliceCredential)
class SliceCredentialAdmin(admin.ModelAdmin):
    """Read-mostly view of credentials; changes go through slice_connect.services."""

    list_display = (
        "user",
        "status",
        "status_reason",
        "linked_at",
        "access_token_expires_at",
        "refresh_token_expires_at",
        "last_renewed_at",
        "failure_count",
    )
    list_filter = ("status", "status_reason", RefreshExpiryFilter)
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    date_hierarchy = "linked_at"
    ordering = ("-linked_at",)
    actions = ("renew_now", "unlink")
    exclude = TOKEN_FIELDS
    readonly_fields = (
        "user",
        "token_type",
        "status",
        "status_reason",
        "linked_at",
        "last_renewed_at",
        "access_token_expires_at",
        "refresh_token_expires_at",
        "version",
        "renewal_started_at",
        "failure_count",
        "last_error_code",
        "last_error_at",
        "updated_at",
    )

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        from django.contrib.auth import get_user_model

        user_model = get_user_model()
        fields = [f"user__{user_model.USERNAME_FIELD}"]
        field_names = {f.name for f in user_model._meta.get_fields()}
        email = user_model.get_email_field_name()
        if email in field_names and email != user_model.USERNAME_FIELD:
            fields.append(f"user__{email}")
        return tuple(fields)

    def get_queryset(self, request: HttpRequest) -> QuerySet[SliceCredential]:
        # Never load (or decrypt) the tokens: an undecryptable row must not break a page.
        return super().get_queryset(request).defer(*TOKEN_FIELDS)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for credential in queryset.only("pk", "user", "refresh_token"):
            services.unlink(credential, request=request)

    def delete_model(self, request: HttpRequest, obj: SliceCredential) -> None:
        services.unlink(obj, request=request)

    @admin.action(description=_("Renew now"), permissions=["change"])
    def renew_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Renew each selected credential through services.renew (forced)."""
        renewed = 0
        for credential in queryset.select_related("user").defer(*TOKEN_FIELDS):
            try:
                services.renew(credential, force=True)
            except SliceConnectError as exc:
                self.message_user(
                    request,
                    _("Could not renew %(credential)s: %(error)s")
                    % {"credential": credential, "error": exc.code},
                    messages.WARNING,
                )
            else:
                renewed += 1
        if renewed:
            self.message_user(
                request,
                ngettext("Renewed %d credential.", "Renewed %d credentials.", renewed) % renewed,
                messages.SUCCESS,
            )

    @admin.action(description=_("Unlink (revoke at Slice and delete)"), permissions=["delete"])
    def unlink(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Unlink each selected credential through services.unlink."""
        count = 0
        for credential in queryset.only("pk", "user", "refresh_token"):
            services.unlink(credential, request=request)
            count += 1
        self.message_user(
            request,
            ngettext("Unlinked %d credential.", "Unlinked %d credentials.", count) % count,
            messages.SUCCESS,
        )
