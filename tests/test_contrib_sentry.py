"""slice_connect.contrib.sentry keeps our secrets out of Sentry, proved with sentry-sdk itself.

Every test runs the real sentry-sdk (its default ``include_local_variables=True``, its
Django, logging and stdlib integrations) with a transport that keeps the envelopes in
memory instead of sending them, on the paths that hold tokens: a renewal that fails at the
token endpoint, a callback whose tokens cannot be stored, a code exchange that logs an
error, and an API call that fails. Slice is a real socket server on 127.0.0.1
(``tests/faulty_server.py``). Each path is run twice: without the scrubber the canaries
*do* reach the envelope (so these tests can fail), with it none does, while the event still
names the exception and its stack.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
from django.db import DatabaseError, connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from slice_connect import oauth, services
from slice_connect.client import SliceClient
from slice_connect.contrib import sentry as slice_sentry
from slice_connect.models import SliceCredential

from . import flow
from .conftest import query_of
from .faulty_server import Fault, FaultyServer, TlsFiles, make_tls_files

sentry_sdk = pytest.importorskip("sentry_sdk")

from sentry_sdk.envelope import Envelope  # noqa: E402
from sentry_sdk.integrations.django import DjangoIntegration  # noqa: E402
from sentry_sdk.integrations.logging import LoggingIntegration  # noqa: E402
from sentry_sdk.integrations.stdlib import StdlibIntegration  # noqa: E402
from sentry_sdk.transport import Transport  # noqa: E402

pytestmark = pytest.mark.django_db


class Secrets:
    """The canaries of one test. Its ``repr`` hides them: pytest's own frames (above the
    code under test, kept by the scrubber) hold this object as a fixture value."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def new(self, kind: str) -> str:
        value = f"{kind}C{secrets.token_hex(12)}"
        self.values[kind] = value
        return value

    def add(self, kind: str, value: str) -> None:
        self.values[kind] = value

    def __repr__(self) -> str:
        return "<Secrets>"


class CapturingTransport(Transport):
    """Keeps every envelope sentry-sdk would send; sends nothing."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def flush(self, timeout: float, callback: Any = None) -> None:
        return None

    def kill(self) -> None:
        return None


@dataclass
class Sentry:
    transport: CapturingTransport = field(default_factory=CapturingTransport)

    def text(self) -> str:
        """Every envelope as it would go on the wire."""
        return b"".join(e.serialize() for e in self.transport.envelopes).decode("utf-8")

    def items(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for envelope in self.transport.envelopes:
            for item in envelope.items:
                if item.type == kind:
                    found.append(json.loads(item.get_bytes()))
        return found

    def leaked(self, canaries: Secrets) -> dict[str, str]:
        """The canaries found in the envelopes, in any of the forms they travel in."""
        text = self.text()
        found = {}
        for kind, value in canaries.values.items():
            for form in {value, quote_plus(value), json.dumps(value)[1:-1]}:
                if form in text:
                    found[kind] = form
        return found


@pytest.fixture
def canaries(settings: Any) -> Secrets:
    found = Secrets()
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "CLIENT_SECRET": found.new("SECRET")}
    return found


@pytest.fixture(params=["scrubbed", "unscrubbed"])
def sentry(request: pytest.FixtureRequest) -> Iterator[Sentry]:
    """sentry-sdk as a site configures it, with or without the slice_connect hooks."""
    captured = Sentry()
    hooks: dict[str, Any] = {}
    if request.param == "scrubbed":
        hooks = {
            "before_send": slice_sentry.before_send,
            "before_send_transaction": slice_sentry.before_send_transaction,
            "before_breadcrumb": slice_sentry.before_breadcrumb,
        }
    sentry_sdk.init(
        dsn="https://public@sentry.invalid/1",
        transport=captured.transport,
        default_integrations=False,
        integrations=[DjangoIntegration(), LoggingIntegration(), StdlibIntegration()],
        traces_sample_rate=1.0,
        **hooks,
    )
    try:
        yield captured
    finally:
        client = sentry_sdk.get_client()
        client.close()
        sentry_sdk.get_global_scope().set_client(None)


def scrubbed(sentry: Sentry) -> bool:
    return bool(sentry_sdk.get_client().options["before_send"])


def capture_failure(call: Callable[[], Any]) -> BaseException:
    """Run ``call``, send its exception to Sentry as a site's handler would, return it."""
    try:
        call()
    except Exception as exc:
        sentry_sdk.capture_exception()
        return exc
    raise AssertionError("the call did not fail")


def frames_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for value in event.get("exception", {}).get("values", []):
        found += (value.get("stacktrace") or {}).get("frames", [])
    for value in (event.get("threads") or {}).get("values", []):
        found += (value.get("stacktrace") or {}).get("frames", [])
    return found


def assert_useful_and_clean(event: dict[str, Any], functions: set[str]) -> None:
    """The event names the stack, and no slice_connect frame (or one below it) has locals."""
    frames = frames_of(event)
    names = {frame.get("function") for frame in frames}
    assert functions <= names, (functions, names)
    ours = [i for i, f in enumerate(frames) if (f.get("module") or "").startswith("slice_co")]
    assert ours, "the event shows slice_connect's frames"
    assert all("vars" not in frame for frame in frames[ours[0] :])


def check(sentry: Sentry, canaries: Secrets, *, must_leak: set[str]) -> None:
    leaked = sentry.leaked(canaries)
    if scrubbed(sentry):
        assert leaked == {}, f"leaked with the scrubber: {sorted(leaked)}"
    else:
        # The control: the same path without the scrubber sends these secrets to Sentry.
        assert must_leak <= set(leaked), (must_leak, sorted(leaked))


# -- a renewal that fails at the token endpoint ------------------------------------------------


def test_failed_renewal(
    sentry: Sentry,
    canaries: Secrets,
    settings: Any,
    user: Any,
    make_credential: Callable[..., SliceCredential],
) -> None:
    with FaultyServer(Fault("reset")) as server:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "TOKEN_URL": f"{server.url}/token"}
        credential = make_credential(
            user, access_token=canaries.new("ACCESS"), refresh_token=canaries.new("REFRESH")
        )
        pk = credential.pk
        del credential
        error = capture_failure(
            lambda: services.renew(SliceCredential.objects.get(pk=pk), force=True)
        )
        sentry_sdk.flush()
    assert len(server.requests) == 2  # the refresh and its one retry, both answered by a reset
    (event,) = sentry.items("event")
    assert event["exception"]["values"][-1]["type"] == type(error).__name__
    if scrubbed(sentry):
        assert_useful_and_clean(event, {"renew", "_post_refresh", "refresh"})
    check(sentry, canaries, must_leak={"REFRESH", "SECRET"})


# -- the callback: tokens that cannot be stored, and a code exchange that logs an error --------


@pytest.fixture
def browser(user: Any) -> Client:
    """``user``'s browser; a view's exception becomes a 500 answer, as on a real site."""
    client = Client(raise_request_exception=False)
    client.force_login(user)
    return client


def start_link(browser: Client) -> str:
    """Start a link through the authorize view; return the state sent to Slice."""
    response = browser.post(reverse("slice_connect:authorize"))
    assert response.status_code == 302
    return query_of(response["Location"])["state"][0]


def token_body(canaries: Secrets) -> bytes:
    return json.dumps(
        {
            "access_token": canaries.new("ACCESS"),
            "refresh_token": canaries.new("REFRESH"),
            "token_type": "Bearer",
            "expires_in": 3600,
        }
    ).encode()


def test_callback_whose_tokens_cannot_be_stored(
    sentry: Sentry,
    canaries: Secrets,
    settings: Any,
    browser: Client,
) -> None:
    """Slice answers the code exchange; saving the credential fails (the database is down).

    The exception leaves the callback view: Django answers 500 and Sentry's Django
    integration reports it, with the callback's query string (code, state) and the frames
    that hold the new tokens.
    """
    with FaultyServer(Fault("answer", body=token_body(canaries))) as server:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "TOKEN_URL": f"{server.url}/token"}
        canaries.add("STATE", start_link(browser))
        canaries.add("VERIFIER", oauth.pkce_verifier(canaries.values["STATE"]))

        def database_down(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            if SliceCredential._meta.db_table in sql and not sql.lstrip().startswith("SELECT"):
                raise DatabaseError("the database went away")
            return execute(sql, params, many, context)

        with connection.execute_wrapper(database_down):
            response = browser.get(
                reverse("slice_connect:callback"),
                {"code": canaries.new("CODE"), "state": canaries.values["STATE"]},
            )
        sentry_sdk.flush()
    assert response.status_code == 500
    assert len(server.requests) == 1
    assert not SliceCredential.objects.exists()
    errors = [e for e in sentry.items("event") if e.get("exception")]
    assert [e["exception"]["values"][-1]["type"] for e in errors] == ["DatabaseError"]
    if scrubbed(sentry):
        assert_useful_and_clean(errors[0], {"get", "link"})
    check(sentry, canaries, must_leak={"CODE", "STATE", "ACCESS", "REFRESH"})


@pytest.mark.django_db(transaction=True)
def test_link_flow_transactions_over_real_http(
    sentry: Sentry, canaries: Secrets, slice_server: Any, user: Any, browser_session: Any
) -> None:
    """A whole link against the sandbox, served by a real WSGI server, traced by Sentry.

    Each request becomes a transaction carrying its query string and form data: the
    callback's holds the code and the state. (The sandbox runs in the same process, so
    its token endpoint's transactions, with the client secret, the code and the PKCE
    verifier in their form data, are captured as well: the scrubber must clean those too.)
    """
    canaries.add("SECRET", slice_server.client_secret)
    session = browser_session(user)
    authorize_url = flow.start_link(session, slice_server.url)
    canaries.add("STATE", query_of(authorize_url)["state"][0])
    canaries.add("VERIFIER", oauth.pkce_verifier(canaries.values["STATE"]))
    callback_url = flow.consent(session, authorize_url, allow=True)
    canaries.add("CODE", query_of(callback_url)["code"][0])
    response = session.get(callback_url, allow_redirects=False, timeout=30)
    assert response.status_code == 302
    credential = SliceCredential.objects.get(user=user)
    canaries.add("ACCESS", credential.access_token)
    canaries.add("REFRESH", credential.refresh_token)
    del credential
    sentry_sdk.flush()
    callbacks = [
        t for t in sentry.items("transaction") if t.get("transaction") == "/slice/callback/"
    ]
    assert len(callbacks) == 1
    assert callbacks[0]["request"]["query_string"]
    check(sentry, canaries, must_leak={"CODE", "STATE"})


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(Path(tmp_path_factory.mktemp("tls")))


def test_code_exchange_that_logs_an_error(
    sentry: Sentry,
    canaries: Secrets,
    settings: Any,
    browser: Client,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The token endpoint breaks TLS after the request went out: an ERROR is logged.

    With ``attach_stacktrace`` (a common setting) Sentry's logging integration sends that
    record with the whole stack of the exchange: the code, the verifier and the client
    secret in the request body being sent.
    """
    sentry_sdk.get_client().options["attach_stacktrace"] = True
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files.ca_cert))
    with FaultyServer(Fault("garbage"), ssl_context=tls_files.server_context()) as server:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "TOKEN_URL": f"{server.url}/token"}
        canaries.add("STATE", start_link(browser))
        canaries.add("VERIFIER", oauth.pkce_verifier(canaries.values["STATE"]))
        response = browser.get(
            reverse("slice_connect:callback"),
            {"code": canaries.new("CODE"), "state": canaries.values["STATE"]},
        )
        sentry_sdk.flush()
    assert response.status_code == 502
    logged = [e for e in sentry.items("event") if e.get("level") == "error" and frames_of(e)]
    assert logged, [e.get("logentry") for e in sentry.items("event")]
    if scrubbed(sentry):
        assert_useful_and_clean(logged[0], {"exchange_code", "post_token_request"})
    check(sentry, canaries, must_leak={"CODE", "SECRET", "VERIFIER"})


# -- an API call that fails --------------------------------------------------------------------


def test_failed_api_call(
    sentry: Sentry,
    canaries: Secrets,
    settings: Any,
    user: Any,
    make_credential: Callable[..., SliceCredential],
) -> None:
    with FaultyServer(Fault("reset")) as server:
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "API_BASE_URL": f"{server.url}/api/"}
        credential = make_credential(
            user,
            access_token=canaries.new("ACCESS"),
            refresh_token=canaries.new("REFRESH"),
            access_token_expires_at=timezone.now() + timedelta(hours=1),
        )
        pk = credential.pk
        del credential
        capture_failure(lambda: SliceClient(SliceCredential.objects.get(pk=pk)).get("users/self"))
        sentry_sdk.flush()
    assert len(server.requests) == 1
    assert server.requests[0].headers.get("authorization", "").startswith("Bearer ")
    (event,) = sentry.items("event")
    if scrubbed(sentry):
        assert_useful_and_clean(event, {"get", "request", "_send"})
    check(sentry, canaries, must_leak={"ACCESS"})


# -- the scrubber itself -----------------------------------------------------------------------


def test_scrub_text_forms() -> None:
    text = (
        "GET /slice/callback/?state=S3cr3t&code=C0de HTTP/1.1\\r\\n"
        "Authorization: Bearer abc.DEF-123_~+/=\\r\\nHost: x\\r\\n\\r\\n"
        "grant_type=refresh_token&refresh_token=R3fr3sh&client_secret=Cl13nt&code_verifier=V"
        ' {"access_token": "A\\"cc", "token_type": "bearer"} {\'id_token\': \'I\'}'
    )
    out = slice_sentry.scrub_text(text, [])
    for secret in ("S3cr3t", "C0de", "abc.DEF", "R3fr3sh", "Cl13nt", "=V", 'A\\"cc', "'I'"):
        assert secret not in out, (secret, out)
    assert "grant_type=refresh_token" in out  # the grant type is not a secret
    assert '"token_type": "bearer"' in out
    assert "Host: x" in out
    assert slice_sentry.scrub_text("a basic check; the bearer of news", []) == (
        "a basic check; the bearer of news"
    )


def test_scrub_keys_frames_and_literals(settings: Any) -> None:
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "CLIENT_SECRET": "sec/ret value"}
    event = {
        "request": {
            "headers": {"Authorization": "Bearer x", "X-Ok": "1"},
            "data": {"CODE": "c", "next": "/"},
        },
        "extra": {
            "HTTP_AUTHORIZATION": "Basic y",
            "note": "said sec%2Fret+value and sec/ret value",
        },
        "exception": {
            "values": [
                {
                    "type": "E",
                    "stacktrace": {
                        "frames": [
                            {
                                "module": "myapp.views",
                                "function": "v",
                                "context_line": "    SECRET = 'sec/ret value'",
                                "pre_context": ["    send(code=code, state=state)"],
                                "vars": {"n": "1"},
                            },
                            {"module": "slice_connect.client", "function": "_send", "vars": {}},
                            {"module": "requests.sessions", "function": "send", "vars": {}},
                        ]
                    },
                }
            ]
        },
        "_meta": {"request": {"data": {"code": {"": {"len": 3}}}}},
    }
    out = slice_sentry.scrub_event(event)
    assert out["request"]["headers"] == {"Authorization": "[Filtered]", "X-Ok": "1"}
    assert out["request"]["data"] == {"CODE": "[Filtered]", "next": "/"}
    assert out["extra"]["HTTP_AUTHORIZATION"] == "[Filtered]"
    assert out["extra"]["note"] == "said [Filtered] and [Filtered]"
    frames = out["exception"]["values"][0]["stacktrace"]["frames"]
    assert [("vars" in f) for f in frames] == [True, False, False]
    assert frames[0]["context_line"] == "    SECRET = '[Filtered]'"
    assert frames[0]["pre_context"] == ["    send(code=code, state=state)"]  # code, not data
    assert out["_meta"] == {"request": {"data": {"code": {"": {"len": 3}}}}}


def test_chained_http_stack_frames_lose_their_locals() -> None:
    """A cause whose own trace starts inside urllib3, below a slice_connect frame."""
    body = "'grant_type=x&extra=opaque-VALUE'"
    cause = {"module": "urllib3.connectionpool", "function": "urlopen", "vars": {"body": body}}
    site = {"module": "myapp.http", "function": "fetch", "vars": {"body": body}}
    outer = {"module": "slice_connect.http", "function": "send", "vars": {"x": "1"}}
    event = {
        "exception": {
            "values": [
                {"type": "ProtocolError", "stacktrace": {"frames": [dict(cause)]}},
                {"type": "AnswerLost", "stacktrace": {"frames": [dict(site), dict(outer)]}},
            ]
        }
    }
    values = slice_sentry.scrub_event(event)["exception"]["values"]
    assert "vars" not in values[0]["stacktrace"]["frames"][0]
    assert values[1]["stacktrace"]["frames"][0]["vars"] == {"body": body}  # the site's own
    assert "vars" not in values[1]["stacktrace"]["frames"][1]
    # Without any slice_connect frame in the event, the HTTP stack keeps its locals.
    alone = {"exception": {"values": [{"stacktrace": {"frames": [dict(cause)]}}]}}
    frame = slice_sentry.scrub_event(alone)["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert frame["vars"] == {"body": body}


def test_before_breadcrumb_scrubs_raw_data() -> None:
    crumb = {"category": "httplib", "data": {"url": "https://x/?code=abc", "body": b"token=t"}}
    out = slice_sentry.before_breadcrumb(crumb, {})
    assert out["data"] == {"url": "https://x/?code=[Filtered]", "body": "token=[Filtered]"}


def test_sentry_sdk_is_optional() -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['sentry_sdk'] = None\n"
        "import slice_connect.contrib.sentry as s\n"
        "print(s.scrub_text('code=x', []))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "code=[Filtered]"


def test_scrub_edges(settings: Any) -> None:
    # A frame without a module is recognised by its path; odd frames and values survive.
    frames = [
        "not a frame",
        {"filename": "site-packages/slice_connect/oauth.py", "vars": {"x": "1"}},
        {"module": "requests.api", "vars": {"y": "2"}},
        None,
    ]
    out = slice_sentry.scrub_event({"threads": {"values": [{"stacktrace": {"frames": frames}}]}})
    kept = out["threads"]["values"][0]["stacktrace"]["frames"]
    assert kept[0] == "not a frame" and kept[3] is None
    assert "vars" not in kept[1] and "vars" not in kept[2]
    # Tuples, numbers, empty secret values and cycles in raw breadcrumb data.
    crumb: dict[str, Any] = {"data": {"pair": ("state=s", 3), "code": "", "token": None}}
    crumb["data"]["self"] = crumb
    out = slice_sentry.before_breadcrumb(crumb, {})
    assert out["data"]["pair"] == ("state=[Filtered]", 3)
    assert out["data"]["code"] == "" and out["data"]["token"] is None
    # Containers nested deeper than any serialized event are replaced whole.
    deep: list[Any] = ["token=t"]
    for _ in range(slice_sentry.MAX_DEPTH + 5):
        deep = [deep]
    inner = slice_sentry.scrub(deep)
    for _ in range(slice_sentry.MAX_DEPTH):
        inner = inner[0]
    assert inner == [slice_sentry.FILTERED]
    assert slice_sentry.scrub_event({"exception": {"values": ["odd", None]}})["exception"]
    # A short or missing client secret is not treated as a literal to replace.
    settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "CLIENT_SECRET": "abc"}
    assert slice_sentry.scrub_text("abc") == "abc"
    settings.SLICE_CONNECT = "not a dict"
    assert slice_sentry.scrub_text("x=1 code=2") == "x=1 code=[Filtered]"
