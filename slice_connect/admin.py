"""Admin: who is linked and how healthy each link is; never a token."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import display, services
from .conf import app_settings
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


if TYPE_CHECKING:
    CredentialModelAdmin = admin.ModelAdmin[SliceCredential]
else:  # ModelAdmin is generic for django-stubs only (not subscriptable at run time)
    CredentialModelAdmin = admin.ModelAdmin


@admin.register(SliceCredential)
class SliceCredentialAdmin(CredentialModelAdmin):
    """Read-only view of credentials; changes go through slice_connect.services.

    The change page is view-only for everyone: saving it would write back a snapshot read
    without the row lock over a renewal that committed meanwhile (rolling back the version,
    the expiries and the renewal journal). The "change" permission still allows the
    "Renew now" action, which goes through ``services.renew``. Every action leaves a
    ``LogEntry`` naming the admin user, the credential, the action and its outcome.
    """

    # In words (labels, "in 3 days", causes), narrow enough for a 1280 px screen.
    list_display = (
        "user",
        display.link_status,
        display.renewed,
        display.expires,
        display.failures,
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

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # No object may be saved from the change form (it is shown read-only, without a
        # Save button, to anyone with the view or change permission, and a POST to it
        # answers 403). Without an object this asks about the model: it keeps the "change"
        # permission meaningful for the "Renew now" action.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        raise PermissionDenied("Slice credentials change only through slice_connect.services.")

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        """Log each deletion (admin delete page, "Delete selected", "Unlink") with its outcome.

        Called by Django before the rows go (``log_deletions`` exists since Django 5.1 and
        replaces ``log_deletion``, which Django 6.0 removed).
        """
        credentials = list(queryset)
        revocable = self._revocable({c.pk for c in credentials})
        for credential in credentials:
            if credential.pk in revocable:
                outcome = _("revocation of its refresh token at Slice requested (best effort)")
            elif not (app_settings.REVOKE_ON_UNLINK and app_settings.REVOKE_URL):
                outcome = _("not revoked at Slice (revocation is turned off)")
            else:
                outcome = _("not revoked at Slice (its tokens cannot be decrypted)")
            self._log_deletion(
                request,
                credential,
                _("Unlinked %(user)s and deleted the credential; %(outcome)s.")
                % {"user": credential.user, "outcome": outcome},
            )
        return None

    @staticmethod
    def _revocable(pks: set[Any]) -> set[Any]:
        """Which of ``pks`` unlink will revoke at Slice (a readable refresh token).

        Read on separate instances: the objects about to be deleted keep their tokens
        deferred, so ``services.unlink`` reads the token that is live when the row goes.
        """
        if not (app_settings.REVOKE_ON_UNLINK and app_settings.REVOKE_URL) or not pks:
            return set()
        rows = SliceCredential.objects.filter(pk__in=pks).only("pk", "refresh_token")
        return {row.pk for row in rows if isinstance(row.refresh_token, str) and row.refresh_token}

    @staticmethod
    def _log_deletion(request: HttpRequest, credential: SliceCredential, message: Any) -> None:
        """One deletion ``LogEntry``: who (``request.user``), what, and the outcome.

        Messages (here and in ``log_change``) are built from the user, error codes and
        version numbers only: never a token.
        """
        user_id = request.user.pk
        assert user_id is not None  # the admin serves logged-in staff only
        LogEntry.objects.log_actions(
            user_id=user_id,
            queryset=[credential],
            action_flag=DELETION,
            change_message=str(message),
            single_object=True,
        )

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for credential in queryset.only("pk", "user"):
            services.unlink(credential, request=request)

    def delete_model(self, request: HttpRequest, obj: SliceCredential) -> None:
        services.unlink(obj, request=request)

    @admin.action(description=_("Renew now"), permissions=["change"])
    def renew_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Renew each selected credential through services.renew (forced)."""
        renewed = 0
        for credential in queryset.select_related("user").defer(*TOKEN_FIELDS):
            before = credential.version
            try:
                result = services.renew_with_result(credential, force=True)
            except SliceConnectError as exc:
                self.message_user(
                    request,
                    _("Could not renew %(credential)s: %(error)s")
                    % {"credential": credential, "error": exc.code},
                    messages.WARNING,
                )
                self.log_change(
                    request,
                    credential,
                    _("Renew now failed: %(error)s (status %(status)s).")
                    % {"error": exc.code, "status": credential.status},
                )
            else:
                renewed += 1
                if result.renewed:
                    outcome = _("Renew now: renewed (version %(before)s to %(after)s).")
                else:
                    outcome = _("Renew now: another process renewed it first (version %(after)s).")
                self.log_change(
                    request,
                    credential,
                    outcome % {"before": before, "after": credential.version},
                )
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
        for credential in queryset.only("pk", "user"):
            self.log_deletions(request, [credential])
            services.unlink(credential, request=request)
            count += 1
        self.message_user(
            request,
            ngettext("Unlinked %d credential.", "Unlinked %d credentials.", count) % count,
            messages.SUCCESS,
        )
