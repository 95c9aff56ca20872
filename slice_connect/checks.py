"""System checks (``manage.py check``), ids ``slice_connect.E0xx`` / ``W0xx``.

Every problem is reported, not only the first. The fatal ones (:data:`FATAL_IDS`) also stop
every other kind of process at start-up (see :mod:`slice_connect.apps`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from . import fields
from .conf import DEFAULTS, REQUIRED, SETTING_NAME, AppSettings
from .oauth import DEFAULT_EXPIRES_IN

E001_MSG = "SLICE_CONNECT['CLIENT_ID'] or ['CLIENT_SECRET'] is not set."
E001_HINT = "Put the client id and secret Slice issued you in settings.SLICE_CONNECT."
E002_MSG = "A Slice endpoint is not an https URL: {key}."
E002_HINT = "Use https for every Slice URL; plain http is allowed only with DEBUG=True."
E003_MSG = "FERNET_KEYS is not set, so tokens are encrypted with SECRET_KEY."
E003_HINT = "Set FERNET_KEYS to a list of secrets; rotating SECRET_KEY would lose every link."
E004_MSG = "settings.SLICE_CONNECT is invalid."
E004_HINT = "{error} See the settings reference: docs/reference/settings.rst."
E005_MSG = "FERNET_KEYS must be a list or tuple of strings, not {type}."
E005_ENTRY_MSG = "FERNET_KEYS[{index}] is not a string."
E005_HINT = "Write FERNET_KEYS = [key, ...]; a plain string is used one character per key."
E006_MSG = "FERNET_KEYS[{index}] is empty, None or blank."
E006_HINT = "Give every FERNET_KEYS entry a long random secret, or remove the entry."
E007_MSG = "FERNET_KEYS[{index}] is SECRET_KEY or one of SECRET_KEY_FALLBACKS."
E007_HINT = "Give FERNET_KEYS secrets of their own: a SECRET_KEY leak must not unlock tokens."
E008_MSG = "FERNET_KEYS[{index}] is too short to be a secret."
E008_HINT = "Use at least 32 random characters, e.g. secrets.token_urlsafe(32)."
E008_RAW_MSG = "FERNET_KEYS[{index}] is not a Fernet key (FERNET_USE_HKDF is False)."
E008_RAW_HINT = "Use a key from Fernet.generate_key(), or set FERNET_USE_HKDF = True."
E009_MSG = "SLICE_CONNECT['LOCK_TIMEOUT'] must be above 0 (0 waits for ever)."
E009_HINT = "Set it above twice connect + read of HTTP_TIMEOUT (default 30)."
E010_MSG = "SLICE_CONNECT['LOCK_TIMEOUT'] is not above 2 x HTTP_TIMEOUT ({budget:g} s)."
E010_HINT = "A renewal holds its row lock up to twice connect + read; outwait it."
E011_MSG = "SLICE_CONNECT['ACCESS_TOKEN_LEEWAY'] is not below the access-token lifetime."
E011_HINT = "Slice access tokens live {lifetime} s; keep the leeway to minutes (default 120)."
E012_MSG = "SLICE_CONNECT['RENEW_WITHIN'] is not below REFRESH_TOKEN_LIFETIME."
E012_HINT = "Renew well before refresh tokens expire, e.g. at half their lifetime (7 days)."
E013_MSG = "SLICE_CONNECT['{key}'] is blank (only whitespace)."
E013_HINT = "Copy the client id and secret exactly as Slice issued them."
W001_MSG = "SLICE_CONNECT['REDIRECT_URI'] is not set; it is built from the request's host."
W001_HINT = "Set REDIRECT_URI to the exact https callback URL registered at Slice."
W004_MSG = "SQLite database '{alias}' has no OPTIONS transaction_mode 'IMMEDIATE'."
W004_HINT = "Add 'OPTIONS': {'transaction_mode': 'IMMEDIATE'} to that database."

URL_KEYS = ("AUTHORIZE_URL", "TOKEN_URL", "REVOKE_URL", "API_BASE_URL", "REDIRECT_URI")

#: Slice's documented access-token lifetime, in seconds.
ACCESS_TOKEN_LIFETIME = DEFAULT_EXPIRES_IN

#: Errors that stop WSGI, ASGI and Celery processes at start-up, not only ``manage.py``.
FATAL_IDS = frozenset(
    f"slice_connect.{code}"
    for code in ("E001", "E003", "E004", "E005", "E006", "E007", "E008", "E013")
)


class _Configured(AppSettings):
    """``app_settings`` over a given dict, so that each key is validated on its own."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def _user_settings(self) -> dict[str, Any]:
        return self._values


def _e004(error: str) -> checks.CheckMessage:
    return checks.Error(E004_MSG, hint=E004_HINT.format(error=error), id="slice_connect.E004")


def _read_settings() -> tuple[_Configured | None, dict[str, Any], list[checks.CheckMessage]]:
    """The setting as far as it can be read, its valid typed values, and one E004 per fault."""
    value = getattr(settings, SETTING_NAME, {})
    if not isinstance(value, dict):
        return None, {}, [_e004(f"settings.{SETTING_NAME} must be a dict.")]
    errors: list[checks.CheckMessage] = []
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        errors.append(_e004(f"Unknown key(s) in settings.{SETTING_NAME}: {', '.join(unknown)}."))
    config = _Configured({k: v for k, v in value.items() if k in DEFAULTS})
    typed: dict[str, Any] = {}
    for key in DEFAULTS:
        if key in REQUIRED:
            continue  # E001 / E013; a client secret never goes into a message
        try:
            typed[key] = getattr(config, key)
        except ImproperlyConfigured as exc:
            errors.append(_e004(str(exc)))
        except (TypeError, ValueError, OverflowError):
            errors.append(_e004(f"{SETTING_NAME}['{key}'] has a value of the wrong type."))
    return config, typed, errors


def _client_errors(config: _Configured) -> list[checks.CheckMessage]:
    values = [config.get(key) for key in REQUIRED]
    if not all(values):
        return [checks.Error(E001_MSG, hint=E001_HINT, id="slice_connect.E001")]
    return [
        checks.Error(E013_MSG.format(key=key), hint=E013_HINT, id="slice_connect.E013")
        for key, value in zip(REQUIRED, values, strict=True)
        if isinstance(value, str) and not value.strip()
    ]


def _timing_errors(typed: dict[str, Any]) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    lock = typed.get("LOCK_TIMEOUT")
    if lock is not None:
        if lock <= timedelta(0):
            errors.append(checks.Error(E009_MSG, hint=E009_HINT, id="slice_connect.E009"))
        elif "HTTP_TIMEOUT" in typed:
            budget = 2 * sum(typed["HTTP_TIMEOUT"])
            if lock.total_seconds() <= budget:
                message = E010_MSG.format(budget=budget)
                errors.append(checks.Error(message, hint=E010_HINT, id="slice_connect.E010"))
    leeway = typed.get("ACCESS_TOKEN_LEEWAY")
    if leeway is not None and leeway >= timedelta(seconds=ACCESS_TOKEN_LIFETIME):
        hint = E011_HINT.format(lifetime=ACCESS_TOKEN_LIFETIME)
        errors.append(checks.Error(E011_MSG, hint=hint, id="slice_connect.E011"))
    within, lifetime = typed.get("RENEW_WITHIN"), typed.get("REFRESH_TOKEN_LIFETIME")
    if within is not None and lifetime is not None and within >= lifetime:
        errors.append(checks.Error(E012_MSG, hint=E012_HINT, id="slice_connect.E012"))
    return errors


@checks.register(checks.Tags.security)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Client credentials, https endpoints outside DEBUG, consistent durations."""
    config, typed, errors = _read_settings()
    if config is None:
        return errors
    errors.extend(_client_errors(config))
    if not settings.DEBUG:
        for key in URL_KEYS:
            value = config.get(key)
            if value and urlsplit(str(value)).scheme != "https":
                errors.append(
                    checks.Error(E002_MSG.format(key=key), hint=E002_HINT, id="slice_connect.E002")
                )
        if not config.get("REDIRECT_URI"):
            errors.append(checks.Warning(W001_MSG, hint=W001_HINT, id="slice_connect.W001"))
    errors.extend(_timing_errors(typed))
    return errors


@checks.register(checks.Tags.security)
def check_fernet_keys(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Tokens must be keyed on FERNET_KEYS, not SECRET_KEY, and every key a real secret."""
    keys = getattr(settings, "FERNET_KEYS", None)
    if not keys:
        if settings.DEBUG:
            return [checks.Warning(E003_MSG, hint=E003_HINT, id="slice_connect.W003")]
        return [checks.Error(E003_MSG, hint=E003_HINT, id="slice_connect.E003")]
    hkdf_on = fields.use_hkdf()
    errors: list[checks.CheckMessage] = []
    for kind, index in fields.key_problems(keys):
        if kind == "type":
            msg = (
                E005_MSG.format(type=type(keys).__name__)
                if index is None
                else E005_ENTRY_MSG.format(index=index)
            )
            errors.append(checks.Error(msg, hint=E005_HINT, id="slice_connect.E005"))
        elif kind == "blank":
            msg = E006_MSG.format(index=index)
            errors.append(checks.Error(msg, hint=E006_HINT, id="slice_connect.E006"))
        elif kind == "secret_key":
            msg = E007_MSG.format(index=index)
            errors.append(checks.Error(msg, hint=E007_HINT, id="slice_connect.E007"))
        else:
            msg, hint = (E008_MSG, E008_HINT) if hkdf_on else (E008_RAW_MSG, E008_RAW_HINT)
            errors.append(checks.Error(msg.format(index=index), hint=hint, id="slice_connect.E008"))
    return errors


@checks.register(checks.Tags.security)
def check_sqlite_transaction_mode(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """SQLite must take the write lock when a renewal's transaction starts.

    Only the database credentials are written to (``router.db_for_write``) is checked.
    """
    from django.db import router

    from .models import SliceCredential

    alias = router.db_for_write(SliceCredential) or "default"
    config = settings.DATABASES.get(alias) or {}
    if "sqlite3" not in str(config.get("ENGINE", "")):
        return []
    mode = str((config.get("OPTIONS") or {}).get("transaction_mode") or "").upper()
    if mode == "IMMEDIATE":
        return []
    return [checks.Warning(W004_MSG.format(alias=alias), hint=W004_HINT, id="slice_connect.W004")]


def fatal_problems() -> list[checks.CheckMessage]:
    """The check errors that no process may start with (:data:`FATAL_IDS`)."""
    found = [*check_settings(), *check_fernet_keys()]
    return [message for message in found if message.id in FATAL_IDS]
