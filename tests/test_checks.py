"""System checks: exact messages from ``run_checks()`` for each misconfiguration."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks
from django.core.checks import CheckMessage, run_checks

from slice_connect import checks as sc_checks

GOOD: dict[str, Any] = {
    "CLIENT_ID": "client-id",
    "CLIENT_SECRET": "client-secret",
    "AUTHORIZE_URL": "https://slice.test/oauth/authorize",
    "TOKEN_URL": "https://slice.test/oauth/token",
    "REVOKE_URL": "https://slice.test/oauth/revoke",
    "API_BASE_URL": "https://slice.test/api/v1/",
    "REDIRECT_URI": "https://app.test/slice/callback/",
}

E001 = checks.Error(
    "SLICE_CONNECT['CLIENT_ID'] or ['CLIENT_SECRET'] is not set.",
    hint="Put the client id and secret Slice issued you in settings.SLICE_CONNECT.",
    id="slice_connect.E001",
)
E003 = checks.Error(
    "FERNET_KEYS is not set, so tokens are encrypted with SECRET_KEY.",
    hint="Set FERNET_KEYS to a list of secrets; rotating SECRET_KEY would lose every link.",
    id="slice_connect.E003",
)
W003 = checks.Warning(E003.msg, hint=E003.hint, id="slice_connect.W003")
W001 = checks.Warning(
    "SLICE_CONNECT['REDIRECT_URI'] is not set; it is built from the request's host.",
    hint="Set REDIRECT_URI to the exact https callback URL registered at Slice.",
    id="slice_connect.W001",
)


def e002(key: str) -> CheckMessage:
    return checks.Error(
        f"A Slice endpoint is not an https URL: {key}.",
        hint="Use https for every Slice URL; plain http is allowed only with DEBUG=True.",
        id="slice_connect.E002",
    )


def e004(error: str) -> CheckMessage:
    return checks.Error(
        "settings.SLICE_CONNECT is invalid.",
        hint=f"{error} See the Configuration section of django-slice-connect's README.",
        id="slice_connect.E004",
    )


def ours() -> list[CheckMessage]:
    """Our messages, by id (Django runs check functions in no fixed order; sort is stable)."""
    found = [m for m in run_checks() if str(m.id).startswith("slice_connect.")]
    return sorted(found, key=lambda m: str(m.id))


@pytest.fixture
def good(settings: Any) -> Any:
    settings.DEBUG = False
    settings.FERNET_KEYS = ["a-dedicated-key"]
    settings.SLICE_CONNECT = dict(GOOD)
    return settings


def test_good_configuration_has_no_messages(good: Any) -> None:
    assert ours() == []


@pytest.mark.parametrize(
    "change",
    [
        {"CLIENT_ID": None},
        {"CLIENT_SECRET": None},
        {"CLIENT_ID": ""},
        {"CLIENT_SECRET": ""},
        {"CLIENT_ID": None, "CLIENT_SECRET": None},
    ],
    ids=repr,
)
def test_e001_missing_client_credentials(good: Any, change: dict[str, Any]) -> None:
    config = {**GOOD, **change}
    for key, value in change.items():
        if value is None:
            del config[key]
    good.SLICE_CONNECT = config
    assert ours() == [E001]


@pytest.mark.parametrize("key", sc_checks.URL_KEYS)
def test_e002_http_endpoint_outside_debug(good: Any, key: str) -> None:
    good.SLICE_CONNECT = {**GOOD, key: GOOD[key].replace("https://", "http://")}
    assert ours() == [e002(key)]


def test_e002_one_error_per_http_endpoint(good: Any) -> None:
    good.SLICE_CONNECT = {
        **GOOD,
        "TOKEN_URL": "http://slice.test/oauth/token",
        "API_BASE_URL": "ftp://slice.test/api/v1/",
    }
    assert ours() == [e002("TOKEN_URL"), e002("API_BASE_URL")]


def test_e002_applies_to_the_defaults_too(good: Any) -> None:
    # Unset URL keys fall back to https defaults, which pass.
    good.SLICE_CONNECT = {
        "CLIENT_ID": "x",
        "CLIENT_SECRET": "y",
        "REDIRECT_URI": "https://app.test/cb/",
    }
    assert ours() == []


def test_no_e002_or_w001_with_debug(good: Any) -> None:
    good.DEBUG = True
    good.SLICE_CONNECT = {
        **{k: v.replace("https://", "http://") for k, v in GOOD.items()},
        "REDIRECT_URI": None,
    }
    assert ours() == []


def test_revoke_url_disabled_is_not_an_error(good: Any) -> None:
    good.SLICE_CONNECT = {**GOOD, "REVOKE_URL": None}
    assert ours() == []


@pytest.mark.parametrize("value", [None, [], ()], ids=repr)
def test_e003_fernet_keys_unset_outside_debug(good: Any, value: Any) -> None:
    if value is None:
        del good.FERNET_KEYS
    else:
        good.FERNET_KEYS = value
    assert ours() == [E003]


def test_w003_fernet_keys_unset_with_debug(good: Any) -> None:
    good.DEBUG = True
    del good.FERNET_KEYS
    assert ours() == [W003]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"TOKEN_ULR": "https://x"}, "Unknown key(s) in settings.SLICE_CONNECT: TOKEN_ULR."),
        (
            {"HTTP_TIMEOUT": "abc"},
            "SLICE_CONNECT['HTTP_TIMEOUT'] must be positive seconds or a (connect, read) "
            "pair of them.",
        ),
        (
            {"STATE_TTL": "600"},
            "SLICE_CONNECT['STATE_TTL'] must be a number of seconds or a timedelta, not str.",
        ),
        (
            {"RENEW_WITHIN": None},
            "SLICE_CONNECT['RENEW_WITHIN'] must be a number of seconds or a timedelta, "
            "not NoneType.",
        ),
    ],
    ids=["unknown-key", "timeout", "ttl", "renew-within"],
)
def test_e004_invalid_settings(good: Any, change: dict[str, Any], error: str) -> None:
    good.SLICE_CONNECT = {**GOOD, **change}
    assert ours() == [e004(error)]


def test_e004_setting_not_a_dict(good: Any) -> None:
    good.SLICE_CONNECT = "client-id:secret"
    assert ours() == [e004("settings.SLICE_CONNECT must be a dict.")]


def test_e004_does_not_hide_the_fernet_check(good: Any) -> None:
    good.SLICE_CONNECT = {**GOOD, "BOGUS": 1}
    del good.FERNET_KEYS
    found = ours()
    assert e004("Unknown key(s) in settings.SLICE_CONNECT: BOGUS.") in found
    assert E003 in found
    assert len(found) == 2


def test_w001_redirect_uri_unset_outside_debug(good: Any) -> None:
    config = dict(GOOD)
    del config["REDIRECT_URI"]
    good.SLICE_CONNECT = config
    assert ours() == [W001]


def test_several_problems_are_all_reported(good: Any) -> None:
    good.SLICE_CONNECT = {"AUTHORIZE_URL": "http://slice.test/oauth/authorize"}
    good.FERNET_KEYS = []
    assert ours() == [E001, e002("AUTHORIZE_URL"), E003, W001]


def test_messages_are_short_and_have_hints() -> None:
    templates = [
        (sc_checks.E001_MSG, sc_checks.E001_HINT),
        (sc_checks.E002_MSG.format(key="API_BASE_URL"), sc_checks.E002_HINT),
        (sc_checks.E003_MSG, sc_checks.E003_HINT),
        (sc_checks.W001_MSG, sc_checks.W001_HINT),
    ]
    for msg, hint in templates:
        assert len(msg) < 80, msg
        assert hint and "\n" not in hint


def test_checks_are_tagged_security(good: Any) -> None:
    del good.FERNET_KEYS
    tagged = [
        m for m in run_checks(tags=[checks.Tags.security]) if m.id.startswith("slice_connect.")
    ]
    assert tagged == [E003]
    assert [m for m in run_checks(tags=["models"]) if m.id.startswith("slice_connect.")] == []
