"""Settings for slice_connect, read live from ``settings.SLICE_CONNECT``.

Every key has its default in :data:`DEFAULTS`; code reads settings only through
:data:`app_settings`, whose properties look the value up on each access so that
``override_settings(SLICE_CONNECT=...)`` works without any cache to clear.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

SETTING_NAME = "SLICE_CONNECT"

DEFAULTS: dict[str, Any] = {
    "CLIENT_ID": None,
    "CLIENT_SECRET": None,
    "AUTHORIZE_URL": "https://api.slice.com/oauth/authorize",
    "TOKEN_URL": "https://api.slice.com/oauth/token",
    "REVOKE_URL": "https://api.slice.com/oauth/revoke",
    "API_BASE_URL": "https://api.slice.com/api/v1/",
    "ISSUER": None,
    "REDIRECT_URI": None,
    "USE_PKCE": True,
    "HTTP_TIMEOUT": (3.05, 10.0),
    "API_MAX_RESPONSE_BYTES": 10 * 1024 * 1024,
    "API_MAX_PAGES": 1000,
    "LINK_SUCCESS_URL": "/",
    "STATE_TTL": 600,
    "MAX_PENDING_STATES": 10,
    "ACCESS_TOKEN_LEEWAY": 120,
    "REFRESH_TOKEN_LIFETIME": 14 * 24 * 3600,
    "MAX_EXPIRES_IN": 366 * 24 * 3600,
    "RENEW_WITHIN": 7 * 24 * 3600,
    "LOCK_TIMEOUT": 30,
    "REVOKE_ON_UNLINK": True,
    "RENEW_BATCH_SIZE": 500,
    "RENEW_RATE_LIMIT": 10.0,
    "RENEW_SPREAD": 1800,
    "RENEW_MAX_RETRIES": 5,
    "RENEW_RETRY_BACKOFF": 60,
    "RENEW_RETRY_BACKOFF_MAX": 1800,
}

REQUIRED = ("CLIENT_ID", "CLIENT_SECRET")


def _seconds(value: Any, key: str) -> timedelta:
    """Accept a number of seconds or a ``timedelta``; reject anything else clearly."""
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise ImproperlyConfigured(
            f"{SETTING_NAME}['{key}'] must be a number of seconds or a timedelta, "
            f"not {type(value).__name__}."
        )
    duration = value if isinstance(value, timedelta) else timedelta(seconds=value)
    if duration < timedelta(0):
        raise ImproperlyConfigured(f"{SETTING_NAME}['{key}'] must not be negative.")
    return duration


class AppSettings:
    """Typed, live view of the ``SLICE_CONNECT`` setting."""

    def _user_settings(self) -> dict[str, Any]:
        value = getattr(settings, SETTING_NAME, {})
        if not isinstance(value, dict):
            raise ImproperlyConfigured(f"settings.{SETTING_NAME} must be a dict.")
        unknown = set(value) - set(DEFAULTS)
        if unknown:
            raise ImproperlyConfigured(
                f"Unknown key(s) in settings.{SETTING_NAME}: {', '.join(sorted(unknown))}."
            )
        return value

    def get(self, key: str) -> Any:
        """Return the configured value of ``key``, or its default."""
        if key not in DEFAULTS:
            raise KeyError(key)
        return self._user_settings().get(key, DEFAULTS[key])

    def _required(self, key: str) -> str:
        value = self.get(key)
        if not value:
            raise ImproperlyConfigured(
                f"Set '{key}' in the settings.{SETTING_NAME} dict to use slice_connect."
            )
        return str(value)

    @property
    def CLIENT_ID(self) -> str:
        """OAuth client id issued by Slice (required)."""
        return self._required("CLIENT_ID")

    @property
    def CLIENT_SECRET(self) -> str:
        """OAuth client secret issued by Slice (required; load it from the environment)."""
        return self._required("CLIENT_SECRET")

    @property
    def AUTHORIZE_URL(self) -> str:
        """Slice's authorization endpoint."""
        return str(self.get("AUTHORIZE_URL"))

    @property
    def TOKEN_URL(self) -> str:
        """Slice's token endpoint."""
        return str(self.get("TOKEN_URL"))

    @property
    def REVOKE_URL(self) -> str | None:
        """Slice's revocation endpoint; ``None`` disables revocation."""
        value = self.get("REVOKE_URL")
        return str(value) if value else None

    @property
    def API_BASE_URL(self) -> str:
        """Base of the REST API; always ends with a slash."""
        value = str(self.get("API_BASE_URL"))
        return value if value.endswith("/") else value + "/"

    @property
    def ISSUER(self) -> str | None:
        """Expected ``iss`` on callbacks (RFC 9207); checked only when Slice sends one."""
        value = self.get("ISSUER")
        return str(value) if value else None

    @property
    def REDIRECT_URI(self) -> str | None:
        """Absolute callback URL registered at Slice; ``None`` builds it from the request."""
        value = self.get("REDIRECT_URI")
        return str(value) if value else None

    @property
    def USE_PKCE(self) -> bool:
        """Send a PKCE S256 challenge with every authorization request."""
        return bool(self.get("USE_PKCE"))

    @property
    def HTTP_TIMEOUT(self) -> tuple[float, float]:
        """(connect, read) timeout in seconds for every call to Slice."""
        value = self.get("HTTP_TIMEOUT")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value, value)
        try:
            if isinstance(value, (str, bytes)):
                raise TypeError(value)  # "10" would unpack into (1.0, 0.0)
            connect, read = value
            pair = (float(connect), float(read))
        except (TypeError, ValueError):
            pair = None
        # requests raises a bare ValueError (not a RequestException) for 0, < 0 or NaN.
        if pair is None or not all(math.isfinite(t) and t > 0 for t in pair):
            raise ImproperlyConfigured(
                f"{SETTING_NAME}['HTTP_TIMEOUT'] must be positive seconds or a (connect, read) "
                "pair of them."
            )
        return pair

    @property
    def API_MAX_RESPONSE_BYTES(self) -> int:
        """Largest API answer read (decoded bytes); larger ones raise ResponseTooLarge."""
        return self._positive_int("API_MAX_RESPONSE_BYTES")

    @property
    def API_MAX_PAGES(self) -> int:
        """Most pages ``SliceClient.iter_collection`` fetches before it stops with an error."""
        return self._positive_int("API_MAX_PAGES")

    def _positive_int(self, key: str) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ImproperlyConfigured(f"{SETTING_NAME}['{key}'] must be a positive integer.")
        return value

    @property
    def LINK_SUCCESS_URL(self) -> str:
        """Where a user lands after linking when no valid ``next`` was given (URL or name)."""
        return str(self.get("LINK_SUCCESS_URL"))

    @property
    def STATE_TTL(self) -> timedelta:
        """How long an authorization attempt (state + PKCE verifier) stays valid."""
        return _seconds(self.get("STATE_TTL"), "STATE_TTL")

    @property
    def MAX_PENDING_STATES(self) -> int:
        """Pending attempts kept per session (several tabs); the oldest is dropped."""
        return int(self.get("MAX_PENDING_STATES"))

    @property
    def ACCESS_TOKEN_LEEWAY(self) -> timedelta:
        """Renew an access token this long before it expires (clock skew, request time)."""
        return _seconds(self.get("ACCESS_TOKEN_LEEWAY"), "ACCESS_TOKEN_LEEWAY")

    @property
    def REFRESH_TOKEN_LIFETIME(self) -> timedelta:
        """Refresh-token lifetime assumed when Slice does not state one (14 days)."""
        return _seconds(self.get("REFRESH_TOKEN_LIFETIME"), "REFRESH_TOKEN_LIFETIME")

    @property
    def MAX_EXPIRES_IN(self) -> int:
        """Largest ``expires_in`` accepted from Slice; larger values are refused."""
        return int(self.get("MAX_EXPIRES_IN"))

    @property
    def RENEW_WITHIN(self) -> timedelta:
        """A credential is due for renewal when its refresh token expires within this."""
        return _seconds(self.get("RENEW_WITHIN"), "RENEW_WITHIN")

    @property
    def LOCK_TIMEOUT(self) -> timedelta:
        """Longest wait for a credential's row lock before giving up (transient error)."""
        return _seconds(self.get("LOCK_TIMEOUT"), "LOCK_TIMEOUT")

    @property
    def REVOKE_ON_UNLINK(self) -> bool:
        """Revoke the refresh token at Slice (best effort) when a user unlinks."""
        return bool(self.get("REVOKE_ON_UNLINK"))

    @property
    def RENEW_BATCH_SIZE(self) -> int:
        """Ids selected per query by the renewal sweep."""
        return int(self.get("RENEW_BATCH_SIZE"))

    @property
    def RENEW_RATE_LIMIT(self) -> float:
        """Most renewals the sweep schedules per second (spreads a backlog)."""
        return float(self.get("RENEW_RATE_LIMIT"))

    @property
    def RENEW_SPREAD(self) -> timedelta:
        """One sweep spreads its renewals over this window (at most rate x spread of them)."""
        return _seconds(self.get("RENEW_SPREAD"), "RENEW_SPREAD")

    @property
    def RENEW_MAX_RETRIES(self) -> int:
        """Retries of a transient renewal failure by the Celery task."""
        return int(self.get("RENEW_MAX_RETRIES"))

    @property
    def RENEW_RETRY_BACKOFF(self) -> timedelta:
        """First retry delay of the Celery task; doubles each retry."""
        return _seconds(self.get("RENEW_RETRY_BACKOFF"), "RENEW_RETRY_BACKOFF")

    @property
    def RENEW_RETRY_BACKOFF_MAX(self) -> timedelta:
        """Longest retry delay of the Celery task."""
        return _seconds(self.get("RENEW_RETRY_BACKOFF_MAX"), "RENEW_RETRY_BACKOFF_MAX")


app_settings = AppSettings()
