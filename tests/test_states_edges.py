"""Edges of slice_connect.states that mutation testing found unchecked (docs/development.rst).

Malformed session entries, the TTL boundary when an attempt starts, a state no UTF-8 codec
accepts, and a duplicate claim inside the caller's transaction.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import time_machine
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection, transaction
from django.http import HttpRequest
from django.test import RequestFactory

from slice_connect import states
from slice_connect.models import CallbackClaim


@pytest.fixture
def request_for(rf: RequestFactory) -> Any:
    def make(user: Any) -> HttpRequest:
        request = rf.get("/")
        request.session = SessionStore()
        request.user = user
        return request

    return make


def remember(request: HttpRequest, state: str) -> states.PendingAttempt:
    return states.remember(
        request, state, redirect_uri="https://app.test/cb/", use_pkce=True, next_url=None
    )


def stored_hashes(request: HttpRequest) -> list[str]:
    return [entry["state_hash"] for entry in request.session[states.SESSION_KEY]]


@pytest.mark.django_db
def test_an_entry_without_a_creation_time_is_dropped_when_an_attempt_starts(
    user: Any, request_for: Any
) -> None:
    # A session written by something else (or an older release): no "created" means no
    # proof it is fresh, so it goes, and starting a new attempt does not fail on it.
    request = request_for(user)
    request.session[states.SESSION_KEY] = [{"state_hash": "a" * 64, "user_id": "1"}]
    state = states.new_state()
    attempt = remember(request, state)
    assert stored_hashes(request) == [attempt.state_hash]


@pytest.mark.django_db
def test_an_attempt_exactly_ttl_old_is_kept_when_another_starts(
    user: Any, request_for: Any
) -> None:
    # The same boundary as is_expired: expired only when older than STATE_TTL (600 s).
    request = request_for(user)
    first, second, third = states.new_state(), states.new_state(), states.new_state()
    with time_machine.travel(1_900_000_000, tick=False) as clock:
        kept = remember(request, first)
        clock.shift(600)
        assert not states.is_expired(kept)
        remember(request, second)
        assert kept.state_hash in stored_hashes(request)
        clock.shift(1)
        remember(request, third)
        assert kept.state_hash not in stored_hashes(request)
        assert len(stored_hashes(request)) == 2


@pytest.mark.django_db
def test_a_state_utf8_cannot_encode_is_hashed_not_an_error(user: Any, request_for: Any) -> None:
    # A lone surrogate is a str that strict UTF-8 refuses: popping it must answer "unknown",
    # and an attempt stored under it is found again (surrogatepass, not an exception).
    request = request_for(user)
    odd = "state-\udc80-lone-surrogate"
    assert states.pop(request, odd) is None
    attempt = remember(request, odd)
    assert attempt.state_hash == hashlib.sha256(odd.encode("utf-8", "surrogatepass")).hexdigest()
    assert states.pop(request, odd) == attempt


@pytest.mark.django_db
def test_a_duplicate_claim_inside_a_transaction_leaves_it_usable(user: Any) -> None:
    # Inside the test's transaction the claim runs in it (run_durably); the refused INSERT
    # must not poison it. PostgreSQL aborts a transaction on any error, so without the
    # savepoint the next query fails there (SQLite rolls back only the statement).
    attempt = states.PendingAttempt("c" * 64, str(user.pk), 0.0, "https://app.test/cb/", True, None)
    assert connection.in_atomic_block
    assert states.claim(attempt) is True
    assert states.claim(attempt) is False
    assert CallbackClaim.objects.filter(state_hash="c" * 64).count() == 1
    with transaction.atomic():
        user.save()
