"""A credential in words, for people: the admin list's columns and their helpers.

Statuses and reasons read as their labels, times as "in 3 days" or "2 hours ago" (the exact
time in the tooltip), and error codes as a short sentence, never as the raw code.
"""

from __future__ import annotations

from datetime import datetime

from django.contrib import admin
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.timesince import timesince, timeuntil
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from .models import SliceCredential

#: Words for the error codes a renewal records in ``last_error_code``.
ERROR_WORDS = {
    "invalid_grant": _("Slice refused the refresh token"),
    "lost_rotation": _("a rotated refresh token was lost in transit"),
    "refresh_expired": _("the refresh token expired"),
    "undecryptable": _("the stored tokens cannot be decrypted"),
    "needs_reauth": _("the link needs re-authorization"),
    "invalid_client": _("Slice refused this site's client credentials"),
    "unauthorized_client": _("Slice does not allow this site's client to renew"),
    "invalid_request": _("Slice refused the request as malformed"),
    "invalid_scope": _("Slice refused the requested access"),
    "unsupported_grant_type": _("Slice refused the kind of request"),
    "transient": _("Slice was not available"),
    "temporarily_unavailable": _("Slice was temporarily unavailable"),
    "server_error": _("Slice had an internal error"),
    "connect_error": _("Slice could not be reached"),
    "connection_error": _("the connection to Slice broke"),
    "timeout": _("Slice did not answer in time"),
    "tls_error": _("the secure connection to Slice failed"),
    "decode_error": _("Slice's answer could not be decoded"),
    "lock_timeout": _("another renewal held the link for too long"),
    "response_lost": _("Slice's answer was lost"),
    "response_too_large": _("Slice's answer was too large"),
    "invalid_response": _("Slice's answer was not a valid token response"),
    "not_json": _("Slice's answer was not a valid token response"),
    "malformed_json": _("Slice's answer was not a valid token response"),
    "no_token": _("Slice's answer was not a valid token response"),
    "bad_token_type": _("Slice's answer was not a valid token response"),
    "bad_expiry": _("Slice's answer was not a valid token response"),
    "bad_refresh_token": _("Slice's answer was not a valid token response"),
    "no_refresh_token": _("Slice's answer was not a valid token response"),
    "redirect": _("Slice redirected the request"),
}


def describe_error(code: str) -> str:
    """A short sentence for an error code (``"http_503"`` -> "Slice answered with HTTP 503")."""
    if not code:
        return ""
    if code in ERROR_WORDS:
        return str(ERROR_WORDS[code])
    if code.startswith("http_") and code[5:].isdigit():
        return gettext("Slice answered with HTTP %(status)s") % {"status": code[5:]}
    return gettext("Slice gave an unexpected answer")


def relative(value: datetime | None, now: datetime | None = None) -> str:
    """``"in 3 days"``, ``"2 hours ago"`` (largest unit only), ``"just now"``, ``""`` for None."""
    if value is None:
        return ""
    now = now or timezone.now()
    if abs((value - now).total_seconds()) < 60:
        return gettext("just now")
    if value > now:
        return gettext("in %(time)s") % {"time": timeuntil(value, now, depth=1)}
    return gettext("%(time)s ago") % {"time": timesince(value, now, depth=1)}


def _time(value: datetime | None, words: str) -> SafeString:
    exact = date_format(timezone.localtime(value), "DATETIME_FORMAT") if value else ""
    return format_html('<span title="{}">{}</span>', exact, words)


@admin.display(description=_("Status"), ordering="status")
def link_status(credential: SliceCredential) -> SafeString:
    """Show "Active", or "Needs re-link" with the reason under it."""
    label = capfirst(credential.get_status_display())
    if not credential.status_reason:
        return format_html("{}", label)
    return format_html(
        '{}<br><span class="quiet">{}</span>',
        label,
        capfirst(credential.get_status_reason_display()),
    )


def _expiry(value: datetime) -> SafeString:
    if value > timezone.now():
        return _time(value, relative(value))
    return _time(value, gettext("expired %(when)s") % {"when": relative(value)})


@admin.display(description=_("Renewed"), ordering="last_renewed_at")
def renewed(credential: SliceCredential) -> SafeString:
    """When the link was last renewed, and under it when it was made, in words."""
    if credential.last_renewed_at is None:
        last = format_html("{}", gettext("never"))
    else:
        last = _time(credential.last_renewed_at, relative(credential.last_renewed_at))
    made = gettext("linked %(when)s") % {"when": relative(credential.linked_at)}
    return format_html(
        '{}<br><span class="quiet">{}</span>', last, _time(credential.linked_at, made)
    )


@admin.display(description=_("Link expires"), ordering="refresh_token_expires_at")
def expires(credential: SliceCredential) -> SafeString:
    """When the refresh token (so the link, unless renewed) expires, in words."""
    return _expiry(credential.refresh_token_expires_at)


@admin.display(description=_("Failures"), ordering="failure_count")
def failures(credential: SliceCredential) -> SafeString:
    """How many renewals failed in a row, and the last one's cause in words."""
    if not credential.failure_count:
        return format_html("{}", gettext("none"))
    cause = describe_error(credential.last_error_code)
    if not cause:
        return format_html("{}", credential.failure_count)
    if credential.last_error_at is None:
        last = gettext("last: %(cause)s") % {"cause": cause}
    else:
        last = gettext("last: %(cause)s, %(when)s") % {
            "cause": cause,
            "when": relative(credential.last_error_at),
        }
    return format_html('{}<br><span class="quiet">{}</span>', credential.failure_count, last)
