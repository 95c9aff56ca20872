"""HTTP to Slice's OAuth endpoints: authorization URL, code exchange, refresh, revoke.

Nothing here touches the database. Every call goes through :mod:`slice_connect.http` (one
bounded transport: a wall-clock deadline, decoded and capped bodies, no redirects, TLS
verified), sends the client credentials in the form body (as Slice documents) and turns
every failure into one of the errors in :mod:`slice_connect.exceptions`.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables
from requests_oauthlib import OAuth2Session

from . import http
from .conf import app_settings
from .exceptions import (
    ConfigurationError,
    InvalidTokenResponse,
    ResponseLost,
    ResponseTooLarge,
    SliceConnectError,
    TokenRequestFailed,
    TransientError,
)
from .http import retry_after_seconds

logger = logging.getLogger(__name__)

#: Token responses are small; anything larger is refused unread.
MAX_RESPONSE_BYTES = 64 * 1024
#: Longest token accepted: room for JWTs with many claims, far below the response cap.
MAX_TOKEN_LENGTH = 16 * 1024
#: Used when Slice omits ``expires_in`` (its documented access-token lifetime).
DEFAULT_EXPIRES_IN = 3600
#: Lifetime given to an access token whose ``expires_in`` is odd (zero, negative, absurd,
#: not a number): trusted only briefly, so the next use after it renews.
ODD_EXPIRES_IN = 300

CONFIGURATION_ERRORS = frozenset(
    {"invalid_client", "unauthorized_client", "unsupported_grant_type", "invalid_scope"}
)


@dataclass(frozen=True, repr=False)
class TokenSet:
    """A validated token response. Its ``repr`` never shows a token."""

    access_token: str
    refresh_token: str | None
    token_type: str
    expires_in: int
    received_at: datetime
    refresh_expires_in: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: What was odd about the answer (field names and kinds, never values).
    odd: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (
            f"<TokenSet token_type={self.token_type} expires_in={self.expires_in} "
            f"refresh_token={'yes' if self.refresh_token else 'no'}>"
        )

    @property
    def access_token_expires_at(self) -> datetime:
        """Absolute expiry of the access token, from the moment the response arrived."""
        return self.received_at + timedelta(seconds=self.expires_in)

    @property
    def refresh_token_expires_at(self) -> datetime:
        """Absolute expiry of the refresh token (Slice's value, else the configured lifetime)."""
        if self.refresh_expires_in is not None:
            return self.received_at + timedelta(seconds=self.refresh_expires_in)
        return self.received_at + app_settings.REFRESH_TOKEN_LIFETIME


# -- authorization request -------------------------------------------------------------


@sensitive_variables("state")
def pkce_verifier(state: str) -> str:
    """Derive the PKCE verifier of an attempt from its state and ``SECRET_KEY``.

    Deriving it means the verifier is never stored (not even in the session), yet the
    callback can recompute it; without ``SECRET_KEY`` it cannot be guessed from the state.
    """
    digest = salted_hmac("slice_connect.pkce", state, algorithm="sha256").digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()  # 43 characters


@sensitive_variables("verifier")
def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge for ``verifier`` (RFC 7636 section 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@sensitive_variables("state")
def authorization_url(*, state: str, redirect_uri: str, use_pkce: bool) -> str:
    """Build the URL that sends the user to Slice's consent page."""
    extra: dict[str, str] = {}
    if use_pkce:
        extra = {
            "code_challenge": pkce_challenge(pkce_verifier(state)),
            "code_challenge_method": "S256",
        }
    oauth = OAuth2Session(app_settings.CLIENT_ID, redirect_uri=redirect_uri)
    url, _state = oauth.authorization_url(app_settings.AUTHORIZE_URL, state=state, **extra)
    return str(url)


# -- token endpoint --------------------------------------------------------------------
#
# Token requests go through slice_connect.http (one bounded transport), not through
# requests-oauthlib's OAuth2Session.fetch_token/refresh_token: those log the token answer at
# DEBUG, validate it their own way (refusing answers we must keep, see
# parse_token_response) and cannot tell "never sent" from "sent, answer lost".


def _vschar(value: Any, *, maximum: int) -> str | None:
    """``value`` if it is a token RFC 6749 allows (visible ASCII, 1..maximum characters)."""
    if isinstance(value, str) and 0 < len(value) <= maximum:
        if value.isascii() and value.isprintable():
            return value
    return None


def _refresh_token_string(value: Any) -> str | None:
    """A refresh token we can send back: any printable text (it travels in a form body)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_LENGTH and value.isprintable():
        return value
    return None


def _number(value: Any, odd: list[str]) -> Any:
    """``value``, or the number a numeric string holds (a common server quirk, noted)."""
    if isinstance(value, str) and value.strip().isascii():
        try:
            number = float(value.strip())
        except ValueError:
            return value
        odd.append("expires_in is a string")
        return number
    return value


def _expires_in(data: dict[str, Any], odd: list[str]) -> int:
    """The access token's lifetime in seconds; odd values give a short, safe lifetime."""
    if "expires_in" not in data:
        odd.append("expires_in missing")
        return DEFAULT_EXPIRES_IN
    value = _number(data["expires_in"], odd)
    if isinstance(value, float) and math.isfinite(value) and value >= 1:
        if not value.is_integer():
            odd.append("expires_in is fractional")
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 < value <= app_settings.MAX_EXPIRES_IN:
            return value
    odd.append("expires_in out of range")
    return ODD_EXPIRES_IN


def _json_answer(body: bytes, content_type: str, odd: list[str]) -> dict[str, Any]:
    """The answer's JSON object, whatever its media type or a BOM say (both noted)."""
    json_type = http.is_json_media_type(content_type)
    if not json_type:
        odd.append("content type is not JSON")
    if body.startswith(codecs.BOM_UTF8):
        odd.append("byte order mark")
    data = _json_object(body)
    if data is None:
        code = "malformed_json" if json_type else "not_json"
        raise InvalidTokenResponse("Token response is not a JSON object.", code=code)
    return data


def _new_refresh_token(data: dict[str, Any], *, required: bool) -> str | None:
    """The answer's new refresh token: ``None`` if it sent none, an error if it is unusable."""
    refresh_token: str | None = None
    if data.get("refresh_token") is not None:
        refresh_token = _refresh_token_string(data["refresh_token"])
        if refresh_token is None:
            raise InvalidTokenResponse("refresh_token is not a token.", code="bad_refresh_token")
    if required and refresh_token is None:
        raise InvalidTokenResponse("Token response has no refresh_token.", code="no_refresh_token")
    return refresh_token


def _access_token(
    data: dict[str, Any], refresh_token: str | None, odd: list[str]
) -> tuple[str, int]:
    """The access token and its lifetime; an unusable one counts as already expired.

    Only when there is no refresh token to keep does an unusable access token make the
    whole answer unusable.
    """
    access_token = _vschar(data.get("access_token"), maximum=MAX_TOKEN_LENGTH)
    if "token_type" not in data:
        odd.append("token_type missing")
    token_type = data.get("token_type", "bearer")
    bearer = isinstance(token_type, str) and token_type.lower() == "bearer"
    if access_token is not None and bearer:
        return access_token, _expires_in(data, odd)
    problem = "no usable access_token" if access_token is None else "token_type not Bearer"
    if refresh_token is None:
        code = "no_token" if access_token is None else "bad_token_type"
        raise InvalidTokenResponse(f"Token response has {problem}.", code=code)
    odd.append(problem)
    return "", 0


def _refresh_lifetime(data: dict[str, Any], odd: list[str]) -> int | None:
    """``refresh_token_expires_in`` when stated and sane; an odd value is not trusted."""
    if "refresh_token_expires_in" not in data:
        return None
    lifetime = _positive_int(data["refresh_token_expires_in"], maximum=app_settings.MAX_EXPIRES_IN)
    if lifetime is None:
        odd.append("refresh_token_expires_in out of range")
    return lifetime


def parse_token_response(
    body: bytes, *, content_type: str, require_refresh_token: bool, received_at: datetime
) -> TokenSet:
    """Read a 200 token answer: strict about what we trust, never careless with a token.

    A well-formed new ``refresh_token`` is kept whatever else is odd (``expires_in``,
    ``token_type``, the media type, a BOM, an unusable access token): losing it would cut the
    user off at a server that rotates. What is odd is not trusted (an odd lifetime becomes
    :data:`ODD_EXPIRES_IN`, an unusable access token an expired one) and is listed, by name
    only, in :attr:`TokenSet.odd`. Raises :class:`InvalidTokenResponse` only when nothing
    usable is left.
    """
    odd: list[str] = []
    data = _json_answer(body, content_type, odd)
    refresh_token = _new_refresh_token(data, required=require_refresh_token)
    access_token, expires_in = _access_token(data, refresh_token, odd)
    return TokenSet(
        access_token=access_token,
        refresh_token=refresh_token,
        token_type="bearer",
        expires_in=expires_in,
        received_at=received_at,
        refresh_expires_in=_refresh_lifetime(data, odd),
        odd=tuple(odd),
    )


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = http.decode_json(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _positive_int(value: Any, *, maximum: int) -> int | None:
    """An integer in 1..maximum; a string of digits is accepted (a common server quirk)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and 0 < value <= maximum:
        return value
    return None


def _error_for(status: int, body: bytes, retry_after: float | None) -> SliceConnectError:
    """Map a non-200 token answer onto the error taxonomy."""
    if status >= 500:
        # A gateway's 502/504 after the upstream rotated, or a 500 after a commit: the
        # request may have been processed, so it counts as a lost answer (rule R43).
        return ResponseLost(
            f"Slice's token endpoint answered HTTP {status}.",
            code=f"http_{status}",
            retry_after=retry_after,
        )
    if status == 429:
        return TransientError(
            f"Slice's token endpoint answered HTTP {status}.",
            code=f"http_{status}",
            retry_after=retry_after,
        )
    if 300 <= status < 400:
        return InvalidTokenResponse(
            f"Slice's token endpoint redirected (HTTP {status}); not followed.", code="redirect"
        )
    return _refusal(status, body)


def _refusal(status: int, body: bytes) -> SliceConnectError:
    """A 4xx token answer, by its OAuth ``error`` (RFC 6749 section 5.2) or its status."""
    error = (_json_object(body) or {}).get("error")
    if isinstance(error, str) and error.isascii() and error.isprintable() and len(error) <= 64:
        if error == "invalid_grant":
            return TokenRequestFailed("Slice refused the grant (invalid_grant).")
        if error in CONFIGURATION_ERRORS or error == "invalid_request":
            return ConfigurationError(f"Slice rejected the client ({error}).", code=error)
        return InvalidTokenResponse(f"Slice answered HTTP {status} ({error}).", code=error)
    if status in (401, 403, 404):
        return ConfigurationError(
            f"Slice's token endpoint answered HTTP {status}.", code=f"http_{status}"
        )
    return InvalidTokenResponse(f"Slice answered HTTP {status}.", code=f"http_{status}")


@sensitive_variables()  # every local, and the HTTP stack's frames below (kwargs["data"])
def post_token_request(data: dict[str, str], *, require_refresh_token: bool) -> TokenSet:
    """POST one token request (no retries) and return the validated answer.

    Raises :class:`ResponseLost` when the request may have been processed by Slice but no
    usable answer arrived (no answer, a 5xx, an unusable 200), :class:`TransientError` when
    it surely was not processed, and the other errors of the taxonomy for definite refusals.
    """
    body = dict(data, client_id=app_settings.CLIENT_ID, client_secret=app_settings.CLIENT_SECRET)
    grant_type = data.get("grant_type", "?")
    what = f"Token request ({grant_type})"
    try:
        response = http.send(
            "POST",
            app_settings.TOKEN_URL,
            data=body,
            headers={"Accept": "application/json"},
            timeout=app_settings.HTTP_TIMEOUT,
            limit=MAX_RESPONSE_BYTES,
            what=what,
            # A code is redeemed once, never retried: no kept-alive connection that the
            # server may have closed meanwhile (which would look like a lost answer).
            fresh=grant_type == "authorization_code",
        )
    except ResponseTooLarge as exc:
        if exc.status_code == 200:
            raise ResponseLost("Token response too large.", code="response_too_large") from None
        status, content, retry_after = exc.status_code, b"", None
    else:
        status, content = response.status_code, response.content
        retry_after = retry_after_seconds(response)
    received_at = timezone.now()
    if status != 200:
        error = _error_for(status, content, retry_after)
        logger.warning("%s refused: HTTP %s, %s", what, status, error.code)
        raise error
    try:
        tokens = parse_token_response(
            content,
            content_type=response.headers.get("Content-Type", ""),
            require_refresh_token=require_refresh_token,
            received_at=received_at,
        )
    except InvalidTokenResponse as exc:
        logger.warning("%s got an unusable 200 answer: %s", what, exc.code)
        # Slice said 200, so it may have issued (and rotated) tokens we cannot use.
        raise ResponseLost(str(exc), code=exc.code) from None
    if tokens.odd:
        logger.warning("%s: odd answer (%s); kept what was usable.", what, "; ".join(tokens.odd))
    return tokens


@sensitive_variables("code", "state", "verifier", "data")
def exchange_code(*, code: str, redirect_uri: str, state: str, use_pkce: bool) -> TokenSet:
    """Exchange an authorization code for tokens, at once (codes live 60 seconds).

    Retried once only when the first attempt surely never reached Slice: redeeming a code
    twice looks like code replay, which a server may answer by revoking the tokens.
    """
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if use_pkce:
        data["code_verifier"] = pkce_verifier(state)
    for attempt in (1, 2):
        try:
            return post_token_request(data, require_refresh_token=True)
        except ResponseLost:
            raise
        except TransientError as exc:
            if attempt == 2 or exc.code != "connect_error":
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@sensitive_variables("refresh_token")
def refresh(refresh_token: str) -> TokenSet:
    """Spend ``refresh_token`` once. Callers decide about retrying (see services.renew)."""
    return post_token_request(
        {"grant_type": "refresh_token", "refresh_token": refresh_token},
        require_refresh_token=False,
    )


@sensitive_variables()  # every local, and the HTTP stack's frames below (kwargs["data"])
def revoke(token: str, *, token_type_hint: str = "refresh_token") -> bool:
    """Ask Slice to revoke ``token`` (best effort). Returns whether Slice confirmed it.

    Bounded like every call (one budget, capped answer), so an unlink never hangs on it.
    """
    url = app_settings.REVOKE_URL
    if not url:
        return False
    data = {
        "token": token,
        "token_type_hint": token_type_hint,
        "client_id": app_settings.CLIENT_ID,
        "client_secret": app_settings.CLIENT_SECRET,
    }
    try:
        response = http.send(
            "POST",
            url,
            data=data,
            timeout=app_settings.HTTP_TIMEOUT,
            limit=MAX_RESPONSE_BYTES,
            what="Token revocation",
        )
    except (TransientError, ResponseTooLarge) as exc:
        logger.warning("Revoking a Slice token failed: %s", exc.code)
        return False
    if response.status_code == 200:
        return True
    logger.warning("Revoking a Slice token failed: HTTP %s", response.status_code)
    return False
