"""Errors raised by slice_connect.

Every error derives from :class:`SliceConnectError`. Callers usually need only three
questions answered, and each has its own type:

* :class:`NeedsReauth` -- permanent for this user: the link is dead until they link again.
* :class:`TransientError` -- nothing changed; try again later (``retry_after`` may say when).
* :class:`ConfigurationError` -- the site's Slice client is misconfigured; no user is at fault.

Messages never contain a token, code, state, verifier or client secret.
"""

from __future__ import annotations


class SliceConnectError(Exception):
    """Base class of every slice_connect error."""

    #: Short machine-readable code (an OAuth error code where Slice sent one).
    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message or self.code)


class ConfigurationError(SliceConnectError):
    """Slice rejected our client (``invalid_client``, ``unauthorized_client``, ...)."""

    code = "invalid_client"


class RenewalInTransaction(ConfigurationError):
    """A renewal was asked for inside a transaction it cannot commit apart from (SQLite).

    A renewal must commit on its own: the refresh token it spends is gone at Slice even if
    the caller's transaction rolls back. On PostgreSQL (and other databases) it then runs
    on a connection of its own; SQLite allows one writer at a time, so there it is refused
    before anything is sent to Slice. Renew outside ``transaction.atomic()`` (mark the view
    ``transaction.non_atomic_requests`` under ``ATOMIC_REQUESTS``) or use PostgreSQL.
    """

    code = "renewal_in_transaction"


class TransientError(SliceConnectError):
    """A temporary failure (network, timeout, 429, 5xx, lock wait); nothing was changed."""

    code = "transient"

    def __init__(
        self, message: str = "", *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, code=code)
        #: Seconds Slice asked us to wait (``Retry-After``), when it said.
        self.retry_after = retry_after


class RenewalLockTimeout(TransientError):
    """Another worker held the credential's lock for longer than ``LOCK_TIMEOUT``."""

    code = "lock_timeout"


class InvalidTokenResponse(SliceConnectError):
    """Slice answered the token request with something that is not a valid token response."""

    code = "invalid_response"


class TokenRequestFailed(SliceConnectError):
    """Slice refused the grant (``invalid_grant`` and the like) for a reason shown in ``code``."""

    code = "invalid_grant"


class NeedsReauth(SliceConnectError):
    """The credential cannot be used or renewed; the user must link Slice again."""

    code = "needs_reauth"

    def __init__(self, message: str = "", *, code: str | None = None, reason: str = "") -> None:
        super().__init__(message, code=code)
        #: One of :class:`slice_connect.models.SliceCredential.Reason`.
        self.reason = reason


class CredentialUnreadable(NeedsReauth):
    """A stored token could not be decrypted (wrong key or corrupted row)."""

    code = "undecryptable"


class NotLinked(SliceConnectError):
    """The user has no Slice credential."""

    code = "not_linked"


class ApiError(SliceConnectError):
    """The Slice REST API answered with an error status."""

    code = "api_error"

    def __init__(self, message: str = "", *, status_code: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        #: HTTP status of Slice's answer.
        self.status_code = status_code


class ResponseLost(TransientError):
    """The request may have reached Slice, but no usable answer came back.

    For a refresh this means the refresh token may already have been spent.
    """

    code = "response_lost"


class ResponseTooLarge(ApiError):
    """Slice's answer was larger than the cap; it was refused without reading the rest.

    The token endpoints are capped at 64 KiB; the API at ``API_MAX_RESPONSE_BYTES``. For a
    refresh, an oversized answer counts as lost (:class:`ResponseLost`): Slice may have
    rotated the token.
    """

    code = "response_too_large"

    def __init__(self, message: str = "", *, status_code: int, limit: int) -> None:
        super().__init__(message, status_code=status_code)
        #: The cap, in decoded bytes.
        self.limit = limit
