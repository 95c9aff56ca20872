"""HTTP to Slice's OAuth endpoints: authorization URL, code exchange, refresh, revoke.

Nothing here touches the database. Every call has an explicit timeout, never follows a
redirect, verifies TLS, sends the client credentials in the form body (as Slice documents)
and turns every failure into one of the errors in :mod:`slice_connect.exceptions`.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import math
import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import requests
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.views.decorators.debug import sensitive_variables
from requests_oauthlib import OAuth2Session
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.ssl_match_hostname import CertificateError

from .conf import app_settings
from .exceptions import (
    ConfigurationError,
    InvalidTokenResponse,
    ResponseLost,
    SliceConnectError,
    TokenRequestFailed,
    TransientError,
)

logger = logging.getLogger(__name__)

#: Token responses are small; anything larger is refused unread.
MAX_RESPONSE_BYTES = 64 * 1024
MAX_TOKEN_LENGTH = 4096
#: Used when Slice omits ``expires_in`` (its documented access-token lifetime).
DEFAULT_EXPIRES_IN = 3600

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


def fingerprint(secret: str) -> str:
    """A short, non-reversible label for a secret, safe for logs."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


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


def _tls_error_before_sending(exc: requests.exceptions.SSLError) -> bool:
    """Whether a TLS error surely happened before the request was sent.

    A certificate that fails verification stops the handshake, so nothing was sent. Any
    other TLS error may have come after the request went out (a fatal alert, a corrupted
    record), so it counts as possibly processed: the code is not redeemed again.
    """
    error: object = exc.args[0] if exc.args else None
    for _ in range(4):  # requests SSLError -> MaxRetryError -> urllib3 SSLError -> ssl error
        if isinstance(error, (ssl.SSLCertVerificationError, CertificateError)):
            return True
        if isinstance(error, MaxRetryError):
            error = error.reason
        elif isinstance(error, Urllib3SSLError):
            error = error.args[0] if error.args else None
        else:
            break
    return isinstance(error, (ssl.SSLCertVerificationError, CertificateError))


def _definitely_not_sent(exc: requests.RequestException) -> bool:
    """True when the request cannot have reached the server (connect-phase failure)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return _tls_error_before_sending(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", exc.args[0])
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False


def retry_after_seconds(response: requests.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta or HTTP-date), or ``None``."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - timezone.now()).total_seconds())


def read_body(
    response: requests.Response, deadline: float, *, limit: int | None = None
) -> bytes | None:
    """Read a streamed body by ``deadline`` (``time.monotonic``); ``None`` past ``limit`` bytes.

    requests' read timeout restarts with every byte, and ``iter_content`` blocks until a
    whole chunk has arrived, so a server dripping bytes would hold the call for ever. Here
    each socket read returns what has arrived and waits at most the time left.
    """
    raw = response.raw
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    read_timeout = sock.gettimeout() if sock is not None else None
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise requests.ReadTimeout("The response took longer than the timeout.")
        if sock is not None:
            wait = left if read_timeout is None else min(read_timeout, left)
            sock.settimeout(None if math.isinf(wait) else wait)
        try:
            chunk = raw.read1(8192)
        except ReadTimeoutError as exc:
            raise requests.ReadTimeout(exc) from None
        except Urllib3SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        except ProtocolError as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from None
        except DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from None
        except Urllib3HTTPError as exc:
            raise requests.ConnectionError(exc) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
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


def _token_string(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_TOKEN_LENGTH and value.isprintable():
        return value
    return None


def parse_token_response(
    body: bytes, *, content_type: str, require_refresh_token: bool, received_at: datetime
) -> TokenSet:
    """Validate a 200 token response strictly and return it as a :class:`TokenSet`."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise InvalidTokenResponse("Token response is not JSON.", code="not_json")
    data = _json_object(body)
    if data is None:
        raise InvalidTokenResponse("Token response is not a JSON object.", code="malformed_json")
    access_token = _token_string(data.get("access_token"))
    if access_token is None:
        raise InvalidTokenResponse("Token response has no usable access_token.", code="no_token")
    token_type = data.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise InvalidTokenResponse("Token type is not Bearer.", code="bad_token_type")
    maximum = app_settings.MAX_EXPIRES_IN
    if "expires_in" in data:
        expires_in = _positive_int(data["expires_in"], maximum=maximum)
        if expires_in is None:
            raise InvalidTokenResponse("expires_in is missing or out of range.", code="bad_expiry")
    else:
        expires_in = DEFAULT_EXPIRES_IN
    refresh_token: str | None = None
    if data.get("refresh_token") is not None:
        refresh_token = _token_string(data["refresh_token"])
        if refresh_token is None:
            raise InvalidTokenResponse("refresh_token is not a token.", code="bad_refresh_token")
    if require_refresh_token and refresh_token is None:
        raise InvalidTokenResponse("Token response has no refresh_token.", code="no_refresh_token")
    refresh_expires_in = None
    if refresh_token is not None and "refresh_token_expires_in" in data:
        refresh_expires_in = _positive_int(data["refresh_token_expires_in"], maximum=maximum)
    return TokenSet(
        access_token=access_token,
        refresh_token=refresh_token,
        token_type="bearer",
        expires_in=expires_in,
        received_at=received_at,
        refresh_expires_in=refresh_expires_in,
    )


def _error_for(response: requests.Response, body: bytes) -> SliceConnectError:
    """Map a non-200 token response onto the error taxonomy."""
    status = response.status_code
    if status == 429 or status >= 500:
        return TransientError(
            f"Slice's token endpoint answered HTTP {status}.",
            code=f"http_{status}",
            retry_after=retry_after_seconds(response),
        )
    if 300 <= status < 400:
        return InvalidTokenResponse(
            f"Slice's token endpoint redirected (HTTP {status}); not followed.", code="redirect"
        )
    data = _json_object(body) or {}
    error = data.get("error")
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
    usable answer arrived, :class:`TransientError` when it surely was not processed, and the
    other errors of the taxonomy for definite refusals.
    """
    connect, read = app_settings.HTTP_TIMEOUT
    deadline = time.monotonic() + connect + read
    body = dict(data, client_id=app_settings.CLIENT_ID, client_secret=app_settings.CLIENT_SECRET)
    grant_type = data.get("grant_type", "?")
    try:
        with requests.post(
            app_settings.TOKEN_URL,
            data=body,
            headers={"Accept": "application/json"},
            timeout=(connect, read),
            allow_redirects=False,
            stream=True,
        ) as response:
            content = read_body(response, deadline, limit=MAX_RESPONSE_BYTES)
    except requests.RequestException as exc:
        kind = type(exc).__name__
        if _definitely_not_sent(exc):
            logger.warning("Token request (%s) failed before sending: %s", grant_type, kind)
            if isinstance(exc, requests.exceptions.SSLError):
                logger.error("TLS verification of Slice's token endpoint failed.")
            raise TransientError(f"Could not reach Slice ({kind}).", code="connect_error") from None
        if isinstance(exc, requests.exceptions.SSLError):
            logger.error("TLS failure on Slice's token endpoint after the request was sent.")
        logger.warning("Token request (%s) sent but no answer: %s", grant_type, kind)
        raise ResponseLost(f"No answer from Slice ({kind}).") from None
    received_at = timezone.now()
    if response.status_code != 200:
        error = _error_for(response, content or b"")
        logger.warning(
            "Token request (%s) refused: HTTP %s, %s", grant_type, response.status_code, error.code
        )
        raise error
    if content is None:
        logger.warning("Token request (%s) got an oversized 200 answer.", grant_type)
        raise ResponseLost("Token response too large.", code="response_too_large")
    try:
        return parse_token_response(
            content,
            content_type=response.headers.get("Content-Type", ""),
            require_refresh_token=require_refresh_token,
            received_at=received_at,
        )
    except InvalidTokenResponse as exc:
        logger.warning("Token request (%s) got an invalid 200 answer: %s", grant_type, exc.code)
        # Slice said 200, so it may have issued (and rotated) tokens we cannot use.
        raise ResponseLost(str(exc), code=exc.code) from None


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
    """Ask Slice to revoke ``token`` (best effort). Returns whether Slice confirmed it."""
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
        response = requests.post(
            url, data=data, timeout=app_settings.HTTP_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        logger.warning("Revoking a Slice token failed: %s", type(exc).__name__)
        return False
    if response.status_code == 200:
        return True
    logger.warning("Revoking a Slice token failed: HTTP %s", response.status_code)
    return False
