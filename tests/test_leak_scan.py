"""B10: the canary leak scan (docs/threat-model.rst R16, R22-R25 and battery B10).

Unique canary values are seeded for every secret slice_connect handles: the access and
refresh tokens Slice issues, the client secret, the authorization code, the state and the
PKCE verifier derived from it. The whole life of a link then runs with every logger at
DEBUG (SQL with its parameters included): link, three forced renewals, failing renewals
(HTTP 500, ``invalid_grant``), unexpected exceptions that go through Django's 500 handling
and the admin error mail (inside a renewal, a code exchange, a database write of new
tokens, an API call and a revocation), the admin pages and actions, Celery messages on an
in-memory broker, and unlink. Then every place a secret could end up is searched for each
canary, raw and URL-encoded, base64 (at every byte alignment), hex, JSON- and HTML-escaped:

* a dump of every table (raw SQL, so ciphertext stays ciphertext), the ORM's view of every
  non-encrypted field, and every session decoded; twice while a credential is linked, and
  at the end;
* every log record, formatted with its traceback and its extra attributes, and the local
  variables of every traceback frame as Django's error reporter filters them;
* stdout and stderr; every response of ours (status, headers, cookies, Location, body),
  among them the admin pages and the 500 pages; the error mails (text and HTML);
* the Celery messages, as published (body, argsrepr, kwargsrepr) and as queued (raw).

Pass: the tokens, the client secret and the PKCE verifier are found nowhere. The code and
the state may appear only where the callback URL itself is echoed, like an access log:
the callback URL printed by ``django.request``, ``django.server`` and ``urllib3`` records
(and by ``django.template``'s DEBUG records while Django renders a callback's error
report), and the request section (URL, GET, ``QUERY_STRING``) of the error mail about a
failed callback request; the code and state are single-use and short-lived. The state is
also, by protocol, in the Location of our authorize redirect to Slice.

``test_canary_leak_scan_against_the_sandbox`` repeats link, renewals and unlink over real
HTTP against the sandbox (django-oauth-toolkit in ``live_server``), whose tokens are random
and collected as they are issued. The sandbox is the authorization server: it keeps its own
tokens and grants by design, so its ``oauth2_provider`` token and grant tables, and the log
records emitted by its code or while the live server handles its URLs (``/oauth/``,
``/api/``), are excluded from the token, code and state canaries. The client secret and the
verifier are searched there too (DOT stores only a hash of the secret).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import pprint
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, quote, quote_plus, unquote, unquote_plus, urlencode, urlsplit

import django
import pytest
import requests
import responses
from django.apps import apps
from django.contrib.sessions.models import Session
from django.core import mail
from django.core.signals import request_finished, request_started
from django.db import OperationalError, connection
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.test import Client
from django.urls import include, path
from django.utils.log import AdminEmailHandler
from django.views.debug import get_exception_reporter_filter

from slice_connect import oauth, services, tasks
from slice_connect.client import SliceClient
from slice_connect.exceptions import NeedsReauth, TransientError
from slice_connect.fields import EncryptedTokenField
from slice_connect.models import SliceCredential
from tests.conftest import API_URL, BASE_CONFIG, REVOKE_URL, TOKEN_URL

from .flow import consent, csrf_token, start_link

CALLBACK_PATH = "/slice/callback/"
AUTHORIZE_PATH = "/slice/authorize/"
ADMIN_CHANGELIST = "/admin/slice_connect/slicecredential/"

ACCESS, REFRESH, SECRET, CODE, STATE, VERIFIER = (
    "access token",
    "refresh token",
    "client secret",
    "code",
    "state",
    "PKCE verifier",
)
CALLBACK_ECHO = frozenset({CODE, STATE})
#: Records of these loggers print request lines; a printed callback URL is an echo.
ECHO_LOGGERS = ("django.request", "django.server", "urllib3", "django.template")
#: What an echo looks like: a URL of the flow (the browser's request to Slice's authorize
#: endpoint shows in urllib3's log of the sandbox run), or the request section of an error
#: report (text and HTML).
ECHO_PATTERNS = (
    re.compile(r"/slice/callback/\?[^\s'\"<>\\]*"),
    re.compile(r"/oauth/authorize\?[^\s'\"<>\\]*"),
    re.compile(r"^GET:$.*?^POST:", re.DOTALL | re.MULTILINE),
    re.compile(r'<h3 id="get-info">GET</h3>.*?<h3 id="post-info">', re.DOTALL),
    re.compile(r"QUERY_STRING = '[^'\n]*'"),
    re.compile(r"'QUERY_STRING': '[^'\n]*'"),
    re.compile(r"<td>QUERY_STRING</td>\s*<td class=\"code\"><pre>.*?</pre>", re.DOTALL),
)
#: Tables where the sandbox (the authorization server) keeps its own tokens and grants.
SANDBOX_TOKEN_TABLES = frozenset(
    {
        "oauth2_provider_accesstoken",
        "oauth2_provider_refreshtoken",
        "oauth2_provider_grant",
        "oauth2_provider_idtoken",
    }
)
SANDBOX_CODE = (
    "/oauth2_provider/",
    "/oauthlib/oauth2/rfc6749/endpoints/",
    "/oauthlib/oauth2/rfc6749/grant_types/",
    "/slice_sandbox/",
)
#: URLs the sandbox serves as Slice (authorize, token, revoke, API) in the live server.
SANDBOX_PATHS = ("/oauth/", "/api/")


# -- canaries, places, the scanner ---------------------------------------------------------------


@dataclass(frozen=True)
class Canary:
    kind: str
    value: str

    def forms(self) -> dict[str, str]:
        """The value raw, URL-encoded, base64-encoded, hex, JSON- and HTML-escaped."""
        raw = self.value.encode()
        found = {
            "raw": self.value,
            "url": quote(self.value, safe=""),
            "url-path": quote(self.value),
            "url-plus": quote_plus(self.value),
            "json": json.dumps(self.value)[1:-1],
            "json-slash": json.dumps(self.value)[1:-1].replace("/", "\\/"),
            "html": html.escape(self.value),
            "hex": raw.hex(),
            "HEX": raw.hex().upper(),
        }
        # Inside a larger base64 blob the value may start at any of three byte offsets; keep
        # the characters that depend on the value's bytes alone.
        for shift in range(3):
            encoded = base64.b64encode(b"\0" * shift + raw).decode()
            core = encoded[-(-shift * 8 // 6) : (shift + len(raw)) * 8 // 6]
            found[f"base64+{shift}"] = core
            found[f"base64url+{shift}"] = core.translate(str.maketrans("+/", "-_"))
        return found


def canary(kind: str) -> str:
    """A unique value whose URL, base64 and JSON forms all differ from the raw one."""
    return f"{kind.split()[0].upper()}/CANARY+{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Place:
    """One searched text.

    ``allowed`` names canary kinds that may be in it; with ``echo``, request echoes
    (``ECHO_PATTERNS``) are cut out before the search.
    """

    name: str
    text: str
    allowed: frozenset[str] = frozenset()
    echo: bool = False


@dataclass(frozen=True)
class Hit:
    kind: str
    form: str
    place: str
    excerpt: str


def strip_echo(text: str) -> str:
    for pattern in ECHO_PATTERNS:
        text = pattern.sub("<echo>", text)
    return text


def decoded_views(text: str) -> list[str]:
    """``text`` and its percent-, plus-, HTML- and JSON-unescaped versions."""
    return [
        text,
        unquote(text),
        unquote_plus(text),
        unquote(unquote(text)),
        html.unescape(text),
        text.replace("\\/", "/"),
    ]


def scan(places: Iterable[Place], canaries: Iterable[Canary]) -> list[Hit]:
    """Every (canary, place) found, in its first matching form."""
    canaries = list(canaries)
    forms = {c: c.forms() for c in canaries}
    hits: list[Hit] = []
    for place in places:
        views = decoded_views(strip_echo(place.text) if place.echo else place.text)
        for item in canaries:
            if item.kind in place.allowed:
                continue
            for form, value in forms[item].items():
                where = next((v for v in views if value in v), None)
                if where is not None:
                    at = where.index(value)
                    excerpt = where[max(0, at - 100) : at + 100]
                    hits.append(Hit(item.kind, form, place.name, excerpt))
                    break
    return hits


def report(hits: list[Hit]) -> str:
    """One line per (kind, place), with the first excerpt."""
    lines: dict[tuple[str, str], str] = {}
    for hit in hits:
        lines.setdefault(
            (hit.kind, hit.place), f"{hit.kind} ({hit.form}) in {hit.place}: ...{hit.excerpt!r}..."
        )
    return "\n".join(lines.values())


def render(value: Any) -> str:
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return str(value)


# -- capture: logs and frames ---------------------------------------------------------------------

LOGGERS = (
    "",
    "urllib3",
    "requests",
    "requests_oauthlib",
    "oauthlib",
    "django",
    "django.request",
    "django.server",
    "django.security",
    "django.template",
    "django.db.backends",
    "slice_connect",
    "celery",
    "kombu",
    "oauth2_provider",
)
STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
}
FORMATTER = logging.Formatter("%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s")


@dataclass
class Captured:
    record: logging.LogRecord
    text: str
    #: The path of the request its thread was handling when it was emitted, if any.
    path: str = ""

    def from_sandbox(self) -> bool:
        """Whether the sandbox (as Slice, the authorization server) emitted it."""
        return self.path.startswith(SANDBOX_PATHS) or any(
            part in self.record.pathname for part in SANDBOX_CODE
        )


class Recorder(logging.Handler):
    """Formats every record as it is emitted: message, traceback, stack and extras."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.captured: list[Captured] = []
        self.current = threading.local()

    def request_started(self, sender: Any = None, environ: Any = None, **kwargs: Any) -> None:
        self.current.path = (environ or {}).get("PATH_INFO", "")

    def request_finished(self, sender: Any = None, **kwargs: Any) -> None:
        self.current.path = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = FORMATTER.format(record)
        except Exception as exc:  # one broken record must not hide the others
            text = f"<unformattable {record.msg!r}: {exc!r}>"
        parts = [text, f"args={record.args!r}"]
        parts += [f"{k}={v!r}" for k, v in vars(record).items() if k not in STANDARD_ATTRS]
        path = getattr(self.current, "path", "")
        self.captured.append(Captured(record, "\n".join(parts), path))


@contextmanager
def debug_logging() -> Iterator[Recorder]:
    """Every interesting logger at DEBUG into a Recorder; SQL logged with its parameters.

    Django's default ``mail_admins`` handler (text report) stays in place; an extra
    ``AdminEmailHandler(include_html=True)`` on ``django.request`` adds the HTML report,
    which shows every frame's local variables.
    """
    recorder = Recorder()
    mailer = AdminEmailHandler(include_html=True)
    mailer.setLevel(logging.ERROR)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    isolated = [  # loggers that do not propagate to the root get the recorder themselves
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    for logger in [logging.root, *isolated]:
        logger.addHandler(recorder)
    logging.getLogger("django.request").addHandler(mailer)
    request_started.connect(recorder.request_started, weak=False)
    request_finished.connect(recorder.request_finished, weak=False)
    # Every connection of every thread (the live server's too) logs its SQL and parameters.
    queries_logged = mock.patch.object(
        BaseDatabaseWrapper, "queries_logged", new=property(lambda self: True)
    )
    try:
        with queries_logged:
            yield recorder
    finally:
        request_started.disconnect(recorder.request_started)
        request_finished.disconnect(recorder.request_finished)
        logging.getLogger("django.request").removeHandler(mailer)
        for logger in [logging.root, *isolated]:
            logger.removeHandler(recorder)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def record_places(
    captured: Iterable[Captured], allowed: frozenset[str] = frozenset()
) -> list[Place]:
    return [
        Place(
            f"record {n} {c.record.name} {c.record.levelname}",
            c.text,
            allowed,
            echo=c.record.name.startswith(ECHO_LOGGERS),
        )
        for n, c in enumerate(captured)
    ]


def pformat(value: Any) -> str:
    """``pprint.pformat``, or the error, as Django's ``pprint`` template filter does."""
    try:
        return pprint.pformat(value)
    except Exception as exc:
        return f"Error in formatting: {exc.__class__.__name__}: {exc}"


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def frame_places(captured: Iterable[Captured]) -> list[Place]:
    """The local variables of every frame of every logged traceback, filtered as Django does.

    A request's repr is its request line, an echo; every other variable must be clean.
    ``django.template``'s DEBUG records are skipped: their frames are the template engine
    rendering an error report (the report itself is searched, in the records and mails).
    """
    places: list[Place] = []
    for number, item in enumerate(captured):
        exc_info = item.record.exc_info
        if not exc_info or exc_info[1] is None or item.record.name == "django.template":
            continue
        request = getattr(item.record, "request", None)
        reporter_filter = get_exception_reporter_filter(request)
        for exc in exception_chain(exc_info[1]):
            tb: TracebackType | None = exc.__traceback__
            while tb is not None:
                frame = tb.tb_frame
                code = frame.f_code
                lines = [f"{code.co_filename}:{tb.tb_lineno} in {code.co_name}"]
                for name, value in reporter_filter.get_traceback_frame_variables(request, frame):
                    lines.append(f"{name} = {pformat(value)}")
                name = f"record {number} frame {code.co_name}"
                places.append(Place(name, "\n".join(lines), echo=True))
                tb = tb.tb_next
    return places


# -- capture: responses, mails, Celery ------------------------------------------------------------


class RecordingClient(Client):
    """A test client that keeps every response it receives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, HttpResponseBase]] = []

    def request(self, **request: Any) -> Any:
        response = super().request(**request)
        self.seen.append((f"{request['REQUEST_METHOD']} {request['PATH_INFO']}", response))
        return response


def response_places(label: str, response: HttpResponseBase) -> list[Place]:
    """A response as three places: its Location, its other headers and cookies, its body."""
    headers = [f"HTTP {response.status_code}"]
    headers += [f"{k}: {v}" for k, v in response.items() if k.lower() != "location"]
    headers.append(response.cookies.output())
    if getattr(response, "streaming", False):
        body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    else:
        body = response.content  # type: ignore[attr-defined]
    # Our authorize redirect is how the state reaches Slice.
    state_ok = frozenset({STATE}) if label == f"POST {AUTHORIZE_PATH}" else frozenset()
    return [
        Place(f"response {label} Location", response.get("Location", ""), state_ok),
        Place(f"response {label} headers", "\n".join(headers)),
        Place(f"response {label} body", render(body)),
    ]


def mail_places(message: mail.EmailMessage, index: int) -> list[Place]:
    """A mail decoded (subject, text, every alternative) and as sent (MIME)."""
    parts = [str(message.subject), str(message.body)]
    parts += [render(alternative[0]) for alternative in getattr(message, "alternatives", [])]
    parts += [repr(attachment) for attachment in message.attachments]
    # The report of a failed callback echoes its request; the MIME text repeats the
    # decoded parts, encoded, so there only the tokens, secret and verifier are searched.
    about_callback = CALLBACK_PATH in message.subject
    return [
        Place(f"mail {index} decoded", "\n".join(parts), echo=about_callback),
        Place(
            f"mail {index} MIME",
            message.message().as_string(),
            CALLBACK_ECHO if about_callback else frozenset(),
        ),
    ]


@dataclass
class Broker:
    """Celery's app on an in-memory kombu transport; every publish is recorded."""

    app: Any
    published: list[dict[str, Any]] = field(default_factory=list)

    def raw_messages(self) -> list[dict[str, Any]]:
        """Every message in the in-memory queues, exactly as the transport holds it."""
        from kombu.transport.memory import Channel

        return [
            {"queue": name, "message": message}
            for name, queue in list(Channel.queues.items())
            for message in list(queue.queue)
        ]

    @staticmethod
    def drain() -> None:
        from kombu.transport.memory import Channel

        for queue in Channel.queues.values():
            queue.queue.clear()


@contextmanager
def memory_broker() -> Iterator[Broker]:
    """Point ``example_project.celery.app`` at ``memory://`` (not eager), then restore it."""
    from celery import _state
    from celery.signals import before_task_publish

    from example_project.celery import app

    conf = app.conf
    keys = ("broker_url", "task_always_eager", "broker_transport_options")
    saved = {key: conf[key] for key in keys}
    saved_pools = app._pool, app.amqp._producer_pool
    previous_app = _state.get_current_app()
    broker = Broker(app)

    def on_publish(sender: Any = None, body: Any = None, **kwargs: Any) -> None:
        broker.published.append(
            {
                "task": sender,
                "body": body,
                "headers": dict(kwargs.get("headers") or {}),
                "properties": dict(kwargs.get("properties") or {}),
                "exchange": kwargs.get("exchange"),
                "routing_key": kwargs.get("routing_key"),
            }
        )

    conf.broker_url = "memory://"
    conf.task_always_eager = False
    conf.broker_transport_options = {}
    app._pool = None
    app.amqp._producer_pool = None
    app.set_current()
    broker.drain()
    before_task_publish.connect(on_publish, weak=False)
    try:
        yield broker
    finally:
        before_task_publish.disconnect(on_publish)
        broker.drain()
        for pool in (app._pool, app.amqp._producer_pool):
            if pool is not None:
                pool.force_close_all()
        app._pool, app.amqp._producer_pool = saved_pools
        for key, value in saved.items():
            conf[key] = value
        previous_app.set_current()


# -- the database ---------------------------------------------------------------------------------


def database_places() -> list[Place]:
    """Every row of every table as stored, the ORM's view of it, and every session decoded.

    Raw SQL, not ``values_list``, for the dump: the ORM would decrypt the token columns,
    which is reading the secret, not finding it leaked. ``values_list`` is used as well, on
    every field but the encrypted ones (JSON and the like come out decoded).
    """
    places: list[Place] = []
    models = apps.get_models(include_auto_created=True)
    tables = sorted(
        {m._meta.db_table for m in models} | set(connection.introspection.table_names())
    )
    sandbox_owned = frozenset({ACCESS, REFRESH, CODE})
    for table in tables:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            columns = [c[0] for c in cursor.description]
            rows = cursor.fetchall()
        text = "\n".join(
            " | ".join(f"{c}={render(v)}" for c, v in zip(columns, row, strict=True))
            for row in rows
        )
        allowed = sandbox_owned if table in SANDBOX_TOKEN_TABLES else frozenset()
        places.append(Place(f"table {table} ({len(rows)} rows)", text, allowed))
    for model in models:
        names = [
            f.attname for f in model._meta.concrete_fields if not isinstance(f, EncryptedTokenField)
        ]
        rows = list(model._base_manager.values_list(*names))
        allowed = sandbox_owned if model._meta.db_table in SANDBOX_TOKEN_TABLES else frozenset()
        places.append(Place(f"model {model._meta.label}", "\n".join(map(repr, rows)), allowed))
    for session in Session.objects.all():
        decoded = session.get_decoded()
        name = f"session {session.session_key[:6]}"
        places.append(Place(f"{name} decoded", repr(decoded)))
        places.append(Place(f"{name} json", json.dumps(decoded, default=repr)))
    return places


def snapshot(label: str) -> list[Place]:
    """``database_places()`` now, named ``label``, without logging its own queries."""
    sql = logging.getLogger("django.db.backends")
    level = sql.level
    sql.setLevel(logging.INFO)
    try:
        return [Place(f"{label}: {p.name}", p.text, p.allowed, p.echo) for p in database_places()]
    finally:
        sql.setLevel(level)


# -- the scenario with a mocked Slice -------------------------------------------------------------


def renew_view(request: HttpRequest, pk: int) -> HttpResponse:
    """Test-only: renew inside a request, so an unexpected failure is a real Django 500."""
    services.renew(SliceCredential.objects.get(pk=pk), force=True)
    return HttpResponse("renewed")


def api_view(request: HttpRequest) -> HttpResponse:
    """Test-only: a site page calling Slice's API for the user."""
    with SliceClient(request.user) as client:
        client.get("users/self")
    return HttpResponse("called")


urlpatterns = [
    path("leak/renew/<int:pk>/", renew_view),
    path("leak/api/", api_view),
    path("", include("tests.urls")),
]


@dataclass
class FakeSlice:
    """Slice's token, revocation and API endpoints; tokens come from a list of canaries."""

    mock: responses.RequestsMock = field(repr=False)
    pairs: list[tuple[str, str]] = field(repr=False)
    mode: str = "ok"
    revoke_mode: str = "ok"
    api_mode: str = "ok"
    issued: int = 0

    def token(self, request: Any) -> tuple[int, dict[str, str], str]:
        if self.mode == "explode":
            # Raised before this double holds anything secret in its own frame: the frames
            # that matter are slice_connect's and the HTTP stack's above it.
            raise RuntimeError("unexpected failure inside the HTTP stack")
        sent = parse_qs(request.body or "")
        echoed = (sent.get("refresh_token") or sent.get("code") or ["?"])[0]
        if self.mode == "ok":
            access, refresh = self.pairs[self.issued]
            self.issued += 1
            body = {
                "access_token": access,
                "refresh_token": refresh,
                "token_type": "Bearer",
                "expires_in": 3600,
            }
            return 200, {"Content-Type": "application/json"}, json.dumps(body)
        if self.mode == "500":
            # A proxy error page echoing what it was sent: none of it may be logged.
            return 500, {"Content-Type": "text/html"}, f"<h1>Proxy error</h1><pre>{echoed}</pre>"
        if self.mode == "invalid_grant":
            body = {"error": "invalid_grant", "error_description": f"{echoed} is not valid"}
            return 400, {"Content-Type": "application/json"}, json.dumps(body)
        raise AssertionError(self.mode)

    def revoke(self, request: Any) -> tuple[int, dict[str, str], str]:
        if self.revoke_mode == "explode":
            raise RuntimeError("unexpected failure while revoking")
        return 200, {}, ""

    def api(self, request: Any) -> tuple[int, dict[str, str], str]:
        if self.api_mode == "explode":
            raise RuntimeError("unexpected failure calling the API")
        return 200, {"Content-Type": "application/json"}, '{"result": {}}'

    def calls(self, url: str) -> list[Any]:
        return [c for c in self.mock.calls if c.request.url == url]


@contextmanager
def failing_token_writes() -> Iterator[None]:
    """Make every write of new tokens to the credential table fail (a lost database)."""

    def execute(run: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        table = SliceCredential._meta.db_table
        if (
            table in sql
            and '"access_token"' in sql
            and sql.lstrip().startswith(("INSERT", "UPDATE"))
        ):
            raise OperationalError("database is locked")
        return run(sql, params, many, context)

    with connection.execute_wrapper(execute):
        yield


def state_of(response: HttpResponseBase) -> str:
    return parse_qs(urlsplit(response["Location"]).query)["state"][0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.urls(__name__)
def test_canary_leak_scan(
    settings: Any, make_user: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = [(canary(ACCESS), canary(REFRESH)) for _ in range(8)]
    secret = canary(SECRET)
    codes = [canary(CODE) for _ in range(5)]
    states: list[str] = []
    settings.DEBUG = False
    # Django 6.0 takes plain addresses and deprecates (name, address) pairs; 5.2 needs pairs.
    settings.ADMINS = (
        ["ops@example.com"] if django.VERSION >= (6, 0) else [("Ops", "ops@example.com")]
    )
    settings.SLICE_CONNECT = {
        **BASE_CONFIG,
        "CLIENT_ID": "leak-scan-client",
        "CLIENT_SECRET": secret,
    }
    mail.outbox = []
    alice = make_user("alice")
    # Django's own 500 handling runs (page, log record, error mail) instead of a re-raise.
    browser = RecordingClient(raise_request_exception=False)
    browser.force_login(alice)
    staff = RecordingClient()
    staff.force_login(make_user("root", is_staff=True, is_superuser=True))

    def link(code: str, expect: int = 302) -> None:
        states.append(state_of(browser.post(AUTHORIZE_PATH, {"next": "/after/"})))
        query = urlencode({"state": states[-1], "code": code})
        assert browser.get(f"{CALLBACK_PATH}?{query}").status_code == expect

    def mails_grow() -> Iterator[None]:
        before = len(mail.outbox)
        yield
        assert len(mail.outbox) > before, "no error mail was sent"

    error_mail = contextmanager(mails_grow)

    with (
        responses.RequestsMock(assert_all_requests_are_fired=False) as mock,
        debug_logging() as recorder,
        memory_broker() as broker,
    ):
        slice_ = FakeSlice(mock, pairs)
        mock.add_callback(responses.POST, TOKEN_URL, callback=slice_.token)
        mock.add_callback(responses.POST, REVOKE_URL, callback=slice_.revoke)
        mock.add_callback(responses.GET, API_URL, callback=slice_.api)

        # 1. Link (pair 0), then a replayed and a denied callback.
        assert browser.get(AUTHORIZE_PATH).status_code == 200
        link(codes[0])
        replay = urlencode({"state": states[0], "code": codes[0]})
        assert browser.get(f"{CALLBACK_PATH}?{replay}").status_code == 400
        states.append(state_of(browser.post(AUTHORIZE_PATH)))
        denied = {"state": states[-1], "error": "access_denied", "error_description": codes[0]}
        assert browser.get(f"{CALLBACK_PATH}?{urlencode(denied)}").status_code == 200
        credential = SliceCredential.objects.get(user=alice)
        pk = credential.pk
        assert credential.refresh_token == pairs[0][1]

        # 2. Three forced renewals (pairs 1-3): the service, the admin action, a request.
        services.renew(credential, force=True)
        action = staff.post(ADMIN_CHANGELIST, {"action": "renew_now", "_selected_action": [pk]})
        assert action.status_code == 302
        assert browser.get(f"/leak/renew/{pk}/").status_code == 200
        credential.refresh_from_db()
        assert (credential.access_token, credential.refresh_token) == pairs[3]
        dumps = snapshot("after renewals")

        # 3. Failing renewals: HTTP 500; an exception inside the HTTP stack; the database
        #    failing to store the new tokens (pair 4 lost); invalid_grant.
        slice_.mode = "500"
        with pytest.raises(TransientError):
            services.renew(credential, force=True)
        slice_.mode = "explode"
        with error_mail():
            assert browser.get(f"/leak/renew/{pk}/").status_code == 500
        slice_.mode = "ok"
        with error_mail(), failing_token_writes():
            assert browser.get(f"/leak/renew/{pk}/").status_code == 500
        slice_.mode = "invalid_grant"
        with pytest.raises(NeedsReauth):
            services.renew(credential, force=True)

        # 4. The admin pages; the admin's unlink action; the admin log.
        for url in (
            "/admin/",
            ADMIN_CHANGELIST,
            f"{ADMIN_CHANGELIST}?q=alice",
            f"{ADMIN_CHANGELIST}?status__exact=needs_reauth",
            f"{ADMIN_CHANGELIST}{pk}/change/",
            f"{ADMIN_CHANGELIST}{pk}/history/",
            f"{ADMIN_CHANGELIST}{pk}/delete/",
        ):
            assert staff.get(url).status_code == 200, url
        unlinked = staff.post(ADMIN_CHANGELIST, {"action": "unlink", "_selected_action": [pk]})
        assert unlinked.status_code == 302
        assert not SliceCredential.objects.exists()
        assert staff.get("/admin/").status_code == 200
        assert staff.get(ADMIN_CHANGELIST).status_code == 200

        # 5. Link again: the code exchange explodes; then the database fails to store the
        #    tokens (pair 5 lost); then it works (pair 6).
        slice_.mode = "explode"
        with error_mail():
            link(codes[1], expect=500)
        slice_.mode = "ok"
        with error_mail(), failing_token_writes():
            link(codes[2], expect=500)
        link(codes[3])
        credential = SliceCredential.objects.get(user=alice)
        assert credential.refresh_token == pairs[6][1]
        dumps += snapshot("after relinking")

        # 6. A site page calls Slice's API, which explodes.
        slice_.api_mode = "explode"
        with error_mail():
            assert browser.get("/leak/api/").status_code == 500

        # 7. Celery: tasks published on the in-memory broker.
        tasks.renew_credential.apply_async((credential.pk,))
        tasks.renew_credential.apply_async(kwargs={"credential_id": credential.pk}, countdown=5)
        tasks.renew_due_credentials.apply_async()
        settings.SLICE_CONNECT = {**settings.SLICE_CONNECT, "RENEW_WITHIN": timedelta(days=30)}
        assert tasks.renew_due_credentials() == 1
        raw_messages = broker.raw_messages()
        assert len(broker.published) == len(raw_messages) == 4
        argsreprs = [m["headers"].get("argsrepr") for m in broker.published]
        assert argsreprs.count(f"({credential.pk},)") == 2

        # 8. Unlink through the view while the revocation explodes (logged with its
        # traceback, not a 500: the row is gone either way); link (pair 7) and unlink.
        slice_.revoke_mode = "explode"
        assert browser.post("/slice/unlink/").status_code == 302
        assert any(
            c.record.exc_info and "on_commit" in c.record.getMessage() for c in recorder.captured
        ), "the failed revocation must be logged"
        assert not SliceCredential.objects.exists()
        slice_.revoke_mode = "ok"
        link(codes[4])
        assert browser.post("/slice/unlink/").status_code == 302
        assert not SliceCredential.objects.exists()

        assert slice_.issued == len(pairs)
        revoked = [parse_qs(c.request.body)["token"] for c in slice_.calls(REVOKE_URL)]
        assert revoked[0] == [pairs[3][1]] and revoked[-1] == [pairs[7][1]]

    captured = list(recorder.captured)
    printed = capsys.readouterr()

    places: list[Place] = [*dumps, *database_places()]
    places += record_places(captured)
    places += frame_places(captured)
    places += [Place("stdout", printed.out), Place("stderr", printed.err)]
    responses_seen = [*browser.seen, *staff.seen]
    for label, response in responses_seen:
        places += response_places(label, response)
    for index, message in enumerate(mail.outbox):
        places += mail_places(message, index)
    for index, published in enumerate(broker.published):
        places.append(Place(f"celery publish {index}", repr(published)))
    for index, raw in enumerate(raw_messages):
        places.append(Place(f"celery message {index}", json.dumps(raw, default=repr)))
        body = base64.b64decode(raw["message"]["body"]).decode("utf-8", "replace")
        places.append(Place(f"celery message {index} body", body))

    canaries = [Canary(SECRET, secret)]
    for access, refresh in pairs:
        canaries += [Canary(ACCESS, access), Canary(REFRESH, refresh)]
    canaries += [Canary(CODE, c) for c in codes]
    canaries += [Canary(STATE, s) for s in states]
    canaries += [Canary(VERIFIER, oauth.pkce_verifier(s)) for s in states]

    # Not vacuous: what was captured is what the scenario produced, the dumps hold the
    # credential's ciphertext and the sessions, and the allowed echoes really are there.
    table = SliceCredential._meta.db_table
    assert all("gAAAAA" in p.text for p in dumps if p.name.endswith(f"table {table} (1 rows)")), (
        "no credential row in a dump"
    )
    assert sum(1 for p in dumps if p.name.endswith(f"table {table} (1 rows)")) == 2
    assert sum(1 for p in dumps if " session " in f" {p.name.split(': ')[-1]}") >= 4
    assert len(mail.outbox) >= 5
    assert any(c.record.name == "django.db.backends" for c in captured)
    assert sum(1 for c in captured if c.record.name == "django.request" and c.record.exc_info) >= 5
    unstripped = [Place(p.name, p.text) for p in places if p.echo or p.allowed]
    echoed = {(h.kind, h.place.split()[0]) for h in scan(unstripped, canaries)}
    assert {(CODE, "record"), (STATE, "record"), (CODE, "mail"), (STATE, "mail")} <= echoed
    assert (STATE, "response") in echoed

    hits = scan(places, canaries)
    summary = (
        f"LEAK SCAN places={len(places)} records={len(captured)} hits={len(hits)} "
        f"(canaries={len(canaries)} x {len(canaries[0].forms())} forms, "
        f"mails={len(mail.outbox)}, responses={len(responses_seen)}, "
        f"celery messages={len(raw_messages)})"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    assert not hits, summary + "\n" + report(hits)


# -- the scanner itself ---------------------------------------------------------------------------


def test_the_scanner_finds_every_encoded_form() -> None:
    value = canary(REFRESH)
    item = Canary(REFRESH, value)
    texts = {
        "raw": f"...{value}...",
        "url": f"token={quote(value, safe='')}&x=1",
        "url-plus": urlencode({"token": value}),
        "double-url": quote(quote(value, safe=""), safe=""),
        "json": json.dumps({"token": value}).replace("/", "\\/"),
        "html": html.escape(f"<{value}>"),
        "hex": value.encode().hex(),
        "base64url": base64.urlsafe_b64encode(b"{" + value.encode()).decode(),
    }
    for prefix in (b"", b"x", b"xy"):
        blob = prefix + json.dumps({"t": value}).encode()
        texts[f"base64+{len(prefix)}"] = base64.b64encode(blob).decode()
    for name, text in texts.items():
        assert scan([Place(name, text)], [item]), name
    assert not scan([Place("allowed", value, frozenset({REFRESH}))], [item])
    assert not scan([Place("other", canary(REFRESH))], [item])


def test_only_request_echoes_of_code_and_state_are_allowed() -> None:
    state, code = canary(STATE), canary(CODE)
    url = f"{CALLBACK_PATH}?{urlencode({'state': state, 'code': code})}"
    canaries = [Canary(STATE, state), Canary(CODE, code), Canary(SECRET, "s3cr3t-CANARY")]
    texts = {
        "urllib3.connectionpool": f'http://localhost:8000 "GET {url} HTTP/1.1" 302 0',
        "django.request": f"Bad Request: {CALLBACK_PATH}\nrequest=<WSGIRequest: GET '{url}'>",
        "slice_connect.views": f"callback {url}",
    }
    captured = [
        Captured(logging.LogRecord(name, logging.DEBUG, __file__, 1, text, None, None), text)
        for name, text in texts.items()
    ]
    assert {h.place for h in scan(record_places(captured), canaries)} == {
        "record 2 slice_connect.views DEBUG"
    }
    # Outside the URL, even an access-log record must not hold them, nor the secret.
    text = f"Bad Request: {CALLBACK_PATH}\nextra={code} s3cr3t-CANARY"
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, text, None, None)
    found = scan(record_places([Captured(record, text)]), canaries)
    assert {h.kind for h in found} == {CODE, SECRET}
    # An error report's request section is an echo; a frame variable is not.
    report_text = f"GET:\nstate = '{state}'\n\nPOST:\nNo POST data\nQUERY_STRING = 'code={code}'"
    assert not scan([Place("mail", report_text, echo=True)], canaries)
    assert scan([Place("mail", f"{report_text}\ndata = {{'code': '{code}'}}", echo=True)], canaries)


# -- the same against the real sandbox (random tokens, real urllib3 logs) -------------------------


@pytest.mark.django_db(transaction=True)
def test_canary_leak_scan_against_the_sandbox(
    slice_server: Any,
    user: Any,
    browser_session: Callable[[Any], requests.Session],
    capsys: pytest.CaptureFixture[str],
) -> None:
    session = browser_session(user)
    base = slice_server.url
    seen: list[requests.Response] = []
    tokens: list[tuple[str, str]] = []

    def ours(response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if urlsplit(response.url).path.startswith("/slice/"):
            seen.append(response)

    session.hooks["response"].append(ours)

    def collect() -> SliceCredential:
        credential = SliceCredential.objects.get(user=user)
        assert isinstance(credential.access_token, str)
        assert isinstance(credential.refresh_token, str)
        tokens.append((credential.access_token, credential.refresh_token))
        return credential

    with debug_logging() as recorder:
        authorize_url = start_link(session, base, next_url="/after/")
        state = parse_qs(urlsplit(authorize_url).query)["state"][0]
        callback_url = consent(session, authorize_url, allow=True)
        code = parse_qs(urlsplit(callback_url).query)["code"][0]
        assert session.get(callback_url, allow_redirects=False, timeout=30).status_code == 302
        assert session.get(callback_url, allow_redirects=False, timeout=30).status_code == 400
        credential = collect()
        for _ in range(3):
            services.renew(credential, force=True)
            credential = collect()
        assert slice_server.token_requests("refresh_token") == 3
        dumps = snapshot("linked")
        page = session.get(f"{base}{AUTHORIZE_PATH}", timeout=10)
        unlinked = session.post(
            f"{base}/slice/unlink/",
            data={"csrfmiddlewaretoken": csrf_token(page.text)},
            allow_redirects=False,
            timeout=10,
        )
        assert unlinked.status_code == 302
        assert not SliceCredential.objects.exists()

    captured = list(recorder.captured)
    printed = capsys.readouterr()
    assert any(c.record.name.startswith("urllib3") and CALLBACK_PATH in c.text for c in captured)

    # The sandbox is the authorization server: its records about its own tokens and codes
    # are not ours. The client secret is searched in them too.
    sandbox = [c for c in captured if c.from_sandbox()]
    ours_records = [c for c in captured if not c.from_sandbox()]
    places: list[Place] = [*dumps, *database_places()]
    places += record_places(ours_records)
    places += record_places(sandbox, frozenset({ACCESS, REFRESH, CODE, STATE}))
    places += frame_places(ours_records)
    places += [Place("stdout", printed.out), Place("stderr", printed.err)]
    for answer in seen:
        label = f"{answer.request.method} {urlsplit(answer.url).path}"
        headers = [f"{k}: {v}" for k, v in answer.headers.items() if k.lower() != "location"]
        state_ok = frozenset({STATE}) if label == f"POST {AUTHORIZE_PATH}" else frozenset()
        places += [
            Place(f"response {label} Location", answer.headers.get("Location", ""), state_ok),
            Place(f"response {label} headers", "\n".join([str(answer.status_code), *headers])),
            Place(f"response {label} body", answer.text),
        ]

    canaries = [
        Canary(SECRET, slice_server.client_secret),
        Canary(CODE, code),
        Canary(STATE, state),
        Canary(VERIFIER, oauth.pkce_verifier(state)),
    ]
    for access, refresh in tokens:
        canaries += [Canary(ACCESS, access), Canary(REFRESH, refresh)]
    hits = scan(places, canaries)
    summary = (
        f"LEAK SCAN (sandbox) places={len(places)} records={len(captured)} hits={len(hits)} "
        f"(canaries={len(canaries)}, sandbox records={len(sandbox)}, responses={len(seen)})"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    assert not hits, summary + "\n" + report(hits)
