"""Pending authorization attempts, kept server-side in the user's session.

Each attempt is stored under the SHA-256 of its state, never the state itself (so a session
dump does not reveal it), together with the user it was started for, the redirect URI that
was sent, whether PKCE was used and the validated ``next`` target. The PKCE verifier is
derived from the state (:func:`slice_connect.oauth.pkce_verifier`) and so is not stored.

The session alone cannot make an attempt single-use across processes: several requests
carrying the same state at once (a double click, a reload, a prefetch) each load the
session before any of them saves it. :func:`claim` therefore claims the attempt in the
database (:class:`~slice_connect.models.CallbackClaim`, unique on the state's hash) before
the code is exchanged; exactly one request wins.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.debug import sensitive_variables

from . import durable
from .conf import app_settings
from .models import CallbackClaim

SESSION_KEY = "slice_connect_pending"
#: ``secrets.token_urlsafe(32)``: 256 bits, 43 URL-safe characters.
STATE_BYTES = 32


@dataclass(frozen=True)
class PendingAttempt:
    """One authorization attempt waiting for Slice to send the user back."""

    state_hash: str
    user_id: str
    created: float
    redirect_uri: str
    use_pkce: bool
    next_url: str | None


def new_state() -> str:
    """A fresh, unguessable state value."""
    return secrets.token_urlsafe(STATE_BYTES)


@sensitive_variables("state")
def _hash(state: str) -> str:
    return hashlib.sha256(state.encode("utf-8", "surrogatepass")).hexdigest()


def _load(request: HttpRequest) -> list[dict[str, Any]]:
    value = request.session.get(SESSION_KEY)
    return value if isinstance(value, list) else []


@sensitive_variables("state")
def remember(
    request: HttpRequest, state: str, *, redirect_uri: str, use_pkce: bool, next_url: str | None
) -> PendingAttempt:
    """Store a new attempt, dropping expired ones and the oldest beyond the limit."""
    now = time.time()
    ttl = app_settings.STATE_TTL.total_seconds()
    attempt = PendingAttempt(
        state_hash=_hash(state),
        user_id=str(request.user.pk),
        created=now,
        redirect_uri=redirect_uri,
        use_pkce=use_pkce,
        next_url=next_url,
    )
    pending = [a for a in _load(request) if now - float(a.get("created", 0)) <= ttl]
    pending.append(asdict(attempt))
    request.session[SESSION_KEY] = pending[-max(1, app_settings.MAX_PENDING_STATES) :]
    prune_claims()
    return attempt


def prune_claims() -> int:
    """Delete claims older than twice ``STATE_TTL``; returns how many went.

    Their attempts are expired by then, so the callback refuses them before the claim
    would matter. Runs whenever an attempt starts: a claim needs an attempt, so the table
    stays as small as the number of callbacks within that window.
    """
    cutoff = timezone.now() - 2 * app_settings.STATE_TTL
    deleted, _by_model = CallbackClaim.objects.filter(claimed_at__lt=cutoff).delete()
    return deleted


def claim(attempt: PendingAttempt) -> bool:
    """Claim ``attempt``'s single use across processes; ``False`` if it was claimed before.

    Inserts the state's hash under a unique key, committed at once (on its own connection
    when the caller is inside a transaction, e.g. ``ATOMIC_REQUESTS``; on SQLite, which
    allows one writer, inside that transaction, which then serializes the requests), so
    concurrent requests with the same state see exactly one ``True``.
    """
    return durable.run_durably(_insert_claim, attempt.state_hash)


def _insert_claim(state_hash: str) -> bool:
    # In autocommit one INSERT is its own transaction; inside one, a savepoint keeps a
    # duplicate key from breaking the caller's transaction.
    scope = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    try:
        with scope:
            CallbackClaim.objects.create(state_hash=state_hash)
    except IntegrityError:
        return False
    return True


@sensitive_variables("state")
def pop(request: HttpRequest, state: str) -> PendingAttempt | None:
    """Remove and return the attempt for ``state`` (expired or not), or ``None``.

    Every stored hash is compared in constant time, so timing reveals nothing about which
    prefix matched. The attempt is consumed even when the caller then rejects it.
    """
    wanted = _hash(state)
    found: dict[str, Any] | None = None
    keep: list[dict[str, Any]] = []
    for entry in _load(request):
        if constant_time_compare(str(entry.get("state_hash", "")), wanted) and found is None:
            found = entry
        else:
            keep.append(entry)
    if found is None:
        return None
    request.session[SESSION_KEY] = keep
    try:
        return PendingAttempt(**found)
    except TypeError:
        return None


def is_expired(attempt: PendingAttempt) -> bool:
    """Whether the attempt is older than ``STATE_TTL``."""
    return time.time() - attempt.created > app_settings.STATE_TTL.total_seconds()
