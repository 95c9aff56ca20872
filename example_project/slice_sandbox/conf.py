"""Settings of the Slice sandbox.

A project configures the sandbox with a ``SLICE_SANDBOX`` dict and builds the matching
django-oauth-toolkit settings from the same values::

    from example_project.slice_sandbox.conf import oauth2_provider_settings

    SLICE_SANDBOX = {"ACCESS_TOKEN_SECONDS": 60}  # e.g. compress the clock for a demo
    OAUTH2_PROVIDER = oauth2_provider_settings(**SLICE_SANDBOX)

The sandbox's own code reads each value live (so ``override_settings`` works in tests)
in this order: an explicit ``SLICE_SANDBOX`` key, then the matching ``OAUTH2_PROVIDER``
key, then the default below. ``GRACE_SECONDS`` is the exception: django-oauth-toolkit
enforces it itself, from ``OAUTH2_PROVIDER["REFRESH_TOKEN_GRACE_PERIOD_SECONDS"]`` only.

This module must stay importable from a settings module, so it imports nothing that
needs configured settings or loaded apps.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.conf import settings

#: Values that mimic Slice; every key may be overridden in ``SLICE_SANDBOX``.
DEFAULTS: dict[str, Any] = {
    "ACCESS_TOKEN_SECONDS": 3600,
    "REFRESH_TOKEN_SECONDS": 14 * 24 * 3600,
    "CODE_SECONDS": 60,
    "GRACE_SECONDS": 0,
    "PKCE_REQUIRED": True,
    "TOKEN_DELAY_SECONDS": 0,
    # "", "django", "gzip" or "deflate": see slice_sandbox.middleware (tests switch it live).
    "COMPRESS": "",
}

#: ``SLICE_SANDBOX`` key -> the ``OAUTH2_PROVIDER`` key django-oauth-toolkit reads.
DOT_SETTING_NAMES: dict[str, str] = {
    "ACCESS_TOKEN_SECONDS": "ACCESS_TOKEN_EXPIRE_SECONDS",
    "REFRESH_TOKEN_SECONDS": "REFRESH_TOKEN_EXPIRE_SECONDS",
    "CODE_SECONDS": "AUTHORIZATION_CODE_EXPIRE_SECONDS",
    "GRACE_SECONDS": "REFRESH_TOKEN_GRACE_PERIOD_SECONDS",
    "PKCE_REQUIRED": "PKCE_REQUIRED",
}

VALIDATOR_CLASS = "example_project.slice_sandbox.validators.SandboxOAuth2Validator"

SCOPES: dict[str, str] = {"read": "Read your purchases, shipments and mailboxes"}


def oauth2_provider_settings(
    extra: Mapping[str, Any] | None = None, **overrides: Any
) -> dict[str, Any]:
    """Build the ``OAUTH2_PROVIDER`` setting that makes django-oauth-toolkit act like Slice.

    ``overrides`` take ``SLICE_SANDBOX`` keys (``ACCESS_TOKEN_SECONDS=60``, ...); an
    unknown key raises ``TypeError`` so a typo cannot silently keep a default.
    ``extra`` holds raw ``OAUTH2_PROVIDER`` keys, applied last.
    """
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"Unknown SLICE_SANDBOX setting(s): {', '.join(unknown)}")
    values = {**DEFAULTS, **overrides}
    provider: dict[str, Any] = {
        "ACCESS_TOKEN_EXPIRE_SECONDS": values["ACCESS_TOKEN_SECONDS"],
        "AUTHORIZATION_CODE_EXPIRE_SECONDS": values["CODE_SECONDS"],
        "REFRESH_TOKEN_EXPIRE_SECONDS": values["REFRESH_TOKEN_SECONDS"],
        "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": values["GRACE_SECONDS"],
        "ROTATE_REFRESH_TOKEN": True,
        "PKCE_REQUIRED": values["PKCE_REQUIRED"],
        "OAUTH2_VALIDATOR_CLASS": VALIDATOR_CLASS,
        # http too: live_server tests and the local demo have no TLS.
        "ALLOWED_REDIRECT_URI_SCHEMES": ["http", "https"],
        "SCOPES": dict(SCOPES),
        "DEFAULT_SCOPES": ["__all__"],
        # Slice shows its consent page on every authorization.
        "REQUEST_APPROVAL_PROMPT": "force",
        # Slice is auth-code only and reads tokens from the Authorization header only.
        "COMPLIANT_BCP_RFC9700_IMPLICIT_GRANT": True,
        "COMPLIANT_BCP_RFC9700_PASSWORD_GRANT": True,
        "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
        "COMPLIANT_BCP_RFC9700_ACCESS_TOKEN_TRANSPORT": True,
    }
    if extra:
        provider.update(extra)
    return provider


def sandbox_setting(name: str) -> Any:
    """Return the live value of one sandbox setting (see the module docstring)."""
    if name not in DEFAULTS:
        raise KeyError(f"Unknown SLICE_SANDBOX setting: {name}")
    configured: Mapping[str, Any] = getattr(settings, "SLICE_SANDBOX", None) or {}
    if name in configured:
        return configured[name]
    dot_name = DOT_SETTING_NAMES.get(name)
    provider: Mapping[str, Any] = getattr(settings, "OAUTH2_PROVIDER", None) or {}
    if dot_name is not None and dot_name in provider:
        return provider[dot_name]
    return DEFAULTS[name]


def sandbox_seconds(name: str) -> float:
    """A duration setting in seconds; accepts numbers or ``timedelta`` like DOT does."""
    value = sandbox_setting(name)
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def refresh_token_lifetime() -> timedelta | None:
    """Absolute refresh token lifetime, or ``None`` when refresh tokens never age out."""
    seconds = sandbox_seconds("REFRESH_TOKEN_SECONDS")
    return timedelta(seconds=seconds) if seconds > 0 else None


def access_token_expires_in(request: Any = None) -> int:
    """Access token lifetime in whole seconds; oauthlib calls it for every token issued."""
    return int(sandbox_seconds("ACCESS_TOKEN_SECONDS"))
