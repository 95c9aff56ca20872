"""System checks: exact messages from ``run_checks()`` for each misconfiguration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.core import checks
from django.core.checks import CheckMessage, run_checks

from slice_connect import checks as sc_checks
from tests.conftest import BASE_CONFIG

GOOD: dict[str, Any] = {
    **BASE_CONFIG,
    "CLIENT_ID": "client-id",
    "CLIENT_SECRET": "client-secret",
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
        hint=f"{error} See the settings reference: docs/reference/settings.rst.",
        id="slice_connect.E004",
    )


KEY = "a-dedicated-fernet-key-of-32-chars"
assert len(KEY) >= 32


def ours(*, sqlite: bool = False) -> list[CheckMessage]:
    """Our messages, by id (Django runs check functions in no fixed order; sort is stable).

    The SQLite warning (W004) applies to the suite's own in-memory database; it is left out
    unless asked for.
    """
    found = [m for m in run_checks() if str(m.id).startswith("slice_connect.")]
    if not sqlite:
        found = [m for m in found if m.id != "slice_connect.W004"]
    return sorted(found, key=lambda m: str(m.id))


@pytest.fixture
def good(settings: Any) -> Any:
    settings.DEBUG = False
    settings.FERNET_KEYS = [KEY]
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
    filled = {"key": "API_BASE_URL", "index": 10, "type": "str", "budget": 26.1}
    filled.update(alias="default", lifetime=3600)
    names = [name for name in dir(sc_checks) if name.endswith("_MSG")]
    assert len(names) >= 16
    for name in names:
        msg = getattr(sc_checks, name).format(**filled)
        hint = getattr(sc_checks, name.replace("_ENTRY", "").replace("_MSG", "_HINT"))
        assert len(msg) < 80, msg
        if name in ("E004_MSG", "E011_MSG"):  # the only hints with a placeholder
            hint = hint.format(error="", lifetime=3600)
        assert hint and "\n" not in hint and len(hint) <= 80, hint


def test_checks_are_tagged_security(good: Any) -> None:
    del good.FERNET_KEYS
    tagged = [
        m
        for m in run_checks(tags=[checks.Tags.security])
        if m.id.startswith("slice_connect.") and m.id != "slice_connect.W004"
    ]
    assert tagged == [E003]
    assert [m for m in run_checks(tags=["models"]) if m.id.startswith("slice_connect.")] == []


# -- FERNET_KEYS: every entry a real secret of its own (E005-E008) -------------------------


def error(code: str, msg: str, hint: str) -> CheckMessage:
    return checks.Error(msg, hint=hint, id=f"slice_connect.{code}")


def e005(index: int | None = None, type_name: str = "str") -> CheckMessage:
    msg = (
        sc_checks.E005_MSG.format(type=type_name)
        if index is None
        else sc_checks.E005_ENTRY_MSG.format(index=index)
    )
    return error("E005", msg, sc_checks.E005_HINT)


def e006(index: int) -> CheckMessage:
    return error("E006", sc_checks.E006_MSG.format(index=index), sc_checks.E006_HINT)


def e007(index: int) -> CheckMessage:
    return error("E007", sc_checks.E007_MSG.format(index=index), sc_checks.E007_HINT)


def e008(index: int, *, hkdf: bool = True) -> CheckMessage:
    if hkdf:
        return error("E008", sc_checks.E008_MSG.format(index=index), sc_checks.E008_HINT)
    return error("E008", sc_checks.E008_RAW_MSG.format(index=index), sc_checks.E008_RAW_HINT)


def test_fernet_keys_as_a_plain_string_is_an_error(good: Any) -> None:
    """A string would silently become one key per character."""
    good.FERNET_KEYS = KEY
    assert ours() == [e005()]
    assert sc_checks.E005_MSG.format(type="str") == (
        "FERNET_KEYS must be a list or tuple of strings, not str."
    )


@pytest.mark.parametrize(
    ("value", "type_name"), [({KEY}, "set"), (KEY.encode(), "bytes"), ({"k": KEY}, "dict")]
)
def test_fernet_keys_of_another_type_is_an_error(good: Any, value: Any, type_name: str) -> None:
    good.FERNET_KEYS = value
    assert ours() == [e005(type_name=type_name)]


def test_tuple_of_keys_is_fine(good: Any) -> None:
    good.FERNET_KEYS = (KEY, KEY + "-older")
    assert ours() == []


@pytest.mark.parametrize("entry", ["", "   ", None, "\t\n"], ids=repr)
def test_blank_entry_is_an_error(good: Any, entry: Any) -> None:
    good.FERNET_KEYS = [KEY, entry]
    assert ours() == [e006(1)]


@pytest.mark.parametrize("entry", [KEY.encode(), 12345678901234567890123456789012345], ids=repr)
def test_entry_that_is_not_a_string_is_an_error(good: Any, entry: Any) -> None:
    good.FERNET_KEYS = [entry, KEY]
    assert ours() == [e005(0)]


def test_entry_equal_to_secret_key_is_an_error(good: Any) -> None:
    good.SECRET_KEY = "x" * 50
    good.FERNET_KEYS = [KEY, "x" * 50]
    assert ours() == [e007(1)]


def test_entry_equal_to_a_secret_key_fallback_is_an_error(good: Any) -> None:
    good.SECRET_KEY_FALLBACKS = ["an-old-secret-key-that-is-long-enough-1", "y" * 40]
    good.FERNET_KEYS = ["y" * 40]
    assert ours() == [e007(0)]


@pytest.mark.parametrize(("length", "ok"), [(31, False), (32, True), (8, False), (64, True)])
def test_entries_under_32_characters_are_too_short(good: Any, length: int, ok: bool) -> None:
    good.FERNET_KEYS = [KEY, "k" * length]
    assert ours() == ([] if ok else [e008(1)])


def test_without_hkdf_each_entry_must_be_a_fernet_key(good: Any) -> None:
    good.FERNET_USE_HKDF = False
    fernet_key = Fernet.generate_key().decode()
    good.FERNET_KEYS = [fernet_key, KEY + KEY, fernet_key[:-2]]
    assert ours() == [e008(1, hkdf=False), e008(2, hkdf=False)]


def test_every_key_problem_is_reported_and_no_key_is_shown(good: Any) -> None:
    good.SECRET_KEY = "s" * 50
    secret_key_copy, short = "s" * 50, "short-key-value"
    good.FERNET_KEYS = ["", short, secret_key_copy, None, KEY, b"bytes-key"]
    found = ours()
    assert found == [e005(5), e006(0), e006(3), e007(2), e008(1)]
    text = repr(found)
    assert short not in text and secret_key_copy not in text and KEY not in text


# -- timing and values (E009-E013) ------------------------------------------------------------


def e009() -> CheckMessage:
    return error("E009", sc_checks.E009_MSG, sc_checks.E009_HINT)


def e010(budget: float) -> CheckMessage:
    return error("E010", sc_checks.E010_MSG.format(budget=budget), sc_checks.E010_HINT)


E011 = error("E011", sc_checks.E011_MSG, sc_checks.E011_HINT.format(lifetime=3600))
E012 = error("E012", sc_checks.E012_MSG, sc_checks.E012_HINT)


def e013(key: str) -> CheckMessage:
    return error("E013", sc_checks.E013_MSG.format(key=key), sc_checks.E013_HINT)


def configure(good: Any, **values: Any) -> None:
    good.SLICE_CONNECT = {**GOOD, **values}


@pytest.mark.parametrize("value", [0, 0.0, timedelta(0)], ids=repr)
def test_lock_timeout_zero_waits_for_ever(good: Any, value: Any) -> None:
    configure(good, LOCK_TIMEOUT=value)
    assert ours() == [e009()]


@pytest.mark.parametrize(
    ("lock", "http", "problem"),
    [
        (26, (3.05, 10.0), e010(26.1)),  # the default HTTP budget is 2 x 13.05 s
        (26.1, (3.05, 10.0), e010(26.1)),
        (27, (3.05, 10.0), None),
        (30, (5, 20), e010(50)),
        (timedelta(minutes=1), (5, 20), None),
        (10, 5, e010(20)),
        (21, 5, None),
    ],
    ids=str,
)
def test_lock_timeout_must_outwait_a_renewal(
    good: Any, lock: Any, http: Any, problem: CheckMessage | None
) -> None:
    configure(good, LOCK_TIMEOUT=lock, HTTP_TIMEOUT=http)
    assert ours() == ([problem] if problem else [])


def test_default_lock_timeout_passes(good: Any) -> None:
    configure(good)
    assert ours() == []


@pytest.mark.parametrize(
    ("leeway", "ok"),
    [(3600, False), (timedelta(hours=2), False), (3599, True), (timedelta(minutes=5), True)],
    ids=str,
)
def test_access_token_leeway_below_the_token_lifetime(good: Any, leeway: Any, ok: bool) -> None:
    configure(good, ACCESS_TOKEN_LEEWAY=leeway)
    assert ours() == ([] if ok else [E011])


@pytest.mark.parametrize(
    ("within", "lifetime", "ok"),
    [
        (14 * 86400, None, False),  # equal to the default lifetime
        (timedelta(days=15), None, False),
        (timedelta(minutes=10), timedelta(minutes=10), False),
        (timedelta(minutes=5), timedelta(minutes=10), True),  # the demo's compressed clock
        (timedelta(days=13), None, True),
    ],
    ids=str,
)
def test_renew_within_below_the_refresh_lifetime(
    good: Any, within: Any, lifetime: Any, ok: bool
) -> None:
    extra = {"REFRESH_TOKEN_LIFETIME": lifetime} if lifetime is not None else {}
    configure(good, RENEW_WITHIN=within, **extra)
    assert ours() == ([] if ok else [E012])


@pytest.mark.parametrize("key", ["CLIENT_SECRET", "CLIENT_ID"])
@pytest.mark.parametrize("value", [" ", "\t", "  \n "], ids=repr)
def test_blank_client_credentials(good: Any, key: str, value: str) -> None:
    configure(good, **{key: value})
    assert ours() == [e013(key)]


def test_client_secret_never_appears_in_a_message(good: Any) -> None:
    secret = "a-client-secret-with-a-typo"
    configure(good, CLIENT_SECRET=secret, CLIENT_ID=" ", HTTP_TIMEOUT="10")
    found = ours()
    assert [m.id for m in found] == ["slice_connect.E004", "slice_connect.E013"]
    assert secret not in repr(found)


# -- every problem, not only the first -----------------------------------------------------


def test_every_invalid_value_gets_its_own_e004(good: Any) -> None:
    configure(good, HTTP_TIMEOUT="abc", STATE_TTL="600", BOGUS=1, MAX_PENDING_STATES="ten")
    found = ours()
    assert found == [
        e004("Unknown key(s) in settings.SLICE_CONNECT: BOGUS."),
        e004(
            "SLICE_CONNECT['HTTP_TIMEOUT'] must be positive seconds or a (connect, read) "
            "pair of them."
        ),
        e004("SLICE_CONNECT['STATE_TTL'] must be a number of seconds or a timedelta, not str."),
        e004("SLICE_CONNECT['MAX_PENDING_STATES'] has a value of the wrong type."),
    ]


def test_everything_wrong_at_once_is_reported_at_once(good: Any) -> None:
    good.FERNET_KEYS = "one-string-of-keys"
    good.SLICE_CONNECT = {
        "CLIENT_ID": "id",
        "CLIENT_SECRET": "   ",
        "TOKEN_URL": "http://slice.test/oauth/token",
        "LOCK_TIMEOUT": 0,
        "ACCESS_TOKEN_LEEWAY": 7200,
        "RENEW_WITHIN": timedelta(days=20),
        "STATE_TTL": -1,
    }
    found = ours()
    assert [m.id.split(".")[1] for m in found] == [
        "E002",
        "E004",
        "E005",
        "E009",
        "E011",
        "E012",
        "E013",
        "W001",
    ]
    assert e002("TOKEN_URL") in found


# -- SQLite's transaction mode (W004) --------------------------------------------------------


def w004(alias: str) -> CheckMessage:
    return checks.Warning(
        sc_checks.W004_MSG.format(alias=alias), hint=sc_checks.W004_HINT, id="slice_connect.W004"
    )


@pytest.mark.parametrize(
    ("databases", "expected"),
    [
        ({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}}, ["default"]),
        (
            {
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 60},
                },
                "other": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "OPTIONS": {"transaction_mode": "DEFERRED"},
                },
            },
            [],  # "other" holds no credentials
        ),
        (
            {
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "OPTIONS": {"transaction_mode": "DEFERRED"},
                },
                "other": {"ENGINE": "django.db.backends.sqlite3"},
            },
            ["default"],
        ),
        ({"default": {"ENGINE": "django.db.backends.postgresql"}}, []),
        (
            {
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "OPTIONS": {"transaction_mode": "immediate"},
                }
            },
            [],
        ),
    ],
    ids=["no-options", "only-the-credentials-database", "deferred", "postgres", "lower-case"],
)
def test_w004_sqlite_without_immediate_transactions(
    good: Any, monkeypatch: pytest.MonkeyPatch, databases: dict[str, Any], expected: list[str]
) -> None:
    from django.conf import settings as django_settings

    # Not override_settings: that would rebuild the test database's connections.
    monkeypatch.setattr(django_settings, "DATABASES", databases)
    assert ours(sqlite=True) == [w004(alias) for alias in expected]


# -- which errors stop a process at start-up ------------------------------------------------


def test_fatal_problems_are_the_client_and_key_errors(good: Any) -> None:
    assert sc_checks.fatal_problems() == []
    good.FERNET_KEYS = ["short", ""]
    good.SLICE_CONNECT = {**GOOD, "CLIENT_ID": None, "LOCK_TIMEOUT": 0, "TOKEN_URL": "http://x"}
    fatal = sc_checks.fatal_problems()
    assert sorted(m.id for m in fatal) == [
        "slice_connect.E001",
        "slice_connect.E006",
        "slice_connect.E008",
    ]


def test_unset_keys_are_fatal_only_outside_debug(good: Any) -> None:
    del good.FERNET_KEYS
    assert [m.id for m in sc_checks.fatal_problems()] == ["slice_connect.E003"]
    good.DEBUG = True
    assert sc_checks.fatal_problems() == []
