"""System checks (``manage.py check``), ids ``slice_connect.E00x`` / ``W00x``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from .conf import DEFAULTS, app_settings

E001_MSG = "SLICE_CONNECT['CLIENT_ID'] or ['CLIENT_SECRET'] is not set."
E001_HINT = "Put the client id and secret Slice issued you in settings.SLICE_CONNECT."
E002_MSG = "A Slice endpoint is not an https URL: {key}."
E002_HINT = "Use https for every Slice URL; plain http is allowed only with DEBUG=True."
E003_MSG = "FERNET_KEYS is not set, so tokens are encrypted with SECRET_KEY."
E003_HINT = "Set FERNET_KEYS to a list of secrets; rotating SECRET_KEY would lose every link."
E004_MSG = "settings.SLICE_CONNECT is invalid."
E004_HINT = "{error} See the Configuration section of django-slice-connect's README."
W001_MSG = "SLICE_CONNECT['REDIRECT_URI'] is not set; it is built from the request's host."
W001_HINT = "Set REDIRECT_URI to the exact https callback URL registered at Slice."

URL_KEYS = ("AUTHORIZE_URL", "TOKEN_URL", "REVOKE_URL", "API_BASE_URL", "REDIRECT_URI")


@checks.register(checks.Tags.security)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Client credentials present, every endpoint https outside DEBUG."""
    try:
        configured = {key: app_settings.get(key) for key in DEFAULTS}
        app_settings.HTTP_TIMEOUT  # noqa: B018  (validates the value)
        app_settings.STATE_TTL  # noqa: B018
        app_settings.RENEW_WITHIN  # noqa: B018
    except ImproperlyConfigured as exc:
        return [checks.Error(E004_MSG, hint=E004_HINT.format(error=exc), id="slice_connect.E004")]
    errors: list[checks.CheckMessage] = []
    if not configured["CLIENT_ID"] or not configured["CLIENT_SECRET"]:
        errors.append(checks.Error(E001_MSG, hint=E001_HINT, id="slice_connect.E001"))
    if not settings.DEBUG:
        for key in URL_KEYS:
            value = configured[key]
            if value and urlsplit(str(value)).scheme != "https":
                errors.append(
                    checks.Error(E002_MSG.format(key=key), hint=E002_HINT, id="slice_connect.E002")
                )
        if not configured["REDIRECT_URI"]:
            errors.append(checks.Warning(W001_MSG, hint=W001_HINT, id="slice_connect.W001"))
    return errors


@checks.register(checks.Tags.security)
def check_fernet_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Tokens must be keyed on FERNET_KEYS, not SECRET_KEY."""
    if getattr(settings, "FERNET_KEYS", None):
        return []
    if settings.DEBUG:
        return [checks.Warning(E003_MSG, hint=E003_HINT, id="slice_connect.W003")]
    return [checks.Error(E003_MSG, hint=E003_HINT, id="slice_connect.E003")]
