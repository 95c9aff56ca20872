"""``slice_connect.conf``: defaults, live overrides and clear configuration errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from slice_connect.conf import DEFAULTS, AppSettings, app_settings

CREDENTIALS = {"CLIENT_ID": "id-1", "CLIENT_SECRET": "secret-1"}

TIMEDELTA_KEYS = (
    "STATE_TTL",
    "ACCESS_TOKEN_LEEWAY",
    "REFRESH_TOKEN_LIFETIME",
    "RENEW_WITHIN",
    "LOCK_TIMEOUT",
    "RENEW_SPREAD",
    "RENEW_RETRY_BACKOFF",
    "RENEW_RETRY_BACKOFF_MAX",
)

#: What each property returns when only the client credentials are configured.
EXPECTED_DEFAULTS: dict[str, Any] = {
    "CLIENT_ID": "id-1",
    "CLIENT_SECRET": "secret-1",
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
    "STATE_TTL": timedelta(minutes=10),
    "MAX_PENDING_STATES": 10,
    "ACCESS_TOKEN_LEEWAY": timedelta(seconds=120),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=14),
    "MAX_EXPIRES_IN": 366 * 24 * 3600,
    "RENEW_WITHIN": timedelta(days=7),
    "LOCK_TIMEOUT": timedelta(seconds=30),
    "REVOKE_ON_UNLINK": True,
    "RENEW_BATCH_SIZE": 500,
    "RENEW_RATE_LIMIT": 10.0,
    "RENEW_SPREAD": timedelta(minutes=30),
    "RENEW_MAX_RETRIES": 5,
    "RENEW_RETRY_BACKOFF": timedelta(seconds=60),
    "RENEW_RETRY_BACKOFF_MAX": timedelta(minutes=30),
}


def test_expected_defaults_cover_every_key() -> None:
    assert set(EXPECTED_DEFAULTS) == set(DEFAULTS)


@pytest.mark.parametrize("key", sorted(EXPECTED_DEFAULTS))
def test_default_value(key: str) -> None:
    with override_settings(SLICE_CONNECT=dict(CREDENTIALS)):
        value = getattr(app_settings, key)
    assert value == EXPECTED_DEFAULTS[key]
    assert type(value) is type(EXPECTED_DEFAULTS[key])


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_key_has_a_documented_property(key: str) -> None:
    prop = getattr(AppSettings, key)
    assert isinstance(prop, property)
    assert prop.__doc__ and prop.__doc__.strip()


def test_setting_absent_uses_defaults_and_requires_credentials(settings: Any) -> None:
    del settings.SLICE_CONNECT
    assert app_settings.TOKEN_URL == "https://api.slice.com/oauth/token"
    with pytest.raises(ImproperlyConfigured):
        app_settings.CLIENT_ID  # noqa: B018


def test_overrides_are_read_live() -> None:
    base = app_settings.STATE_TTL
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "STATE_TTL": 5}):
        assert app_settings.STATE_TTL == timedelta(seconds=5)
        with override_settings(SLICE_CONNECT={**CREDENTIALS, "STATE_TTL": 7}):
            assert app_settings.STATE_TTL == timedelta(seconds=7)
        assert app_settings.STATE_TTL == timedelta(seconds=5)
    assert app_settings.STATE_TTL == base


def test_settings_fixture_change_is_seen_at_once(settings: Any) -> None:
    settings.SLICE_CONNECT = {**CREDENTIALS, "TOKEN_URL": "https://one.example/token"}
    assert app_settings.TOKEN_URL == "https://one.example/token"
    settings.SLICE_CONNECT = {**CREDENTIALS, "TOKEN_URL": "https://two.example/token"}
    assert app_settings.TOKEN_URL == "https://two.example/token"


def test_unknown_key_is_named() -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "TOKEN_ULR": "https://x"}):
        with pytest.raises(ImproperlyConfigured) as excinfo:
            app_settings.TOKEN_URL  # noqa: B018
        # Every property fails, not only the misspelt one.
        with pytest.raises(ImproperlyConfigured):
            app_settings.CLIENT_ID  # noqa: B018
    message = str(excinfo.value)
    assert "TOKEN_ULR" in message
    assert "SLICE_CONNECT" in message


def test_several_unknown_keys_are_all_named() -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "ZETA": 1, "ALPHA": 2}):
        with pytest.raises(ImproperlyConfigured) as excinfo:
            app_settings.get("USE_PKCE")
    assert "ALPHA" in str(excinfo.value) and "ZETA" in str(excinfo.value)


def test_setting_must_be_a_dict() -> None:
    with override_settings(SLICE_CONNECT=[("CLIENT_ID", "x")]):
        with pytest.raises(ImproperlyConfigured, match="SLICE_CONNECT must be a dict"):
            app_settings.TOKEN_URL  # noqa: B018


def test_get_of_unknown_key_raises_key_error() -> None:
    with pytest.raises(KeyError):
        app_settings.get("NOT_A_KEY")


@pytest.mark.parametrize("key", ["CLIENT_ID", "CLIENT_SECRET"])
@pytest.mark.parametrize("value", [None, ""])
def test_missing_credential_names_key_and_dict(key: str, value: str | None) -> None:
    config: dict[str, Any] = dict(CREDENTIALS)
    if value is None:
        del config[key]
    else:
        config[key] = value
    with override_settings(SLICE_CONNECT=config):
        with pytest.raises(ImproperlyConfigured) as excinfo:
            getattr(app_settings, key)
    message = str(excinfo.value)
    assert f"'{key}'" in message
    assert "settings.SLICE_CONNECT" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, (5.0, 5.0)),
        (2.5, (2.5, 2.5)),
        ((1, 2), (1.0, 2.0)),
        ([3.05, 27], (3.05, 27.0)),
        ((0.5, 0.25), (0.5, 0.25)),
    ],
)
def test_http_timeout_forms(value: Any, expected: tuple[float, float]) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "HTTP_TIMEOUT": value}):
        result = app_settings.HTTP_TIMEOUT
    assert result == expected
    assert all(type(part) is float for part in result)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        "abc",
        "10",  # two characters would unpack into (1.0, 0.0)
        "55",
        b"10",
        (1, 2, 3),
        (1,),
        (None, 10),
        (10, None),
        ("a", "b"),
        0,
        -1,
        (0, 10),
        (10, 0),
        (3, -1),
        float("nan"),
        (float("inf"), 10),
    ],
    ids=repr,
)
def test_http_timeout_invalid_values(value: Any) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "HTTP_TIMEOUT": value}):
        with pytest.raises(ImproperlyConfigured, match="HTTP_TIMEOUT"):
            app_settings.HTTP_TIMEOUT  # noqa: B018


@pytest.mark.parametrize("key", TIMEDELTA_KEYS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, timedelta(seconds=30)),
        (1.5, timedelta(seconds=1.5)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_durations_accept_seconds_or_timedelta(key: str, value: Any, expected: timedelta) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, key: value}):
        assert getattr(app_settings, key) == expected


@pytest.mark.parametrize("key", TIMEDELTA_KEYS)
@pytest.mark.parametrize("value", ["600", True, None, [600]], ids=repr)
def test_durations_reject_other_types(key: str, value: Any) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, key: value}):
        with pytest.raises(ImproperlyConfigured) as excinfo:
            getattr(app_settings, key)
    assert f"'{key}'" in str(excinfo.value)


@pytest.mark.parametrize("key", TIMEDELTA_KEYS)
@pytest.mark.parametrize("value", [-1, -0.5, timedelta(seconds=-1)], ids=repr)
def test_durations_reject_negative_values(key: str, value: Any) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, key: value}):
        with pytest.raises(ImproperlyConfigured, match="must not be negative") as excinfo:
            getattr(app_settings, key)
    assert f"'{key}'" in str(excinfo.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://slice.test/api/v1", "https://slice.test/api/v1/"),
        ("https://slice.test/api/v1/", "https://slice.test/api/v1/"),
        ("https://slice.test", "https://slice.test/"),
    ],
)
def test_api_base_url_always_ends_with_a_slash(value: str, expected: str) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "API_BASE_URL": value}):
        assert app_settings.API_BASE_URL == expected


@pytest.mark.parametrize("key", ["REVOKE_URL", "ISSUER", "REDIRECT_URI"])
@pytest.mark.parametrize("value", [None, ""])
def test_optional_urls_empty_means_none(key: str, value: str | None) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, key: value}):
        assert getattr(app_settings, key) is None


@pytest.mark.parametrize("key", ["USE_PKCE", "REVOKE_ON_UNLINK"])
def test_flags_can_be_turned_off(key: str) -> None:
    with override_settings(SLICE_CONNECT={**CREDENTIALS, key: False}):
        assert getattr(app_settings, key) is False


def test_test_settings_are_what_the_suite_assumes() -> None:
    assert app_settings.TOKEN_URL == "https://slice.test/oauth/token"
    assert app_settings.CLIENT_ID == "test-client-id"
