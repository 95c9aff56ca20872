"""B1 by property: Hypothesis fuzzing of the callback view and of ``safe_next``.

Rule and battery numbers are those of docs/threat-model.rst.

Each example builds a raw query string from state, code, error, error_description,
error_uri, iss and random extra parameters (repeated, oversized up to 64 KB, encoded in odd
ways: percent-encoded non-UTF-8, NUL, CR/LF, surrogates), picks a method (GET, POST, HEAD,
OPTIONS, PUT, DELETE) and a user (the logged-in one, rarely nobody), and may first seed real
pending attempts through the authorize view: fresh, expired, started by another user, or
kept in another session. The callback then runs with ``responses`` answering the token
endpoint with a valid token. Each example runs in its own transaction, rolled back.

The expected outcome is computed from the request as Django parses it (``request.GET``):

* the state is *valid* when the request is a GET from the logged-in user carrying exactly
  one well-formed ``state``, pending in this session, started by this user, not expired;
* a token request is made exactly when the state is valid, ``iss`` is absent or the issuer,
  no single-valued parameter is repeated, ``code`` is present once, non-empty and
  well-formed, and there is no ``error``; then a credential is linked and nothing else;
* a pending state named by a well-formed single ``state`` of a logged-in GET is consumed,
  whatever happens next (so every valid state is consumed); nothing else is consumed.

Properties: no 5xx and no exception; exactly the expected token requests; credentials
created or changed only then (the count, and the ciphertext bytes of another user's
credential); the expected states consumed; ``no-store`` and ``no-referrer`` on every answer;
no code or state in a Location.

Profiles: ``ci`` (1,000 examples per test) and ``dev`` (200), registered in
``tests/conftest.py``: ``dev`` by default, ``ci`` with ``SLICE_CONNECT_TEST_PROFILE=long``
(as ``.ci/run`` runs it) or when ``HYPOTHESIS_PROFILE`` names it (tox passes both through).
"""

from __future__ import annotations

import hashlib
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, urljoin, urlsplit

import pytest
import responses
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponseBase
from django.test import RequestFactory
from django.utils.http import url_has_allowed_host_and_scheme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slice_connect import states, views
from slice_connect.conf import app_settings
from slice_connect.models import SliceCredential
from tests.conftest import BASE_CONFIG, TOKEN_URL

pytestmark = pytest.mark.django_db

ISSUER = "https://slice.test"
CALLBACK = "/slice/callback/"
AUTHORIZE = "/slice/authorize/"
METHODS = ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE")
SINGLE_VALUED = views.SINGLE_VALUED
#: Settings for the fuzz tests themselves; the example count comes from the profile.
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

callback_view = views.CallbackView.as_view()
authorize_view = views.AuthorizeView.as_view()


# -- strategies -----------------------------------------------------------------------------------

#: Values worth trying anywhere.
SPECIAL = st.sampled_from(
    [
        "",
        "\r\n",
        "\x00",
        "%",
        "%00",
        "%0D%0A",
        "&",
        "=",
        "access_denied",
        "server_error",
        ISSUER,
        f"{ISSUER}/",
        "http://slice.test",
        "https://evil.example",
        "javascript:alert(1)",
        "<script>alert(1)</script>",
        "\ud800",
        "\udcff",
        "é",
        "\u202e",
    ]
)
OVERSIZED = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["a", "A", "%", "~", "é", "\x00", "\udcff"]),
    st.integers(min_value=500, max_value=65536),
)
TEXT = st.one_of(SPECIAL, st.text(max_size=40), OVERSIZED)
GOOD_CODE = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=64
)
EXTRA_NAMES = st.one_of(
    st.sampled_from([*SINGLE_VALUED, "next", "scope", "session_state", "x"]),
    st.text(min_size=1, max_size=12),
)


def _utf8(value: str) -> bytes:
    """UTF-8, with lone surrogates written as their (invalid) three-byte sequences."""
    return value.encode("utf-8", "surrogatepass")


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    # what a browser sends
    "form": lambda raw: quote_plus(raw).encode(),
    # every byte percent-encoded (%FF, %00, %0D%0A, %ED%A0%80 ...)
    "pct-all": lambda raw: "".join(f"%{b:02X}" for b in raw).encode(),
    # bytes as they are: non-ASCII, non-UTF-8, even "&", "=", "#" and spaces
    "raw": lambda raw: raw,
    # lowercase hex escapes
    "pct-lower": lambda raw: re.sub(
        "%[0-9A-F]{2}", lambda m: m.group().lower(), quote(raw, safe="")
    ).encode(),
}


ENCODER_NAMES = sorted(ENCODERS)


@st.composite
def encoded(draw: st.DrawFn, value: str | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else _utf8(value)
    return ENCODERS[draw(st.sampled_from(ENCODER_NAMES))](raw)


@dataclass(frozen=True)
class Case:
    """One fuzzed callback: who sends it, how, which attempts were seeded, the query."""

    method: str
    anonymous: bool
    seeds: tuple[str, ...]  # "fresh", "expired", "other-user", "other-session"
    next_url: str | None
    params: tuple[tuple[bytes, bytes | Seeded], ...]


@dataclass(frozen=True)
class Seeded:
    """The state of seeded attempt ``index``, mutated as named (placed in the query later)."""

    index: int
    mutation: str
    encoder: str


MUTATIONS = ["as-is", "as-is", "as-is", "upper", "truncated", "padded", "sha256", "pct-twice"]


@st.composite
def state_values(draw: st.DrawFn, seeds: int) -> str | bytes | Seeded:
    """A state: a seeded one (as is, or mutated), or junk."""
    if seeds and draw(st.booleans()):
        index = draw(st.integers(0, seeds - 1))
        return Seeded(index, draw(st.sampled_from(MUTATIONS)), draw(st.sampled_from(ENCODER_NAMES)))
    junk: str | bytes = draw(st.one_of(TEXT, st.binary(max_size=64)))
    return junk


SEED_KINDS = st.sampled_from(["fresh", "fresh", "expired", "other-user", "other-session"])
NEXT_URLS = st.sampled_from([None, "/after/", "//evil.example", "/ok?x=1"])
#: One thing that spoils an otherwise valid callback (``None``: nothing does).
SPOILERS = st.sampled_from(
    [None, None, None, None, "method", "anonymous", "expired", "expired", "other-user",
     "other-session", "state-mutated", "state-twice", "code-twice", "code-bad", "code-missing",
     "error", "error-and-no-code", "iss-wrong", "iss-twice", "single-repeated"]
)  # fmt: skip


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """Half nearly valid callbacks (one spoiler at most), half anything at all."""
    if draw(st.booleans()):
        return draw(nearly_valid())
    return draw(anything())


class Params:
    """Query parameters, encoded as they are added."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.items: list[tuple[bytes, bytes | Seeded]] = []

    def add(self, name: str, value: str | bytes | Seeded) -> None:
        if not isinstance(value, Seeded):
            value = self.draw(encoded(value))
        self.items.append((self.draw(encoded(name)), value))

    def shuffled(self) -> tuple[tuple[bytes, bytes | Seeded], ...]:
        return tuple(self.draw(st.permutations(self.items)))


@st.composite
def anything(draw: st.DrawFn) -> Case:
    method = draw(st.one_of(st.just("GET"), st.sampled_from(METHODS)))
    anonymous = draw(st.integers(0, 19)) == 0
    seeds = tuple(draw(st.lists(SEED_KINDS, max_size=3)))
    params = Params(draw)
    if draw(st.integers(0, 9)) > 0:
        params.add("state", draw(state_values(len(seeds))))
    code_kind = draw(st.sampled_from(["good", "good", "good", "none", "junk"]))
    if code_kind == "good":
        params.add("code", draw(GOOD_CODE))
    elif code_kind == "junk":
        params.add("code", draw(st.one_of(TEXT, st.binary(max_size=32))))
    iss = draw(st.sampled_from([None, None, None, ISSUER, "https://evil.example", ""]))
    if iss is not None:
        params.add("iss", iss)
    for name in draw(st.lists(EXTRA_NAMES, max_size=4)):
        params.add(name, draw(state_values(len(seeds))) if name == "state" else draw(TEXT))
    return Case(method, anonymous, seeds, draw(NEXT_URLS), params.shuffled())


@st.composite
def nearly_valid(draw: st.DrawFn) -> Case:
    spoiler = draw(SPOILERS)
    seeds = draw(st.lists(SEED_KINDS, max_size=2))
    target = draw(st.integers(0, len(seeds)))
    kind = spoiler if spoiler in ("expired", "other-user", "other-session") else "fresh"
    seeds.insert(target, kind)
    params = Params(draw)
    mutation = draw(st.sampled_from(MUTATIONS[3:])) if spoiler == "state-mutated" else "as-is"
    params.add("state", Seeded(target, mutation, draw(st.sampled_from(ENCODER_NAMES))))
    if spoiler == "state-twice":
        params.add("state", draw(state_values(len(seeds))))
    if spoiler not in ("code-missing", "error-and-no-code"):
        params.add("code", draw(GOOD_CODE))
    if spoiler == "code-twice":
        params.add("code", draw(st.one_of(GOOD_CODE, TEXT)))
    if spoiler == "code-bad":
        params.add("code", draw(st.one_of(TEXT, st.binary(max_size=32))))
        params.items.pop(-2)  # replaces the good one
    if spoiler in ("error", "error-and-no-code"):
        params.add("error", draw(st.one_of(st.sampled_from(list(views.ERROR_MESSAGES)), TEXT)))
    if spoiler == "single-repeated":
        name = draw(st.sampled_from(["error_description", "error_uri"]))
        params.add(name, draw(TEXT))
        params.add(name, draw(TEXT))
    iss = draw(st.sampled_from([None, ISSUER]))
    if spoiler == "iss-wrong":
        iss = draw(st.sampled_from(["https://evil.example", f"{ISSUER}/", "", "http://slice.test"]))
    if iss is not None:
        params.add("iss", iss)
    if spoiler == "iss-twice":
        params.add("iss", draw(st.sampled_from([ISSUER, "https://evil.example"])))
    for name in draw(
        st.lists(st.sampled_from(["scope", "session_state", "x", "next"]), max_size=3)
    ):
        params.add(name, draw(TEXT))
    method = draw(st.sampled_from(METHODS[1:])) if spoiler == "method" else "GET"
    return Case(method, spoiler == "anonymous", tuple(seeds), draw(NEXT_URLS), params.shuffled())


# -- running one case -----------------------------------------------------------------------------


def state_hash(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()


def mutate(state: str, mutation: str, encoder: str) -> bytes:
    """The seeded ``state`` mutated as named, then encoded (a double encoding stays as is)."""
    if mutation == "pct-twice":
        return "".join(f"%25{ord(ch):02X}" for ch in state).encode()
    value = {
        "as-is": state,
        "upper": state.upper(),
        "truncated": state[:-1],
        "padded": f"{state}=",
        "sha256": state_hash(state),
    }[mutation]
    return ENCODERS[encoder](value.encode())


@dataclass(frozen=True)
class Expected:
    """What the callback must do with a request, by the rules in the module docstring."""

    consumes: str | None  # the hash of the pending state the view must pop
    valid: bool
    call: bool
    denied: bool = False  # a valid "Deny" from Slice: a normal page, not a 4xx


def pending(session: SessionStore) -> list[str]:
    return [str(e.get("state_hash")) for e in session.get(states.SESSION_KEY, [])]


@dataclass
class World:
    """What every example shares: users, another user's credential, the mocked Slice."""

    factory: RequestFactory
    alice: Any
    bob: Any
    bob_credential: SliceCredential
    bob_bytes: tuple[bytes, bytes]
    mock: responses.RequestsMock
    examples: int = 0
    links: int = 0
    calls_by_status: dict[int, int] = field(default_factory=dict)

    def raw_tokens(self, pk: int) -> tuple[bytes, bytes]:
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT access_token, refresh_token FROM {SliceCredential._meta.db_table} "
                "WHERE id = %s",
                [pk],
            )
            row = cursor.fetchone()
        return bytes(row[0]), bytes(row[1])

    def token_calls(self) -> int:
        return sum(1 for c in self.mock.calls if c.request.url == TOKEN_URL)

    def seed(self, kind: str, session: SessionStore, other: SessionStore, next_url: Any) -> str:
        """Start a real attempt through the authorize view; return its state."""
        data = {"next": next_url} if next_url else {}
        request = self.factory.post(AUTHORIZE, data)
        # The view checks CSRF itself (csrf_protect); skip it as django.test.Client does:
        # the check has its own tests (test_self_protection.py).
        request._dont_enforce_csrf_checks = True
        request.user = self.bob if kind == "other-user" else self.alice
        request.session = other if kind == "other-session" else session
        response = authorize_view(request)
        assert response.status_code == 302
        return parse_qs(urlsplit(response["Location"]).query)["state"][0]

    @staticmethod
    def expire(session: SessionStore, state: str) -> None:
        """Age a pending attempt past the TTL (after seeding, which prunes expired ones)."""
        ttl = app_settings.STATE_TTL.total_seconds()
        for entry in session[states.SESSION_KEY]:
            if entry["state_hash"] == state_hash(state):
                entry["created"] -= ttl + 1

    def run(self, case: Case) -> None:
        self.examples += 1
        session, other = SessionStore(), SessionStore()
        seeded = [self.seed(kind, session, other, case.next_url) for kind in case.seeds]
        for kind, state in zip(case.seeds, seeded, strict=True):
            if kind == "expired":
                self.expire(session, state)
        parts = []
        for name, value in case.params:
            if isinstance(value, Seeded):
                value = mutate(seeded[value.index], value.mutation, value.encoder)
            parts.append(name + b"=" + value)
        query = b"&".join(parts).decode("latin-1")

        request = self.factory.generic(case.method, CALLBACK, QUERY_STRING=query)
        request.user = AnonymousUser() if case.anonymous else self.alice
        request.session = session
        before_pending = pending(session)
        before_count = SliceCredential.objects.count()
        before_calls = self.token_calls()

        expected = self.expectation(case, request, session, seeded)
        try:
            response = callback_view(request)
        except Exception as exc:  # an exception would be Django's 500
            raise AssertionError(f"the callback raised {exc!r} for {query[:300]!r}") from exc
        self.check(response, request, session, before_pending, expected)

        calls = self.token_calls() - before_calls
        self.calls_by_status[response.status_code] = (
            self.calls_by_status.get(response.status_code, 0) + 1
        )
        assert calls == int(expected.call), (calls, expected, query[:300])
        after_count = SliceCredential.objects.count()
        linked = SliceCredential.objects.filter(user=self.alice).exists()
        if expected.call:
            self.links += 1
            assert response.status_code == 302, response.status_code
            assert response["Location"] == (views.safe_next(request, case.next_url) or "/")
            assert (after_count, linked) == (before_count + 1, True)
        elif expected.denied:
            # The user's own "Deny" at Slice ends on a normal page.
            assert response.status_code == 200, response.status_code
            assert (after_count, linked) == (before_count, False)
        else:
            assert 400 <= response.status_code < 500, response.status_code
            assert (after_count, linked) == (before_count, False)
        assert self.raw_tokens(self.bob_credential.pk) == self.bob_bytes

    def expectation(
        self, case: Case, request: HttpRequest, session: SessionStore, seeded: list[str]
    ) -> Expected:
        params = request.GET
        state_values = params.getlist("state")
        state = state_values[0] if len(state_values) == 1 else ""
        well_formed = bool(state) and len(state) <= views.MAX_STATE_LENGTH and state.isprintable()
        consumes = None
        if case.method == "GET" and not case.anonymous and well_formed:
            wanted = state_hash(state)
            consumes = wanted if wanted in pending(session) else None
        valid = False
        if consumes is not None:
            (entry,) = [e for e in session[states.SESSION_KEY] if e["state_hash"] == consumes]
            age = time.time() - float(entry["created"])
            valid = (
                entry["user_id"] == str(self.alice.pk)
                and age <= app_settings.STATE_TTL.total_seconds()
            )
        issuers = params.getlist("iss")
        code_values = params.getlist("code")
        code = code_values[0] if len(code_values) == 1 else None
        accepted = (
            valid
            and issuers in ([], [ISSUER])
            and not any(len(params.getlist(name)) > 1 for name in SINGLE_VALUED)
        )
        denied = accepted and "code" not in params and params.get("error") == "access_denied"
        call = (
            accepted
            and code is not None
            and 0 < len(code) <= views.MAX_CODE_LENGTH
            and code.isascii()
            and code.isprintable()
            and "error" not in params
        )
        return Expected(consumes, valid, call, denied)

    def check(
        self,
        response: HttpResponseBase,
        request: HttpRequest,
        session: SessionStore,
        before: list[str],
        expected: Expected,
    ) -> None:
        assert response.status_code < 500, response.status_code
        assert response["Cache-Control"] == "no-store"
        assert response["Referrer-Policy"] == "no-referrer"
        after = pending(session)
        if expected.consumes is None:
            assert after == before
        else:
            assert after == [h for h in before if h != expected.consumes]
        if expected.valid:
            assert expected.consumes not in after  # consumed whenever it was valid
        location = response.get("Location", "")
        for value in (*request.GET.getlist("state"), *request.GET.getlist("code")):
            if len(value) >= 8:
                assert value not in location


@pytest.fixture
def world(
    make_user: Callable[..., Any],
    make_credential: Callable[..., SliceCredential],
    settings: Any,
) -> Iterator[World]:
    settings.SLICE_CONNECT = {
        **BASE_CONFIG,
        "CLIENT_ID": "fuzz-client",
        "CLIENT_SECRET": "fuzz-secret",
    }
    alice, bob = make_user("alice"), make_user("bob")
    credential = make_credential(bob)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(
            TOKEN_URL,
            json={
                "access_token": "fuzz-access",
                "refresh_token": "fuzz-refresh",
                "token_type": "Bearer",
                "expires_in": 3600,
            },
        )
        world = World(RequestFactory(), alice, bob, credential, (b"", b""), mock)
        world.bob_bytes = world.raw_tokens(credential.pk)
        yield world


def test_fuzzed_callbacks(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    @FUZZ
    @given(case=cases())
    def fuzz(case: Case) -> None:
        with transaction.atomic():
            world.run(case)
            transaction.set_rollback(True)

    started = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - started
    assert world.examples >= settings().max_examples
    assert world.links > 0, "no example reached the token endpoint"
    with capsys.disabled():
        print(
            f"\nFUZZ callback examples={world.examples} links={world.links} "
            f"statuses={dict(sorted(world.calls_by_status.items()))} time={elapsed:.1f}s"
        )


# -- safe_next ------------------------------------------------------------------------------------

HOSTILE_PREFIXES = st.sampled_from(
    [
        "",
        "/",
        "//",
        "/\\",
        "\\",
        "\\\\",
        "///",
        "/%2F",
        "/%5C",
        "http:",
        "https://",
        "\t/",
        " /",
        "/\t/",
        "/\n/",
        "javascript:",
        "/@",
        "/.",
        "//testserver",
        "/\x00",
        "/\x7f",
    ]
)
NEXT_TARGETS = st.one_of(
    st.text(),
    st.builds(lambda prefix, rest: prefix + rest, HOSTILE_PREFIXES, st.text(max_size=30)),
)


def test_safe_next_accepts_only_same_site_paths() -> None:
    factory = RequestFactory()
    count = 0

    @FUZZ
    @given(target=NEXT_TARGETS, secure=st.booleans())
    def check(target: str, secure: bool) -> None:
        nonlocal count
        count += 1
        request = factory.get("/", secure=secure)
        result = views.safe_next(request, target)
        if result is None:
            return
        assert result == target
        assert result.startswith("/")
        assert not result.startswith(("//", "/\\"))
        assert "\\" not in result
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in result)
        assert url_has_allowed_host_and_scheme(
            result, allowed_hosts={request.get_host()}, require_https=secure
        )
        # And a browser resolving it stays on this site.
        base = f"{'https' if secure else 'http'}://{request.get_host()}/"
        resolved = urlsplit(urljoin(base, result))
        assert (resolved.scheme, resolved.netloc) == tuple(urlsplit(base)[:2])

    check()
    assert count >= settings().max_examples


def test_safe_next_refuses_every_control_character() -> None:
    request = RequestFactory().get("/")

    @FUZZ
    @given(target=st.builds(lambda a, b: f"/{a}{b}", st.text(max_size=5), st.text(max_size=5)))
    def check(target: str) -> None:
        result = views.safe_next(request, target)
        if result is not None:
            assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in result)

    check()
