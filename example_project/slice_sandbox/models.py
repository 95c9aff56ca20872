from __future__ import annotations

from django.db import models
from django.utils import timezone

GRANT_AUTHORIZATION_CODE = "authorization_code"
GRANT_REFRESH_TOKEN = "refresh_token"


class TokenRequestQuerySet(models.QuerySet["TokenRequest"]):
    def authorization_codes(self) -> TokenRequestQuerySet:
        return self.filter(grant_type=GRANT_AUTHORIZATION_CODE)

    def refreshes(self) -> TokenRequestQuerySet:
        return self.filter(grant_type=GRANT_REFRESH_TOKEN)

    def succeeded(self) -> TokenRequestQuerySet:
        return self.filter(status_code=200)

    def failed(self) -> TokenRequestQuerySet:
        return self.exclude(status_code=200)


class TokenRequest(models.Model):
    """One POST to /oauth/token, so tests can count what reached the server.

    Never holds token values or client secrets.
    """

    grant_type = models.CharField(max_length=64, blank=True)
    client_id = models.CharField(max_length=255, blank=True)
    status_code = models.PositiveSmallIntegerField()
    error = models.CharField(max_length=64, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)

    objects = TokenRequestQuerySet.as_manager()

    class Meta:
        ordering = ("created", "pk")
        verbose_name = "token request"

    def __str__(self) -> str:
        outcome = self.error or "ok"
        return f"{self.grant_type or '?'} -> {self.status_code} {outcome}"
