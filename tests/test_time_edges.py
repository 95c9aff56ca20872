"""Battery B11 (time edges) and B6-lite (a strict AS under random interleavings), R31/R32.

Rule and battery numbers are those of docs/threat-model.rst.

Everything runs on time-machine's frozen clock. Two peers:

* the sandbox (django-oauth-toolkit in the live server) where the server's own clock decides:
  the authorization code's 60 s life and our state TTL, driven through the real link flow;
* :class:`StrictAS`, a strict rotating authorization server and API in ``responses``
  callbacks with a clock of its own (``skew``): it issues relative ``expires_in``, kills a
  refresh token on use (grace 0), refuses expired tokens, can lose a response after it
  rotated, and records every refresh token and every bearer token presented.

The pass conditions of B11: an expired access token is never sent, and there is at most one
refresh per access-token lifetime (no storm). B6-lite: the client never presents a refresh
token it has seen succeed; a lost response costs at most one needs-re-link and no loop.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
import responses
import time_machine
from django.contrib.auth import get_user_model
from django.utils import timezone as dj_timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from slice_connect import oauth, services
from slice_connect.client import SliceClient
from slice_connect.conf import app_settings
from slice_connect.exceptions import NeedsReauth, SliceConnectError, TransientError
from slice_connect.models import SliceCredential
from tests.conftest import API_URL, TOKEN_URL

from .conftest import SliceServer
from .flow import consent, start_link
from .profiles import pick

T0 = datetime(2031, 7, 1, 12, 0, tzinfo=timezone.utc)
ACCESS_LIFETIME = timedelta(hours=1)
REFRESH_LIFETIME = timedelta(days=14)
LEEWAY = 120

Status = SliceCredential.Status
Reason = SliceCredential.Reason


# -- a strict AS and API with a clock of its own ---------------------------------------------


@dataclass
class Issued:
    family: int
    expires_at: datetime  # on the server's clock


@dataclass
class StrictAS:
    """Slice as a strict peer: rotation, grace 0, relative expiries, optional skew."""

    traveller: time_machine.Traveller | None = None
    skew: timedelta = timedelta(0)
    #: Time a token answer spends in flight (the client computes expiry at receipt).
    latency: timedelta = timedelta(0)
    #: Upcoming refresh answers to lose *after* the server rotated.
    lose: int = 0
    refresh_tokens: dict[str, Issued] = field(default_factory=dict)
    access_tokens: dict[str, Issued] = field(default_factory=dict)
    live: dict[int, str] = field(default_factory=dict)
    #: Every refresh token presented, in order; those whose 200 reached the client.
    presented: list[str] = field(default_factory=list)
    seen_succeed: set[str] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    #: Refresh tokens refused, and those killed by a rotation whose answer was lost.
    refused: list[str] = field(default_factory=list)
    killed_unseen: set[str] = field(default_factory=set)
    lost: int = 0
    revoked: set[str] = field(default_factory=set)
    access_of: dict[int, str] = field(default_factory=dict)
    bearer: list[str] = field(default_factory=list)
    expired_sent: list[str] = field(default_factory=list)
    _families: int = 0

    def now(self) -> datetime:
        return dj_timezone.now() + self.skew

    @property
    def token_requests(self) -> int:
        return len(self.presented)

    def issue(self, family: int | None = None) -> dict[str, Any]:
        if family is None:
            self._families += 1
            family = self._families
        now = self.now()
        access, refresh = f"at-{secrets.token_hex(8)}", f"rt-{secrets.token_hex(8)}"
        self.access_tokens[access] = Issued(family, now + ACCESS_LIFETIME)
        self.refresh_tokens[refresh] = Issued(family, now + REFRESH_LIFETIME)
        self.live[family] = refresh
        self.access_of[family] = access
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": int(ACCESS_LIFETIME.total_seconds()),
        }

    def token_set(self) -> oauth.TokenSet:
        """A fresh grant, as the code exchange would return it (for services.link)."""
        data = self.issue()
        return oauth.TokenSet(
            access_token=data["access_token"],
            refresh_token=data["refresh_token"],
            token_type="bearer",
            expires_in=data["expires_in"],
            received_at=dj_timezone.now(),
        )

    def token_endpoint(self, request: Any) -> tuple[int, dict[str, str], str]:
        form = parse_qs(str(request.body))
        presented = form["refresh_token"][0]
        if presented in self.seen_succeed:
            self.violations.append("presented a refresh token it had seen succeed")
        self.presented.append(presented)
        headers = {"Content-Type": "application/json"}
        issued = self.refresh_tokens.get(presented)
        if (
            issued is None
            or self.live.get(issued.family) != presented
            or issued.expires_at <= self.now()
        ):
            self.refused.append(presented)
            status, body = 400, {"error": "invalid_grant"}
        else:
            old_access = self.access_of.get(issued.family)
            if old_access is not None:
                self.revoked.add(old_access)  # rotation revokes the old access token too
            status, body = 200, self.issue(issued.family)
        if self.latency and self.traveller is not None:
            self.traveller.shift(self.latency)
        if self.lose:
            self.lose -= 1
            self.lost += 1
            if status == 200:
                self.killed_unseen.add(presented)
            raise requests.ReadTimeout("the answer was lost")
        if status == 200:
            self.seen_succeed.add(presented)
        return status, headers, json.dumps(body)

    def api(self, request: Any) -> tuple[int, dict[str, str], str]:
        token = request.headers["Authorization"].removeprefix("Bearer ")
        self.bearer.append(token)
        issued = self.access_tokens.get(token)
        unauthorized = 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'}, ""
        if issued is None or issued.expires_at <= self.now():
            self.expired_sent.append(token)
            return unauthorized
        if token in self.revoked:
            return unauthorized
        return 200, {"Content-Type": "application/json"}, json.dumps({"result": {"ok": True}})

    def register(self, mock: responses.RequestsMock) -> None:
        mock.add_callback(responses.POST, TOKEN_URL, callback=self.token_endpoint)
        mock.add_callback(responses.GET, API_URL, callback=self.api)


@pytest.fixture
def clock() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def strict_as(clock: time_machine.Traveller) -> Iterator[StrictAS]:
    server = StrictAS(traveller=clock)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        server.register(mock)
        yield server


def linked(server: StrictAS, user: Any) -> SliceCredential:
    return services.link(user, server.token_set())


def call_api(pk: int) -> Any:
    """One API call as a web request would make it: a fresh client on a fresh row."""
    with SliceClient(SliceCredential.objects.get(pk=pk)) as client:
        return client.get("users/self")


# -- the code and the state, on the live sandbox's clock -----------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("seconds", "linked_ok"), [(59, True), (61, False)])
def test_authorization_code_lifetime_edge(
    seconds: int, linked_ok: bool, slice_server: SliceServer, user: Any, browser_session: Any
) -> None:
    from example_project.slice_sandbox.conf import sandbox_seconds

    assert sandbox_seconds("CODE_SECONDS") == 60
    with time_machine.travel(dj_timezone.now(), tick=False) as traveller:
        session = browser_session(user)
        callback = consent(session, start_link(session, slice_server.url), allow=True)
        traveller.shift(seconds)  # the user's browser takes this long to come back
        response = session.get(callback, allow_redirects=False, timeout=30)

    assert slice_server.token_requests("authorization_code") == 1  # never retried
    if linked_ok:
        assert response.status_code == 302
        assert SliceCredential.objects.filter(user=user).exists()
        return
    assert response.status_code == 400
    assert "expired before it could be used" in response.text
    assert "Try again" in response.text
    assert not SliceCredential.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("delta", "linked_ok"), [(-1, True), (1, False)])
def test_state_ttl_edge(
    delta: int, linked_ok: bool, slice_server: SliceServer, user: Any, browser_session: Any
) -> None:
    ttl = app_settings.STATE_TTL.total_seconds()
    with time_machine.travel(dj_timezone.now(), tick=False) as traveller:
        session = browser_session(user)
        authorize_url = start_link(session, slice_server.url)
        traveller.shift(ttl + delta)  # the user lingers on Slice's consent page
        callback = consent(session, authorize_url, allow=True)
        response = session.get(callback, allow_redirects=False, timeout=30)

    if linked_ok:
        assert response.status_code == 302
        assert slice_server.token_requests("authorization_code") == 1
        assert SliceCredential.objects.filter(user=user).exists()
        return
    assert response.status_code == 400
    assert "This link request expired" in response.text
    assert slice_server.token_requests() == 0  # the code is never redeemed
    assert not SliceCredential.objects.exists()


# -- access and refresh token expiry, through SliceClient ------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("expires_in", "renews"),
    [
        pytest.param(-61, True, id="expired-61s-ago"),
        pytest.param(-59, True, id="expired-59s-ago"),
        pytest.param(1, True, id="expires-in-1s"),
        pytest.param(LEEWAY - 61, True, id="leeway-61s"),
        pytest.param(LEEWAY - 59, True, id="leeway-59s"),
        pytest.param(LEEWAY, True, id="at-leeway"),
        pytest.param(LEEWAY + 1, False, id="leeway+1s"),
    ],
)
def test_access_token_expiry_edges_never_send_an_expired_token(
    expires_in: int,
    renews: bool,
    strict_as: StrictAS,
    clock: time_machine.Traveller,
    user: Any,
) -> None:
    assert app_settings.ACCESS_TOKEN_LEEWAY == timedelta(seconds=LEEWAY)
    # Linked so that the access token expires ``expires_in`` seconds from now.
    clock.move_to(T0 - ACCESS_LIFETIME + timedelta(seconds=expires_in))
    credential = linked(strict_as, user)
    old_access = credential.access_token
    clock.move_to(T0)

    for _ in range(3):
        call_api(credential.pk)

    assert strict_as.token_requests == int(renews)
    assert strict_as.expired_sent == []
    sent = set(strict_as.bearer)
    assert len(strict_as.bearer) == 3 and len(sent) == 1  # one token for all three calls
    assert (sent == {old_access}) is not renews
    [token] = sent
    assert strict_as.access_tokens[token].expires_at > dj_timezone.now() + timedelta(seconds=LEEWAY)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("age", "ok"),
    [
        pytest.param(timedelta(days=13, hours=23), True, id="13d23h"),
        pytest.param(REFRESH_LIFETIME + timedelta(seconds=1), False, id="14d+1s"),
    ],
)
def test_refresh_token_age_edges(
    age: timedelta, ok: bool, strict_as: StrictAS, clock: time_machine.Traveller, user: Any
) -> None:
    credential = linked(strict_as, user)
    clock.shift(age)
    if ok:
        call_api(credential.pk)
        assert strict_as.token_requests == 1 and strict_as.refused == []
        row = SliceCredential.objects.get(pk=credential.pk)
        assert row.is_active and row.refresh_token_expires_at == T0 + age + REFRESH_LIFETIME
        assert strict_as.expired_sent == []
        return
    with pytest.raises(NeedsReauth) as excinfo:
        call_api(credential.pk)
    assert excinfo.value.reason == Reason.REFRESH_EXPIRED
    assert strict_as.token_requests == 0 and strict_as.bearer == []
    row = SliceCredential.objects.get(pk=credential.pk)
    assert (row.status, row.status_reason) == (Status.NEEDS_REAUTH, Reason.REFRESH_EXPIRED)
    with pytest.raises(NeedsReauth):
        call_api(credential.pk)  # and stays quiet
    assert strict_as.token_requests == 0


@pytest.mark.django_db
@pytest.mark.parametrize("skew_minutes", [-5, 5], ids=["app-5min-ahead", "app-5min-behind"])
@pytest.mark.parametrize("latency", [0, 30], ids=["instant", "30s-in-flight"])
def test_clock_skew_hour_of_calls_every_minute(
    skew_minutes: int,
    latency: int,
    strict_as: StrictAS,
    clock: time_machine.Traveller,
    user: Any,
) -> None:
    """The server's clock is off by 5 min; expiries are relative, computed at receipt."""
    strict_as.skew = timedelta(minutes=skew_minutes)
    credential = linked(strict_as, user)
    strict_as.latency = timedelta(seconds=latency)
    start = dj_timezone.now()

    calls = 0
    while dj_timezone.now() <= start + timedelta(hours=1):
        call_api(credential.pk)
        calls += 1
        clock.shift(timedelta(minutes=1))

    print(
        f"\nSKEW server_minus_app={skew_minutes:+d}min latency={latency}s calls={calls} "
        f"refreshes={strict_as.token_requests} expired_sent={len(strict_as.expired_sent)}"
    )
    assert calls >= 60
    assert strict_as.expired_sent == []  # never a 401, never an expired token sent
    assert 1 <= strict_as.token_requests <= 2  # at most one per access-token lifetime (+1)
    assert strict_as.refused == [] and strict_as.violations == []


# -- B6-lite: random interleavings against the strict AS -----------------------------------

#: Clock steps; the ones that make a renewal due (58 min and more) come most often.
ADVANCES = [
    timedelta(seconds=30),
    timedelta(minutes=58),
    timedelta(minutes=59),
    timedelta(hours=1),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=7),
    timedelta(days=14),
]


TALLY: Counter[str] = Counter()


class StrictASMachine(RuleBasedStateMachine):
    """link -> API call -> beat tick -> clock advance -> lost response, in any order."""

    def __init__(self) -> None:
        super().__init__()
        SliceCredential.objects.all().delete()
        get_user_model().objects.filter(username__startswith="machine-").delete()
        self.travel = time_machine.travel(T0, tick=False)
        self.traveller = self.travel.start()
        self.server = StrictAS(traveller=self.traveller)
        self.mock = responses.RequestsMock(assert_all_requests_are_fired=False)
        self.mock.start()
        self.server.register(self.mock)
        self.user = get_user_model().objects.create_user(
            username=f"machine-{secrets.token_hex(4)}", password="pw"
        )
        self.pk: int | None = None
        #: Lost answers armed but not yet consumed, and needs-re-link events per reason.
        self.episodes = 0
        self.relinks: dict[str, int] = {}

    def teardown(self) -> None:
        TALLY["examples"] += 1
        TALLY["lost_answers"] += self.server.lost
        TALLY["token_requests"] += self.server.token_requests
        TALLY["refused"] += len(self.server.refused)
        for reason, count in self.relinks.items():
            TALLY[f"relink_{reason}"] += count
        self.mock.stop()
        self.mock.reset()
        self.travel.stop()

    def _renewing(self, action: Any) -> None:
        """Run ``action``; check what one renewal may cost and how it may end."""
        before = self.server.token_requests
        status_before = self._status()
        try:
            action()
        except NeedsReauth:
            pass
        except TransientError:
            pass  # a lost answer twice: the journal keeps it for the next attempt
        except SliceConnectError as exc:  # pragma: no cover - a failure of the test
            raise AssertionError(f"unexpected {type(exc).__name__}: {exc.code}") from None
        spent = self.server.token_requests - before
        assert spent <= 2, f"{spent} token requests for one renewal (loop)"
        if status_before != Status.ACTIVE:
            assert spent == 0, "a needs-re-link credential was sent to Slice"
        row = self._row()
        if row is not None and status_before == Status.ACTIVE and not row.is_active:
            self.relinks[row.status_reason] = self.relinks.get(row.status_reason, 0) + 1

    def _row(self) -> SliceCredential | None:
        if self.pk is None:
            return None
        return SliceCredential.objects.get(pk=self.pk)

    def _status(self) -> str | None:
        row = self._row()
        return row.status if row is not None else None

    @initialize()
    def link_first(self) -> None:
        self.pk = services.link(self.user, self.server.token_set()).pk

    @rule()
    def relink(self) -> None:
        services.link(self.user, self.server.token_set())

    @rule()
    def api_call(self) -> None:
        assert self.pk is not None
        pk = self.pk
        self._renewing(lambda: call_api(pk))

    @rule()
    def beat_tick(self) -> None:
        def sweep() -> None:
            for pk in list(SliceCredential.objects.due_for_renewal().iter_ids()):
                services.renew_by_id(pk)

        self._renewing(sweep)

    @rule(by=st.sampled_from(ADVANCES))
    def clock_advance(self, by: timedelta) -> None:
        self.traveller.shift(by)

    @precondition(lambda self: self.server.lose == 0)
    @rule(answers=st.sampled_from([1, 2]))
    def lose_next_answers(self, answers: int) -> None:
        """The next refresh (and maybe its one retry) is processed, its answer lost."""
        self.server.lose = answers
        self.episodes += 1

    @invariant()
    def never_reuses_a_token_seen_to_succeed(self) -> None:
        assert self.server.violations == []

    @invariant()
    def never_sends_an_expired_access_token(self) -> None:
        assert self.server.expired_sent == []

    @invariant()
    def a_lost_answer_costs_at_most_one_relink(self) -> None:
        spent = self.relinks.get(Reason.LOST_ROTATION, 0) + self.relinks.get(
            Reason.INVALID_GRANT, 0
        )
        assert spent <= self.episodes
        assert set(self.relinks) <= {
            Reason.LOST_ROTATION,
            Reason.INVALID_GRANT,
            Reason.REFRESH_EXPIRED,
        }
        # The server only ever refused tokens that a rotation with a lost answer killed.
        assert set(self.server.refused) <= self.server.killed_unseen

    @invariant()
    def active_means_in_step_with_the_server(self) -> None:
        row = self._row()
        if row is None or not row.is_active or row.renewal_started_at is not None:
            return
        issued = self.server.refresh_tokens[str(row.refresh_token)]
        assert self.server.live[issued.family] == row.refresh_token, "silently out of step"


@pytest.mark.django_db
def test_strict_as_state_machine() -> None:
    TALLY.clear()
    run_state_machine_as_test(
        StrictASMachine,
        settings=settings(
            # 100 runs under the long profile (tests/profiles.py), 60 by default: fewer
            # explore too few renewals to be sure a lost answer was ever met.
            max_examples=pick(60, 100),
            stateful_step_count=20,
            deadline=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
    print(f"\nB6-lite {' '.join(f'{k}={v}' for k, v in sorted(TALLY.items()))}")
    assert TALLY["lost_answers"] > 0 and TALLY[f"relink_{Reason.LOST_ROTATION}"] > 0
