"""The per-user Slice credential."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .conf import app_settings
from .fields import EncryptedTokenField

TOKEN_FIELDS = ("access_token", "refresh_token")


class SliceCredentialQuerySet(models.QuerySet["SliceCredential"]):
    """Queries over credentials; none of them filters on a token (ciphertext is random)."""

    def active(self) -> SliceCredentialQuerySet:
        """Credentials that can still be used and renewed."""
        return self.filter(status=SliceCredential.Status.ACTIVE)

    def without_tokens(self) -> SliceCredentialQuerySet:
        """Skip loading (and decrypting) the token columns."""
        return self.defer(*TOKEN_FIELDS)

    def due_for_renewal(self, now: datetime | None = None) -> SliceCredentialQuerySet:
        """Active credentials whose refresh token is due (see ``refresh_token_due``)."""
        now = now or timezone.now()
        # now >= last_renewed_at + (expires - last_renewed_at) / 2, i.e.
        # expires <= 2 * now - last_renewed_at: half the life the last renewal left is gone.
        half_gone = models.ExpressionWrapper(
            models.Value(now) + (models.Value(now) - models.F("last_renewed_at")),
            output_field=models.DateTimeField(),
        )
        return self.active().filter(
            models.Q(last_renewed_at__isnull=True)
            | models.Q(refresh_token_expires_at__lte=half_gone),
            refresh_token_expires_at__lte=now + app_settings.RENEW_WITHIN,
        )

    def iter_ids(self, batch_size: int | None = None) -> Iterator[int]:
        """Yield the ids of this queryset, most urgent refresh deadline first, in batches.

        Keyset pagination on (refresh deadline, id): memory stays flat however many rows
        match, no tokens are loaded, and rows changing meanwhile are neither skipped twice
        nor repeated.
        """
        batch_size = batch_size or app_settings.RENEW_BATCH_SIZE
        rows = self.order_by("refresh_token_expires_at", "pk")
        last: tuple[datetime, int] | None = None
        while True:
            page = rows
            if last is not None:
                page = rows.filter(
                    models.Q(refresh_token_expires_at__gt=last[0])
                    | models.Q(refresh_token_expires_at=last[0], pk__gt=last[1]),
                    # Implied by the OR, but only as a plain range can the index start the
                    # scan at the cursor; without it every page rescans from the first row.
                    refresh_token_expires_at__gte=last[0],
                )
            batch = list(page.values_list("refresh_token_expires_at", "pk")[:batch_size])
            for _expires, pk in batch:
                yield pk
            if len(batch) < batch_size:
                return
            last = batch[-1]


class SliceCredential(models.Model):
    """One user's link to their Slice account: encrypted tokens plus renewal bookkeeping."""

    class Status(models.TextChoices):
        ACTIVE = "active", _("active")
        NEEDS_REAUTH = "needs_reauth", _("needs re-link")

    class Reason(models.TextChoices):
        NONE = "", _("none")
        INVALID_GRANT = "invalid_grant", _("Slice refused the refresh token")
        LOST_ROTATION = "lost_rotation", _("a rotated refresh token was lost in transit")
        REFRESH_EXPIRED = "refresh_expired", _("the refresh token expired")
        UNDECRYPTABLE = "undecryptable", _("the stored tokens cannot be decrypted")

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="slice_credential",
        verbose_name=_("user"),
    )
    access_token = EncryptedTokenField(
        _("access token"), help_text=_("Fernet-encrypted; never displayed.")
    )
    refresh_token = EncryptedTokenField(
        _("refresh token"), help_text=_("Fernet-encrypted; never displayed.")
    )
    token_type = models.CharField(_("token type"), max_length=20, default="bearer")
    access_token_expires_at = models.DateTimeField(_("access token expires at"))
    refresh_token_expires_at = models.DateTimeField(
        _("refresh token expires at"),
        help_text=_("Issue time plus the refresh lifetime (14 days unless Slice says otherwise)."),
    )
    status = models.CharField(
        _("status"), max_length=20, choices=Status.choices, default=Status.ACTIVE
    )
    status_reason = models.CharField(
        _("status reason"), max_length=32, choices=Reason.choices, default="", blank=True
    )
    linked_at = models.DateTimeField(_("linked at"), default=timezone.now)
    last_renewed_at = models.DateTimeField(_("last renewed at"), null=True, blank=True)
    version = models.PositiveBigIntegerField(
        _("version"), default=1, help_text=_("Incremented every time the tokens change.")
    )
    renewal_started_at = models.DateTimeField(
        _("renewal started at"),
        null=True,
        blank=True,
        help_text=_(
            "Set while a refresh request with the current refresh token may be in flight; "
            "left set when its answer was lost."
        ),
    )
    failure_count = models.PositiveIntegerField(
        _("consecutive failures"),
        default=0,
        help_text=_("Renewal failures since the last success."),
    )
    last_error_code = models.CharField(_("last error"), max_length=64, blank=True, default="")
    last_error_at = models.DateTimeField(_("last error at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = SliceCredentialQuerySet.as_manager()

    class Meta:
        verbose_name = _("Slice credential")
        verbose_name_plural = _("Slice credentials")
        indexes = [
            models.Index(
                fields=["status", "refresh_token_expires_at"], name="slice_cred_renewal_due"
            ),
        ]

    def __str__(self) -> str:
        return f"Slice link of {self.user}"

    def __repr__(self) -> str:
        # Only what is loaded: a deferred field would query (and fail on a deleted row).
        loaded = self.__dict__
        return (
            f"<SliceCredential id={self.pk} user_id={loaded.get('user_id')} "
            f"status={loaded.get('status')}>"
        )

    @property
    def is_active(self) -> bool:
        """Whether the credential can be used and renewed."""
        return self.status == self.Status.ACTIVE

    def access_token_expiring(self, now: datetime | None = None) -> bool:
        """Whether the access token expires within ``ACCESS_TOKEN_LEEWAY``."""
        now = now or timezone.now()
        return self.access_token_expires_at <= now + app_settings.ACCESS_TOKEN_LEEWAY

    def refresh_token_due(self, now: datetime | None = None) -> bool:
        """Whether the beat should renew the refresh token now.

        Due when it expires within ``RENEW_WITHIN`` and at least half of the life the last
        renewal left it is gone. With a rotating server the second part changes nothing (a
        rotation restarts the 14 days, and RENEW_WITHIN is below that); it decides what is due
        from what the server actually gave us otherwise: a server that does not rotate is
        renewed at halving intervals until its token expires (a handful of times, not on every
        beat run), and one whose refresh tokens live less than ``RENEW_WITHIN`` at half their
        life (not on every run, and never too late).
        """
        now = now or timezone.now()
        expires = self.refresh_token_expires_at
        if expires > now + app_settings.RENEW_WITHIN:
            return False
        renewed = self.last_renewed_at
        return renewed is None or expires <= now + (now - renewed)

    def needs_renewal(self, now: datetime | None = None) -> bool:
        """Whether :func:`slice_connect.services.renew` would call Slice now."""
        now = now or timezone.now()
        return self.access_token_expiring(now) or self.refresh_token_due(now)

    def copy_from(self, other: SliceCredential) -> None:
        """Overwrite this instance's field values with ``other``'s (same row, fresher read)."""
        deferred = other.get_deferred_fields()
        for field in self._meta.concrete_fields:
            if field.attname not in deferred:
                setattr(self, field.attname, getattr(other, field.attname))


class CallbackClaim(models.Model):
    """The single use of one authorization attempt, claimed by the callback that redeems it.

    The primary key is the SHA-256 of the state (never the state), so of several callbacks
    carrying the same state at once (a double click, a reload, a prefetch), in however many
    processes, exactly one inserts the row and exchanges the code; the others fail on the
    key. Rows older than twice ``STATE_TTL`` are deleted when new attempts start.
    """

    state_hash = models.CharField(_("state hash"), max_length=64, primary_key=True)
    claimed_at = models.DateTimeField(_("claimed at"), default=timezone.now, db_index=True)

    class Meta:
        verbose_name = _("callback claim")
        verbose_name_plural = _("callback claims")

    def __str__(self) -> str:
        return f"callback claim of {self.claimed_at:%Y-%m-%d %H:%M:%S}"
