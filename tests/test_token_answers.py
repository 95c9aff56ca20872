"""Token answers at a strictly rotating server: keep the only live refresh token.

* An odd but usable 200 (docs/threat-model.rst R42): every variant leaves a link that a
  later renewal can use at a server that rotates strictly (no grace period).
* "Rotated, then 5xx" (R43): a gateway answers 502/504 after the upstream rotated. The
  answer is treated as lost: one immediate same-token retry, then ``lost_rotation`` at a
  strict server (never ``invalid_grant``), and a working link at a server with a grace
  period.
* A server that does not rotate (R44) is renewed once per due window, not on every beat run:
  a simulated week with an hourly beat.

The server here is a strict double (``responses``): it remembers the one live refresh token
and refuses every other with ``invalid_grant``, exactly like django-oauth-toolkit with
``REFRESH_TOKEN_GRACE_PERIOD_SECONDS = 0``.
"""

from __future__ import annotations

import codecs
import itertools
import json
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs

import pytest
import responses
import time_machine

from slice_connect import services
from slice_connect.exceptions import NeedsReauth, ResponseLost
from slice_connect.models import SliceCredential
from tests.conftest import TOKEN_URL

pytestmark = pytest.mark.django_db

T0 = datetime(2031, 3, 14, 9, 0, 0, tzinfo=timezone.utc)
Reason = SliceCredential.Reason
_DROP = object()


class StrictServer:
    """A token endpoint that rotates strictly; ``script`` shapes its next answers."""

    def __init__(self, live: str, *, grace: bool = False, rotate: bool = True) -> None:
        self.live = live
        self.previous: str | None = None
        self.grace = grace
        self.rotate = rotate
        #: Functions applied to the next answers (payload dict -> (status, body, headers)).
        self.script: list[Callable[[dict[str, Any]], tuple[int, bytes, dict[str, str]]]] = []
        self.refreshes = 0
        self.refused = 0

    def __call__(self, request: Any) -> tuple[int, dict[str, str], bytes]:
        form = parse_qs(request.body)
        token = form["refresh_token"][0]
        self.refreshes += 1
        if token == self.previous and self.grace:
            pass  # inside the grace period: the old token still works once more
        elif token != self.live:
            self.refused += 1
            return 400, {"Content-Type": "application/json"}, b'{"error": "invalid_grant"}'
        payload: dict[str, Any] = {
            "access_token": f"access-{secrets.token_hex(6)}",
            "token_type": "Bearer",
            "expires_in": 3600,
        }
        if self.rotate:
            self.previous, self.live = self.live, f"refresh-{secrets.token_hex(8)}"
            payload["refresh_token"] = self.live
        if self.script:
            status, body, headers = self.script.pop(0)(payload)
            return status, headers, body
        return 200, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def odd(**changes: Any) -> Callable[[dict[str, Any]], tuple[int, bytes, dict[str, str]]]:
    def shape(payload: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        for key, value in changes.items():
            if value is _DROP:
                payload.pop(key, None)
            else:
                payload[key] = value
        return 200, json.dumps(payload).encode(), {"Content-Type": "application/json"}

    return shape


def raw(content_type: str | None, *, bom: bool = False) -> Callable[..., Any]:
    def shape(payload: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        headers = {} if content_type is None else {"Content-Type": content_type}
        return 200, (codecs.BOM_UTF8 + body if bom else body), headers

    return shape


def gateway_error(status: int) -> Callable[..., Any]:
    def shape(payload: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
        # The upstream rotated (the payload was made), the gateway lost it.
        return status, b"<html>Bad gateway</html>", {"Content-Type": "text/html"}

    return shape


ODD_VARIANTS = {
    "expires_in-0": odd(expires_in=0),
    "expires_in-negative": odd(expires_in=-5),
    "expires_in-fractional": odd(expires_in=3599.75),
    "expires_in-absurd": odd(expires_in=10**15),
    "expires_in-missing": odd(expires_in=_DROP),
    "expires_in-string": odd(expires_in="3600"),
    "expires_in-word": odd(expires_in="an hour"),
    "token_type-upper": odd(token_type="BEARER"),
    "token_type-unknown": odd(token_type="mac"),
    "token_type-missing": odd(token_type=_DROP),
    "access_token-empty": odd(access_token=""),
    "access_token-not-latin-1": odd(access_token="jeton-\u20ac"),
    "content-type-missing": raw(None),
    "content-type-text-plain": raw("text/plain"),
    "utf-8-bom": raw("application/json", bom=True),
    "jwt-sized-tokens": odd(access_token="eyJ" + "a" * 6000),
}


@pytest.fixture
def frozen() -> Iterator[time_machine.Traveller]:
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


@pytest.fixture
def strict(
    user: Any, make_credential: Callable[..., SliceCredential], frozen: Any
) -> Iterator[tuple[StrictServer, SliceCredential, responses.RequestsMock]]:
    credential = make_credential(user, refresh_token_expires_at=T0 + timedelta(days=10))
    server = StrictServer(live=str(credential.refresh_token))
    with responses.RequestsMock() as mock:
        mock.add_callback(responses.POST, TOKEN_URL, callback=server)
        yield server, credential, mock


@pytest.mark.parametrize("variant", ODD_VARIANTS.values(), ids=ODD_VARIANTS.keys())
def test_odd_200_keeps_a_link_that_renews_again(
    variant: Callable[..., Any],
    strict: tuple[StrictServer, SliceCredential, responses.RequestsMock],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, credential, _mock = strict
    server.script.append(variant)
    services.renew(credential, force=True)
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.refresh_token == server.live  # the rotated token was kept
    assert stored.status == SliceCredential.Status.ACTIVE and stored.version == 2
    # The access token is trusted at most as long as the answer allows, never longer.
    assert stored.access_token_expires_at <= T0 + timedelta(hours=1)

    # The link still works at the strict server: the next renewal rotates again.
    services.renew(credential, force=True)
    stored.refresh_from_db()
    assert stored.refresh_token == server.live and stored.version == 3
    assert (server.refreshes, server.refused) == (2, 0)
    for record in caplog.records:  # what was odd is logged by name, never by value
        assert server.live not in record.getMessage()
        assert "jeton" not in record.getMessage()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_rotated_then_5xx_is_a_lost_rotation_at_a_strict_server(
    status: int, strict: tuple[StrictServer, SliceCredential, responses.RequestsMock]
) -> None:
    server, credential, _mock = strict
    server.script.append(gateway_error(status))
    with pytest.raises(NeedsReauth) as excinfo:
        services.renew(credential, force=True)
    # One immediate retry with the same token; the strict server refused it: the rotation
    # was lost in transit, which is not the user revoking access.
    assert (server.refreshes, server.refused) == (2, 1)
    assert excinfo.value.reason == Reason.LOST_ROTATION
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status_reason == Reason.LOST_ROTATION


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_rotated_then_5xx_keeps_the_link_at_a_server_with_grace(
    status: int, strict: tuple[StrictServer, SliceCredential, responses.RequestsMock]
) -> None:
    server, credential, _mock = strict
    server.grace = True
    server.script.append(gateway_error(status))
    services.renew(credential, force=True)
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.refresh_token == server.live and stored.status == "active"
    assert server.refreshes == 2


def test_5xx_twice_keeps_the_journal_and_the_token(
    strict: tuple[StrictServer, SliceCredential, responses.RequestsMock],
) -> None:
    server, credential, _mock = strict
    server.rotate = False  # a real outage: nothing was processed
    server.script += [gateway_error(503), gateway_error(503)]
    with pytest.raises(ResponseLost) as excinfo:
        services.renew(credential, force=True)
    assert excinfo.value.code == "http_503"
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.renewal_started_at == T0 and stored.refresh_token == credential.refresh_token
    services.renew(credential, force=True)  # Slice is back: the same token still works
    assert SliceCredential.objects.get(pk=credential.pk).status == "active"


def run_beat(server: StrictServer, frozen: time_machine.Traveller, hours: int) -> list[datetime]:
    """An hourly beat for ``hours``; returns when each refresh happened."""
    renewed_at: list[datetime] = []
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.POST, TOKEN_URL, callback=server)
        for _hour in range(hours):
            frozen.shift(timedelta(hours=1))
            for pk in list(SliceCredential.objects.due_for_renewal().iter_ids()):
                before = server.refreshes
                try:
                    services.renew_with_result(SliceCredential.objects.get(pk=pk))
                except NeedsReauth:
                    pass
                if server.refreshes > before:
                    renewed_at.append(datetime.now(timezone.utc))
    return renewed_at


def test_a_server_that_does_not_rotate_is_not_renewed_on_every_beat_run(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    frozen: time_machine.Traveller,
) -> None:
    """A simulated week with an hourly beat at a server that never rotates."""
    credential = make_credential(
        user,
        access_token_expires_at=T0 + timedelta(hours=1),
        refresh_token_expires_at=T0 + timedelta(days=8),  # due in a day
    )
    server = StrictServer(live=str(credential.refresh_token), rotate=False)
    renewed_at = run_beat(server, frozen, 7 * 24)
    # Due from day 1; each answer held no new refresh token, so the next renewal waits for
    # half the life left: days 1, 4.5 and 6.25 (without the rule: every run, 145 refreshes).
    assert [round((t - T0).total_seconds() / 3600) for t in renewed_at] == [24, 108, 150]
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.refresh_token == credential.refresh_token
    assert stored.refresh_token_expires_at == T0 + timedelta(days=8)
    assert stored.status == "active"

    # Once expired it is swept again, to be marked (with no request: it cannot work).
    frozen.shift(timedelta(days=1, hours=1))
    due = list(SliceCredential.objects.due_for_renewal().iter_ids())
    assert due == [credential.pk]
    with pytest.raises(NeedsReauth):
        services.renew_with_result(SliceCredential.objects.get(pk=credential.pk))
    assert server.refreshes == 3


def test_refresh_tokens_shorter_lived_than_renew_within_are_renewed_at_half_life(
    user: Any,
    make_credential: Callable[..., SliceCredential],
    frozen: time_machine.Traveller,
) -> None:
    """A rotating server whose refresh tokens live 3 days (RENEW_WITHIN is 7): two weeks."""
    credential = make_credential(
        user,
        access_token_expires_at=T0 + timedelta(hours=1),
        refresh_token_expires_at=T0 + timedelta(days=3),
        last_renewed_at=T0,
    )
    server = StrictServer(live=str(credential.refresh_token))
    server.script = [odd(refresh_token_expires_in=3 * 24 * 3600) for _ in range(20)]
    renewed_at = run_beat(server, frozen, 14 * 24)
    gaps = {round((b - a).total_seconds() / 3600) for a, b in itertools.pairwise(renewed_at)}
    assert gaps == {36} and len(renewed_at) == 9  # every 1.5 days, never every run
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.status == "active" and stored.refresh_token == server.live


def test_a_non_rotating_answer_with_a_stated_lifetime_moves_the_expiry(
    strict: tuple[StrictServer, SliceCredential, responses.RequestsMock],
) -> None:
    server, credential, _mock = strict
    server.rotate = False
    server.script.append(odd(refresh_token_expires_in=14 * 24 * 3600))
    services.renew(credential, force=True)
    stored = SliceCredential.objects.get(pk=credential.pk)
    assert stored.refresh_token == credential.refresh_token
    assert stored.refresh_token_expires_at == T0 + timedelta(days=14)
    assert not stored.refresh_token_due()
