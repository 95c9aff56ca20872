"""Pending authorization attempts, kept server-side in the user's session.

Each attempt is stored under the SHA-256 of its state, never the state itself (so a session
dump does not reveal it), together with the user it was started for, the redirect URI that
was sent, whether PKCE was used and the validated ``next`` target. The PKCE verifier is
derived from the state (:func:`slice_connect.oauth.pkce_verifier`) and so is not stored.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.http import HttpRequest
from django.utils.crypto import constant_time_compare
from django.views.decorators.debug import sensitive_variables

from .conf import app_settings

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
    return attempt


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
