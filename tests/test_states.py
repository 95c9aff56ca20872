"""Pending authorization attempts: strong state, hashed storage, eviction, TTL, PKCE."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string
from typing import Any

import pytest
import time_machine
from django.contrib.sessions.backends.db import SessionStore
from django.http import HttpRequest
from django.test import RequestFactory, override_settings

from slice_connect import oauth, states

URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")
CREDENTIALS = {"CLIENT_ID": "x", "CLIENT_SECRET": "y"}


@pytest.fixture
def request_for(rf: RequestFactory) -> Any:
    def make(user: Any, session: SessionStore | None = None) -> HttpRequest:
        request = rf.get("/")
        request.session = session if session is not None else SessionStore()
        request.user = user
        return request

    return make


def remember(request: HttpRequest, state: str, next_url: str | None = None) -> Any:
    return states.remember(
        request,
        state,
        redirect_uri="https://app.test/slice/callback/",
        use_pkce=True,
        next_url=next_url,
    )


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def stored_hashes(request: HttpRequest) -> list[str]:
    return [entry["state_hash"] for entry in request.session.get(states.SESSION_KEY, [])]


# -- the state value ------------------------------------------------------------------


def test_state_is_long_url_safe_and_unique() -> None:
    values = [states.new_state() for _ in range(10_000)]
    assert len(set(values)) == 10_000
    for value in values:
        assert len(value) >= 43
        assert URL_SAFE.match(value), value


def test_state_carries_at_least_256_bits() -> None:
    value = states.new_state()
    assert len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) >= 32


# -- storage ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_session_stores_only_the_hash(user: Any, request_for: Any) -> None:
    request = request_for(user)
    state = states.new_state()
    attempt = remember(request, state, next_url="/after/")
    assert attempt.state_hash == sha256(state)
    assert stored_hashes(request) == [sha256(state)]
    dumped = json.dumps(dict(request.session.items()))
    assert state not in dumped
    assert oauth.pkce_verifier(state) not in dumped
    entry = request.session[states.SESSION_KEY][0]
    assert entry["user_id"] == str(user.pk)
    assert entry["redirect_uri"] == "https://app.test/slice/callback/"
    assert entry["use_pkce"] is True
    assert entry["next_url"] == "/after/"
    assert set(entry) == {
        "state_hash",
        "user_id",
        "created",
        "redirect_uri",
        "use_pkce",
        "next_url",
    }


@pytest.mark.django_db
def test_persisted_session_contains_neither_state_nor_verifier(user: Any, request_for: Any) -> None:
    request = request_for(user)
    state = states.new_state()
    remember(request, state)
    request.session.save()
    from django.contrib.sessions.models import Session

    row = Session.objects.get(session_key=request.session.session_key)
    decoded = json.dumps(row.get_decoded())
    for secret in (state, oauth.pkce_verifier(state)):
        assert secret not in row.session_data
        assert secret not in decoded
    assert sha256(state) in decoded


@pytest.mark.django_db
def test_eleventh_attempt_evicts_the_oldest(user: Any, request_for: Any) -> None:
    request = request_for(user)
    values = [states.new_state() for _ in range(11)]
    for value in values:
        remember(request, value)
    assert stored_hashes(request) == [sha256(v) for v in values[1:]]
    assert states.pop(request, values[0]) is None
    for value in values[1:]:
        assert states.pop(request, value) is not None


@pytest.mark.django_db
@pytest.mark.parametrize("limit", [1, 3])
def test_max_pending_states_is_configurable(user: Any, request_for: Any, limit: int) -> None:
    request = request_for(user)
    values = [states.new_state() for _ in range(5)]
    with override_settings(SLICE_CONNECT={**CREDENTIALS, "MAX_PENDING_STATES": limit}):
        for value in values:
            remember(request, value)
    assert stored_hashes(request) == [sha256(v) for v in values[-limit:]]


@pytest.mark.django_db
def test_pop_is_single_use(user: Any, request_for: Any) -> None:
    request = request_for(user)
    state, other = states.new_state(), states.new_state()
    remember(request, state, next_url="/n/")
    remember(request, other)
    attempt = states.pop(request, state)
    assert attempt is not None
    assert attempt.next_url == "/n/"
    assert attempt.user_id == str(user.pk)
    assert states.pop(request, state) is None
    assert stored_hashes(request) == [sha256(other)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "probe",
    [
        lambda s: s[:-1],
        lambda s: s + "A",
        lambda s: s.upper(),
        lambda s: sha256(s),
        lambda s: "",
    ],
    ids=["truncated", "extended", "upper", "the-hash-itself", "empty"],
)
def test_pop_of_a_wrong_state_finds_nothing_and_consumes_nothing(
    user: Any, request_for: Any, probe: Any
) -> None:
    request = request_for(user)
    state = states.new_state()
    remember(request, state)
    assert states.pop(request, probe(state)) is None
    assert stored_hashes(request) == [sha256(state)]


@pytest.mark.django_db
def test_pop_in_another_session_finds_nothing(user: Any, request_for: Any) -> None:
    first, second = request_for(user), request_for(user)
    state = states.new_state()
    remember(first, state)
    assert states.pop(second, state) is None
    assert stored_hashes(first) == [sha256(state)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "junk",
    ["not a list", {"state_hash": "x"}, None, 42],
    ids=["str", "dict", "none", "int"],
)
def test_corrupt_session_value_is_treated_as_empty(user: Any, request_for: Any, junk: Any) -> None:
    request = request_for(user)
    request.session[states.SESSION_KEY] = junk
    state = states.new_state()
    assert states.pop(request, state) is None
    remember(request, state)
    assert stored_hashes(request) == [sha256(state)]


@pytest.mark.django_db
def test_malformed_entry_with_matching_hash_is_consumed_and_refused(
    user: Any, request_for: Any
) -> None:
    request = request_for(user)
    state = states.new_state()
    request.session[states.SESSION_KEY] = [{"state_hash": sha256(state), "unexpected": 1}]
    assert states.pop(request, state) is None
    assert request.session[states.SESSION_KEY] == []


# -- TTL --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ttl_boundary(user: Any, request_for: Any) -> None:
    request = request_for(user)
    state = states.new_state()
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        remember(request, state)
        attempt = states.pop(request, state)
        assert attempt is not None
        clock.shift(600)
        assert states.is_expired(attempt) is False
        clock.shift(1)
        assert states.is_expired(attempt) is True


@pytest.mark.django_db
def test_ttl_is_read_live(user: Any, request_for: Any) -> None:
    request = request_for(user)
    state = states.new_state()
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        remember(request, state)
        attempt = states.pop(request, state)
        assert attempt is not None
        clock.shift(31)
        assert not states.is_expired(attempt)
        with override_settings(SLICE_CONNECT={**CREDENTIALS, "STATE_TTL": 30}):
            assert states.is_expired(attempt)


@pytest.mark.django_db
def test_expired_attempts_are_dropped_when_a_new_one_starts(user: Any, request_for: Any) -> None:
    request = request_for(user)
    old, fresh = states.new_state(), states.new_state()
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        remember(request, old)
        clock.shift(601)
        remember(request, fresh)
    assert stored_hashes(request) == [sha256(fresh)]


@pytest.mark.django_db
def test_expired_attempt_is_still_popped(user: Any, request_for: Any) -> None:
    # The caller learns it expired (and it is gone), rather than "unknown".
    request = request_for(user)
    state = states.new_state()
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        remember(request, state)
        clock.shift(3600)
        attempt = states.pop(request, state)
        assert attempt is not None and states.is_expired(attempt)
    assert stored_hashes(request) == []


# -- PKCE -------------------------------------------------------------------------------


def b64url_sha256(value: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(value.encode()).digest()).rstrip(b"=").decode()


def test_pkce_rfc7636_appendix_b_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert oauth.pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_pkce_verifier_shape_and_challenge() -> None:
    unreserved = set(string.ascii_letters + string.digits + "-._~")
    seen = set()
    for _ in range(200):
        state = states.new_state()
        verifier = oauth.pkce_verifier(state)
        assert len(verifier) == 43
        assert set(verifier) <= unreserved
        assert verifier != state and state not in verifier
        challenge = oauth.pkce_challenge(verifier)
        assert challenge == b64url_sha256(verifier)
        assert "=" not in challenge and len(challenge) == 43
        seen.add(verifier)
    assert len(seen) == 200


def test_pkce_verifier_is_stable_per_state_and_keyed_on_secret_key() -> None:
    state = states.new_state()
    verifier = oauth.pkce_verifier(state)
    assert oauth.pkce_verifier(state) == verifier
    with override_settings(SECRET_KEY="another-secret-key-entirely"):
        assert oauth.pkce_verifier(state) != verifier


def test_state_generation_uses_secrets(monkeypatch: Any) -> None:
    calls: list[int] = []

    def fake(nbytes: int) -> str:
        calls.append(nbytes)
        return "x" * 43

    monkeypatch.setattr(states.secrets, "token_urlsafe", fake)
    assert states.new_state() == "x" * 43
    assert calls == [32]
