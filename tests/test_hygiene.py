"""Static and dynamic hygiene: TLS, timeouts, CSPRNG state, and no secrets in logs."""

from __future__ import annotations

import ast
import base64
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import oauthlib.common
import pytest
import responses
from django.test import Client

import slice_connect
from slice_connect import oauth, services, states
from slice_connect.models import SliceCredential
from tests.conftest import BASE_CONFIG, REVOKE_URL, TOKEN_URL

PACKAGE = Path(slice_connect.__file__).parent
SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)
HTTP_VERBS = {"get", "post", "put", "patch", "delete", "head", "options", "request"}
#: Modules allowed to use ``random`` (backoff jitter only, never a secret).
RANDOM_ALLOWED = {"tasks.py"}


# -- the scanner ------------------------------------------------------------------------------


def _receiver_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver_name(node.func)
    return ""


def _is_http_call(call: ast.Call) -> bool:
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in HTTP_VERBS:
        return False
    if (
        isinstance(func.value, ast.Attribute)
        and isinstance(func.value.value, ast.Name)
        and func.value.value.id == "request"
    ):
        return False  # request.session is Django's session, not an HTTP client
    receiver = _receiver_name(func.value).lower()
    return receiver == "requests" or receiver.endswith("session")


def _kwargs_get_timeout(function: ast.AST | None, name: str) -> bool:
    """``name.setdefault("timeout", ...)`` or ``name["timeout"] = ...`` in ``function``."""
    if function is None:
        return False
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setdefault"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "timeout"
        ):
            return True
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == name
                    and isinstance(target.slice, ast.Constant)
                    and target.slice.value == "timeout"
                ):
                    return True
    return False


def scan(source: str, filename: str = "<src>") -> list[str]:
    """Return a line per problem: ``verify=False``, or an HTTP call without a timeout."""
    tree = ast.parse(source, filename)
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent

    def enclosing_function(node: ast.AST) -> ast.AST | None:
        while node in parents:
            node = parents[node]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return node
        return None

    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if (
                keyword.arg == "verify"
                and isinstance(keyword.value, ast.Constant)
                and keyword.value.value in (False, None, 0, "")
            ):
                problems.append(f"{filename}:{node.lineno}: verify={keyword.value.value!r}")
        if not _is_http_call(node):
            continue
        named = {k.arg for k in node.keywords if k.arg}
        if "timeout" in named:
            timeout = next(k.value for k in node.keywords if k.arg == "timeout")
            if isinstance(timeout, ast.Constant) and timeout.value is None:
                problems.append(f"{filename}:{node.lineno}: timeout=None")
            continue
        spread = [k.value for k in node.keywords if k.arg is None]
        if any(
            isinstance(v, ast.Name) and _kwargs_get_timeout(enclosing_function(node), v.id)
            for v in spread
        ):
            continue
        problems.append(f"{filename}:{node.lineno}: HTTP call without timeout=")
    return problems


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("requests.post(url, data=d)", True),
        ("requests.post(url, data=d, timeout=(1, 2))", False),
        ("requests.get(url, timeout=None)", True),
        ("requests.request('GET', url)", True),
        ("requests.get(url, timeout=3, verify=False)", True),
        ("session.request('GET', url)", True),
        ("self.session.request('GET', url, timeout=t)", False),
        ("self.session.get(url)", True),
        ("requests.Session().get(url)", True),
        ("def f(**kw):\n    self.session.request('GET', url, **kw)", True),
        (
            "def f(**kw):\n"
            "    kw.setdefault('timeout', 3)\n"
            "    self.session.request('GET', u, **kw)",
            False,
        ),
        ("def f(**kw):\n    kw['timeout'] = 3\n    session.post(u, **kw)", False),
        ("client.get('/path')", False),  # not an HTTP library call
        ("d.get('key')", False),
        ("request.session.get('key')", False),
        ("Fernet(k).decrypt(v)", False),
    ],
)
def test_scanner_catches_what_it_should(source: str, bad: bool) -> None:
    assert bool(scan(source)) is bad


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_insecure_or_unbounded_http_calls(path: Path) -> None:
    assert scan(path.read_text(), str(path)) == []


def test_every_http_call_is_in_the_one_transport() -> None:
    """docs/threat-model.rst R39: every call to Slice goes through slice_connect/http.py (and
    the scanner does see it there, so it cannot silently match nothing)."""
    modules = {
        str(path.relative_to(PACKAGE))
        for path in SOURCES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and _is_http_call(node)
    }
    assert modules == {"http.py"}


def _imports_random(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name == "random" or a.name.startswith("random.") for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "random":
            return True
    return False


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import random", True),
        ("import os, random as r", True),
        ("from random import choice", True),
        ("import secrets", False),
        ("from secrets import randbelow", False),
    ],
)
def test_random_import_detector(source: str, found: bool) -> None:
    assert _imports_random(ast.parse(source)) is found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_random_module_is_used_only_for_jitter(path: Path) -> None:
    if path.name in RANDOM_ALLOWED and path.parent == PACKAGE:
        return
    assert not _imports_random(ast.parse(path.read_text())), path


def test_new_state_is_unguessable() -> None:
    """Rule R1 (see docs/threat-model.rst): 32 random bytes from the OS, never repeated.

    Seeding Python's ``random`` (which a test, a library or an attacker who learns its state
    can do) changes nothing: the states do not come from it.
    """
    draws = 2000
    drawn = []
    for _ in range(draws):
        random.seed(1234)
        drawn.append(states.new_state())
    assert len(set(drawn)) == draws
    raw = [base64.urlsafe_b64decode(state + "=" * (-len(state) % 4)) for state in drawn]
    assert {len(value) for value in raw} == {states.STATE_BYTES} and states.STATE_BYTES >= 32
    # Every bit position is set in about half of the draws (a counter, a timestamp or a
    # short seed would leave many positions fixed).
    for position in range(states.STATE_BYTES * 8):
        ones = sum(value[position // 8] >> (position % 8) & 1 for value in raw)
        assert 0.4 * draws < ones < 0.6 * draws, position


def test_oauthlib_never_generates_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests-oauthlib would make a state with its own generator if we passed none."""

    def refuse(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("oauthlib generated a state")

    monkeypatch.setattr(oauthlib.common, "generate_token", refuse)
    state = states.new_state()
    url = oauth.authorization_url(state=state, redirect_uri="https://site.test/cb", use_pkce=True)
    assert parse_qs(urlsplit(url).query)["state"] == [state]


# -- no secrets in logs -------------------------------------------------------------------------

SECRET = "CLIENTSECRET-CANARY-5b1f0c2e9d"
TOKENS = [
    ("ACCESS1-CANARY-d41d8cd98f00", "REFRESH1-CANARY-b204e9800998"),
    ("ACCESS2-CANARY-0cc175b9c0f1", "REFRESH2-CANARY-92eb5ffee6ae"),
]


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)
    for name in (
        "urllib3",
        "requests",
        "requests_oauthlib",
        "oauthlib",
        "django",
        "django.request",
        "django.db.backends",
        "slice_connect",
    ):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), repr(record.args), record.exc_text or "", str(record.msg)]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(repr(record.exc_info[1]))
    return "\n".join(parts)


@pytest.mark.django_db
def test_full_flow_logs_no_secret(
    debug_logs: pytest.LogCaptureFixture,
    user: Any,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings.SLICE_CONNECT = {**BASE_CONFIG, "CLIENT_SECRET": SECRET}
    codes = ["CODE1-CANARY-8277e0910d75", "CODE2-CANARY-e4da3b7fbbce"]
    client = Client()
    client.force_login(user)
    seen_states: list[str] = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(
            TOKEN_URL,
            json={"access_token": TOKENS[0][0], "refresh_token": TOKENS[0][1], "expires_in": 60},
        )
        mock.post(REVOKE_URL, status=503)

        # 1. link
        start = client.post("/slice/authorize/", {"next": "/after/"})
        state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
        seen_states.append(state)
        with django_capture_on_commit_callbacks(execute=True):
            done = client.get(f"/slice/callback/?{urlencode({'state': state, 'code': codes[0]})}")
        assert done.status_code == 302

        # 2. two error cases: a replayed callback, and Slice refusing a code
        client.get(f"/slice/callback/?{urlencode({'state': state, 'code': codes[0]})}")
        mock.replace(
            responses.POST,
            TOKEN_URL,
            status=400,
            json={"error": "invalid_grant", "error_description": f"bad {codes[1]}"},
        )
        start = client.post("/slice/authorize/")
        state = parse_qs(urlsplit(start["Location"]).query)["state"][0]
        seen_states.append(state)
        assert (
            client.get(
                f"/slice/callback/?{urlencode({'state': state, 'code': codes[1]})}"
            ).status_code
            == 400
        )

        # 3. a renewal, then an unlink whose revocation fails
        mock.replace(
            responses.POST,
            TOKEN_URL,
            json={"access_token": TOKENS[1][0], "refresh_token": TOKENS[1][1], "expires_in": 60},
        )
        credential = SliceCredential.objects.get(user=user)
        with django_capture_on_commit_callbacks(execute=True):
            services.renew(credential, force=True)
        assert credential.access_token == TOKENS[1][0]
        with django_capture_on_commit_callbacks(execute=True):
            assert client.post("/slice/unlink/").status_code == 302
        assert len([c for c in mock.calls if c.request.url == REVOKE_URL]) == 1
        assert parse_qs(mock.calls[-1].request.body)["token"] == [TOKENS[1][1]]

    secrets_ = [SECRET, *codes, *seen_states, *(oauth.pkce_verifier(s) for s in seen_states)]
    for access, refresh in TOKENS:
        secrets_ += [access, refresh]
    assert len(debug_logs.records) >= 5  # the flow did log, at several levels
    for record in debug_logs.records:
        text = _record_text(record)
        for value in secrets_:
            assert value not in text, (record.name, record.levelname, record.getMessage())
    printed = capsys.readouterr()
    for value in secrets_:
        assert value not in printed.out and value not in printed.err
