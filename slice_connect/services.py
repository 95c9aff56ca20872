"""The one path for every change to a credential: link, unlink and renew.

Views, the admin, the API client, the Celery tasks and the management commands all call
these functions; nothing else writes tokens or sends slice_connect's signals.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from django.db import DatabaseError, IntegrityError, transaction
from django.http import HttpRequest, QueryDict
from django.shortcuts import resolve_url
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from . import durable, http, keyprobe, oauth, rows, signals, states
from .conf import app_settings
from .exceptions import (
    ConfigurationError,
    CredentialUnreadable,
    InvalidTokenResponse,
    NeedsReauth,
    NotLinked,
    RenewalInTransaction,
    RenewalLockTimeout,
    ResponseLost,
    SliceConnectError,
    TokenRequestFailed,
    TransientError,
)
from .fields import UnreadableToken
from .models import SliceCredential

logger = logging.getLogger(__name__)

Reason = SliceCredential.Reason
Status = SliceCredential.Status


def _send_on_commit(signal: Any, **kwargs: Any) -> None:
    transaction.on_commit(lambda: signal.send(sender=SliceCredential, **kwargs))


# -- link state ------------------------------------------------------------------------


def credential_of(user: Any) -> SliceCredential | None:
    """Return ``user``'s credential (tokens not loaded), or ``None`` when there is none.

    ``None`` too for an anonymous user. Shares its cache with ``user.slice_credential``, so
    asking again for the same user object (in a template, then in a view) costs no query.
    """
    if user is None or not getattr(user, "is_authenticated", False) or user.pk is None:
        return None
    related = SliceCredential._meta.get_field("user").remote_field
    if related.is_cached(user):
        cached = related.get_cached_value(user)  # a SliceCredential, or None for no link
        return cached if isinstance(cached, SliceCredential) else None
    credential = SliceCredential.objects.without_tokens().filter(user=user).first()
    related.set_cached_value(user, credential)
    return credential


def is_linked(user: Any) -> bool:
    """Whether ``user`` has a working Slice link (a credential with status ``active``).

    ``False`` for anonymous users, users who never linked and links that need
    re-authorization; :func:`credential_of` tells the last two apart.
    """
    credential = credential_of(user)
    return credential is not None and credential.is_active


# -- link / unlink ---------------------------------------------------------------------


@sensitive_variables()  # every local, and the ORM's frames below (the plaintext values)
def link(user: Any, tokens: oauth.TokenSet, request: HttpRequest | None = None) -> SliceCredential:
    """Store ``tokens`` as ``user``'s credential, creating or replacing it atomically.

    A re-link replaces both tokens and clears any failure state. Sends
    ``credential_linked`` after commit. A re-link also revokes the refresh token it
    replaced, read under the row lock (so a renewal in flight finishes first and its new
    token is the one revoked), after commit and best effort, like :func:`unlink`.
    """
    if not tokens.refresh_token:
        raise ValueError("A link needs a refresh token.")
    values = {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token,
        "token_type": tokens.token_type,
        "access_token_expires_at": tokens.access_token_expires_at,
        "refresh_token_expires_at": tokens.refresh_token_expires_at,
        "status": Status.ACTIVE,
        "status_reason": Reason.NONE,
        "linked_at": tokens.received_at,
        "renewal_started_at": None,
        "failure_count": 0,
        "last_error_code": "",
        "last_error_at": None,
    }
    # The old refresh token is loaded (not the access token): a re-link revokes it.
    current = SliceCredential.objects.select_for_update().defer("access_token")
    retried = False
    while True:
        try:
            with transaction.atomic():
                credential = current.filter(user=user).first()
                created = credential is None
                if created:
                    credential = SliceCredential.objects.create(user=user, **values)
                else:
                    assert credential is not None
                    _revoke_on_commit(credential.refresh_token, keep=tokens.refresh_token)
                    for name, value in values.items():
                        setattr(credential, name, value)
                    credential.version += 1
                    credential.save()
                _send_on_commit(
                    signals.credential_linked,
                    credential=credential,
                    user=user,
                    created=created,
                    request=request,
                )
            break
        except IntegrityError:
            # Another request linked the same user first (there was no row to lock): the
            # whole block rolled back (a savepoint inside a caller's transaction); once
            # more, now updating that request's row.
            if retried:
                raise
            retried = True
            logger.info("User %s was linked by a concurrent request; updating its row.", user.pk)
    logger.info("Linked Slice credential %s (user %s).", credential.pk, credential.user_id)
    return credential


def unlink(credential: SliceCredential, request: HttpRequest | None = None) -> None:
    """Delete ``credential``; revokes it at Slice (best effort) and sends the signal.

    Deleting the row any other way (the admin, deleting the user, ``QuerySet.delete()``)
    does the same, through :func:`credential_deleting` and :func:`credential_deleted`; this
    function only adds the request to the signal. The instance may be a stale or partial
    copy (tokens deferred): the token revoked is the one stored when the row goes.
    """
    # The request reaches credential_deleted as an argument of this call, not on the
    # instance: it is bound to this credential's id for the duration of the delete.
    bound = _UNLINKING.set((credential.pk, request))
    try:
        credential.delete()
    finally:
        _UNLINKING.reset(bound)


def unlink_user(user: Any, request: HttpRequest | None = None) -> bool:
    """:func:`unlink` ``user``'s credential, if there is one; whether there was.

    Loads what the deletion needs (the refresh token to revoke), not the access token.
    """
    credential = (
        SliceCredential.objects.filter(user=user).only("pk", "user", "refresh_token").first()
    )
    if credential is None:
        return False
    unlink(credential, request=request)
    return True


#: The credential :func:`unlink` is deleting, and the request it was called with.
_UNLINKING: ContextVar[tuple[Any, HttpRequest | None] | None] = ContextVar(
    "slice_connect_unlinking", default=None
)


def _unlink_request(instance: SliceCredential) -> HttpRequest | None:
    """The request :func:`unlink` was given for ``instance``; ``None`` for other deletions."""
    unlinking = _UNLINKING.get()
    if unlinking is None or unlinking[0] != instance.pk:
        return None
    return unlinking[1]


#: Where :func:`credential_deleting` leaves the live refresh token for :func:`credential_deleted`.
_LIVE_REFRESH_TOKEN = "_slice_connect_live_refresh_token"
_NOT_READ = object()


@sensitive_variables("live")
def credential_deleting(
    sender: Any, instance: SliceCredential, using: str = "default", **kwargs: Any
) -> None:
    """``pre_delete`` receiver: read the refresh token that is live as the row goes.

    Runs inside the deleting transaction. ``select_for_update`` waits for a renewal that
    holds the row (its new refresh token is then the one read) and keeps any later renewal
    out until the row is gone, so what is revoked after commit is the token Slice honours,
    never a copy read before a renewal committed.
    """
    live = (
        SliceCredential.objects.using(using)
        .select_for_update()
        .filter(pk=instance.pk)
        .values_list("refresh_token", flat=True)
        .first()
    )
    instance.__dict__[_LIVE_REFRESH_TOKEN] = live


@sensitive_variables("token", "keep")
def _revoke_on_commit(token: Any, *, keep: Any = None) -> None:
    """After commit, revoke the refresh token ``token`` at Slice (best effort, logged)."""
    if not (app_settings.REVOKE_ON_UNLINK and isinstance(token, str) and token):
        return
    if token == keep:
        return

    @sensitive_variables("token")
    def revoke() -> None:
        oauth.revoke(token)

    # robust: a failing revocation is logged, never an error for the request.
    transaction.on_commit(revoke, robust=True)


@sensitive_variables("token")
def credential_deleted(sender: Any, instance: SliceCredential, **kwargs: Any) -> None:
    """``post_delete`` receiver: after commit, revoke at Slice and send the signal."""
    request = _unlink_request(instance)
    token: Any = instance.__dict__.pop(_LIVE_REFRESH_TOKEN, _NOT_READ)
    if token is _NOT_READ:
        # pre_delete did not run for this instance (a hand-sent signal): the loaded copy.
        deferred = "refresh_token" in instance.get_deferred_fields()
        token = None if deferred else instance.refresh_token
    user = instance.user

    @sensitive_variables("token")
    def after_commit() -> None:
        if app_settings.REVOKE_ON_UNLINK and isinstance(token, str) and token:
            oauth.revoke(token)
        signals.credential_unlinked.send(
            sender=SliceCredential, credential=instance, user=user, request=request
        )

    # robust: the row is gone either way; a failing receiver or revocation is logged,
    # never turned into an error for the request that unlinked.
    transaction.on_commit(after_commit, robust=True)
    logger.info("Unlinked Slice credential %s (user %s).", instance.pk, instance.user_id)


# -- the callback's link flow --------------------------------------------------------------

#: Longest ``state`` and ``code`` accepted from the callback's query string.
MAX_STATE_LENGTH = 512
MAX_CODE_LENGTH = 4096
#: Callback parameters that must not repeat (a repeated one makes the request ambiguous).
SINGLE_VALUED = ("state", "code", "error", "error_description", "error_uri", "iss")


class Refusal(str, enum.Enum):
    """Why :func:`complete_link` refused a callback; the view picks the page for each."""

    #: Before anything is sent to Slice (rule R9 and neighbours, docs/threat-model.rst).
    NOT_LOGGED_IN = "not_logged_in"
    MALFORMED = "malformed"
    NO_STATE = "no_state"
    UNKNOWN_ATTEMPT = "unknown_attempt"
    OTHER_USER = "other_user"
    EXPIRED = "expired"
    WRONG_ISSUER = "wrong_issuer"
    BAD_CODE = "bad_code"
    #: The user declined at Slice's consent page: not an error.
    DENIED = "denied"
    #: Slice sent another ``error`` (in :attr:`LinkRefused.error`).
    SLICE_ERROR = "slice_error"
    NO_CODE = "no_code"
    ALREADY_USED = "already_used"
    #: The code exchange failed (the code was sent once, never again: rule R13).
    CODE_REFUSED = "code_refused"
    MISCONFIGURED = "misconfigured"
    UNAVAILABLE = "unavailable"
    UNUSABLE_ANSWER = "unusable_answer"


class LinkRefused(Exception):
    """A callback :func:`complete_link` refused; nothing was linked.

    ``error`` is Slice's ``error`` parameter for :attr:`Refusal.SLICE_ERROR` (a code from
    the URL, never shown as sent). The message is the reason's value: no state, code or
    token.
    """

    def __init__(self, reason: Refusal, *, error: str = "") -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.error = error


def link_success_url() -> str:
    """Where to go after linking when the attempt named no valid ``next``."""
    return resolve_url(app_settings.LINK_SUCCESS_URL)


def expected_issuer() -> str:
    """The ``iss`` a callback may carry: ``ISSUER``, else the authorize URL's origin."""
    if app_settings.ISSUER:
        return app_settings.ISSUER
    scheme, _sep, rest = app_settings.AUTHORIZE_URL.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


@sensitive_variables()  # every local: the query string, state, code, attempt and tokens
def complete_link(request: HttpRequest, params: QueryDict) -> str:
    """Finish the authorization attempt Slice sent the user back with; return the redirect.

    Checks the callback's ``params`` (its query string) against the attempt the session
    holds for its ``state``, which is consumed; claims the attempt's single use across
    processes (committed before the code leaves this site); exchanges the code and links
    ``request.user``. Returns the attempt's ``next`` or :func:`link_success_url`. Raises
    :class:`LinkRefused` with the reason; Slice is called only for a valid, claimed attempt
    with a code and no error.
    """
    state = _callback_state(request, params)
    attempt = states.pop(request, state)
    _check_attempt(request, params, attempt)
    assert attempt is not None
    code = _callback_code(params)
    error = params.get("error")
    if error == "access_denied":
        logger.info("User %s declined to link their Slice account.", request.user.pk)
        raise LinkRefused(Refusal.DENIED)
    if error is not None:
        _refuse(Refusal.SLICE_ERROR, error=error)
    if not code:
        _refuse(Refusal.NO_CODE)
    # One code, one redemption: of several requests with this state at once (a double
    # click, a reload, a prefetch), in any process, one claims it here. The claim is
    # committed, so a reload of a 5xx answer can never redeem the code twice.
    if not states.claim(attempt):
        _refuse(Refusal.ALREADY_USED)
    try:
        tokens = oauth.exchange_code(
            code=code, redirect_uri=attempt.redirect_uri, state=state, use_pkce=attempt.use_pkce
        )
    except SliceConnectError as exc:
        logger.warning("Exchanging a Slice authorization code failed: %s", exc.code)
        raise LinkRefused(_exchange_refusal(exc)) from None
    link(request.user, tokens, request=request)
    return attempt.next_url or link_success_url()


def _refuse(reason: Refusal, *, error: str = "") -> NoReturn:
    logger.info("Slice callback rejected: %s", reason.value)
    raise LinkRefused(reason, error=error)


@sensitive_variables()
def _callback_state(request: HttpRequest, params: QueryDict) -> str:
    if not request.user.is_authenticated:
        _refuse(Refusal.NOT_LOGGED_IN)
    if len(params.getlist("state")) > 1:
        _refuse(Refusal.MALFORMED)
    state = params.get("state", "")
    if not state or len(state) > MAX_STATE_LENGTH or not state.isprintable():
        _refuse(Refusal.NO_STATE)
    return state


@sensitive_variables()
def _check_attempt(
    request: HttpRequest, params: QueryDict, attempt: states.PendingAttempt | None
) -> None:
    if attempt is None:
        _refuse(Refusal.UNKNOWN_ATTEMPT)
    if attempt.user_id != str(request.user.pk):
        _refuse(Refusal.OTHER_USER)
    if states.is_expired(attempt):
        _refuse(Refusal.EXPIRED)
    issuers = params.getlist("iss")
    if issuers and (len(issuers) > 1 or issuers[0] != expected_issuer()):
        _refuse(Refusal.WRONG_ISSUER)


@sensitive_variables()
def _callback_code(params: QueryDict) -> str | None:
    if any(len(params.getlist(name)) > 1 for name in SINGLE_VALUED):
        _refuse(Refusal.MALFORMED)
    code = params.get("code")
    if code is not None and (
        not code or len(code) > MAX_CODE_LENGTH or not code.isascii() or not code.isprintable()
    ):
        _refuse(Refusal.BAD_CODE)
    if code is not None and params.get("error") is not None:
        _refuse(Refusal.MALFORMED)
    return code


def _exchange_refusal(exc: SliceConnectError) -> Refusal:
    """What a failed code exchange means for the user (the error kinds of rule R30)."""
    if isinstance(exc, TokenRequestFailed):
        return Refusal.CODE_REFUSED
    if isinstance(exc, ConfigurationError):
        return Refusal.MISCONFIGURED
    no_answer = exc.code in http.NO_ANSWER_CODES or exc.code.startswith("http_")
    unusable_answer = isinstance(exc, ResponseLost) and not no_answer
    if isinstance(exc, TransientError) and not unusable_answer:
        return Refusal.UNAVAILABLE
    return Refusal.UNUSABLE_ANSWER


# -- renew -----------------------------------------------------------------------------


@dataclass
class RenewalResult:
    """What :func:`renew_with_result` did."""

    credential: SliceCredential
    renewed: bool


@contextmanager
def _lock_timeouts(pk: int) -> Iterator[None]:
    """Turn PostgreSQL's lock timeout into :class:`RenewalLockTimeout`."""
    try:
        yield
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":
            raise RenewalLockTimeout(f"Credential {pk} stayed locked too long.") from None
        raise


@contextmanager
def _locked(pk: int) -> Iterator[SliceCredential]:
    """Lock the credential's row in a new transaction and yield it, re-read.

    A :class:`SliceConnectError` raised inside is a verdict: what was saved before it (a
    failure recorded, a link marked, the signals queued) is committed, then it propagates.
    Any other exception rolls the transaction back.
    """
    verdict: SliceConnectError | None = None
    with _lock_timeouts(pk), transaction.atomic():
        row = rows.lock(pk)
        try:
            yield row
        except SliceConnectError as exc:
            verdict = exc
    if verdict is not None:
        raise verdict


def _record_failure(row: SliceCredential, error: SliceConnectError, now: datetime) -> None:
    row.failure_count += 1
    row.last_error_code = error.code[:64]
    row.last_error_at = now


def _mark_needs_reauth(row: SliceCredential, reason: str, now: datetime) -> None:
    row.status = Status.NEEDS_REAUTH
    row.status_reason = reason
    row.renewal_started_at = None
    row.last_error_at = now


BOOKKEEPING = ["failure_count", "last_error_code", "last_error_at", "renewal_started_at"]
STATUS_FIELDS = ["status", "status_reason", "renewal_started_at", "last_error_at"]


def _refuse_unusable(row: SliceCredential, now: datetime) -> None:
    """Raise :class:`NeedsReauth` when ``row`` cannot be renewed (inside :func:`_locked`).

    A link that breaks here (undecryptable, refresh token expired) is marked and its
    ``credential_renewal_failed`` queued; one already marked is left as it is. Either token
    failing to decrypt is enough (fail closed: a row that was tampered with or corrupted is
    not acted on, even when a renewal would replace the bad column).
    """
    if row.status != Status.ACTIVE:
        raise NeedsReauth(
            f"Credential {row.pk} needs the user to link Slice again.", reason=row.status_reason
        )
    if isinstance(row.refresh_token, UnreadableToken) or isinstance(
        row.access_token, UnreadableToken
    ):
        _refuse_unreadable(row, now)
    if row.refresh_token_expires_at <= now:
        _mark_broken(
            row,
            NeedsReauth(
                f"Credential {row.pk}'s refresh token expired.",
                code=Reason.REFRESH_EXPIRED,
                reason=Reason.REFRESH_EXPIRED,
            ),
            now,
        )


def _refuse_unreadable(row: SliceCredential, now: datetime) -> NoReturn:
    """Mark ``row`` undecryptable, unless this process's keys are at fault."""
    _refuse_if_keys_are_at_fault(row)
    logger.error("Credential %s cannot be decrypted with FERNET_KEYS.", row.pk)
    _mark_broken(
        row,
        CredentialUnreadable(
            f"Credential {row.pk} cannot be decrypted.", reason=Reason.UNDECRYPTABLE
        ),
        now,
    )


def _mark_broken(row: SliceCredential, error: NeedsReauth, now: datetime) -> NoReturn:
    _mark_needs_reauth(row, error.reason, now)
    row.save(update_fields=STATUS_FIELDS)
    _failed(row, error, permanent=True)
    raise error


def _refuse_if_keys_are_at_fault(row: SliceCredential) -> None:
    """Raise :class:`ConfigurationError` when this process's keys, not ``row``, are at fault.

    A process started without the key, or with a wrong one, reads every token as
    unreadable: that is its configuration error, and no user is marked for it (see
    :mod:`slice_connect.keyprobe`).
    """
    fault = keyprobe.configuration_fault(row)
    if fault is None:
        return
    logger.critical(
        "Credential %s reads as undecryptable, but this process is at fault (%s): check "
        "FERNET_KEYS in every process. No user was marked.",
        row.pk,
        fault,
    )
    raise ConfigurationError(
        f"This process cannot decrypt stored credentials ({fault}); credential {row.pk} "
        "was left unchanged.",
        code="fernet_keys",
    )


def renew(credential: SliceCredential, *, force: bool = False) -> SliceCredential:
    """Renew ``credential``'s tokens if needed (or always, with ``force``); the ONE path.

    The decision is taken on the row re-read under its lock, so concurrent callers cause one
    refresh and all end with the same tokens. ``credential`` is updated in place and also
    returned. Raises :class:`NeedsReauth`, :class:`TransientError` or
    :class:`ConfigurationError` (see the error taxonomy in docs/topics/renewal.rst).
    """
    renew_with_result(credential, force=force)
    return credential


def renew_with_result(
    credential: SliceCredential, *, force: bool = False, seen_version: int | None = None
) -> RenewalResult:
    """:func:`renew`, also telling whether this call spent the refresh token.

    ``seen_version`` renews only if the row still holds that version: the API client uses it
    after a 401, so a hundred callers holding the same rejected token cause one refresh.

    Called inside a transaction of the caller (``ATOMIC_REQUESTS``, ``atomic()``), the
    renewal runs on a database connection of its own and commits on its own, so rolling the
    caller's transaction back never loses a rotated refresh token. On SQLite, which allows
    one writer, it raises :class:`RenewalInTransaction` there instead, before anything is
    sent to Slice.
    """
    try:
        result = durable.run_durably(
            _renew,
            credential.pk,
            force=force,
            seen_version=seen_version,
            refuse_on_sqlite=_refuse_in_transaction,
        )
    except NeedsReauth as exc:
        credential.status = Status.NEEDS_REAUTH
        credential.status_reason = exc.reason
        raise
    credential.copy_from(result.credential)
    return result


def renew_by_id(pk: int, *, force: bool = False) -> RenewalResult:
    """:func:`renew_with_result` for the credential with id ``pk`` (tasks, commands).

    The row is read under its lock, as always; nothing is read before. Raises
    :class:`NotLinked` when there is no such credential (unlinked meanwhile), and otherwise
    what :func:`renew` raises. ``result.credential`` is the row as renewal left it.
    """
    return durable.run_durably(
        _renew, pk, force=force, seen_version=None, refuse_on_sqlite=_refuse_in_transaction
    )


def _refuse_in_transaction() -> RenewalInTransaction:
    logger.error(
        "A Slice renewal was refused: it was called inside a database transaction on SQLite, "
        "where it cannot commit on its own. Renew outside transaction.atomic() (mark the view "
        "transaction.non_atomic_requests under ATOMIC_REQUESTS) or use PostgreSQL."
    )
    return RenewalInTransaction(
        "Renewal refused inside a transaction on SQLite: it could not commit on its own. "
        "Renew outside transaction.atomic() / ATOMIC_REQUESTS, or use PostgreSQL."
    )


def mark_unreadable(pks: Iterable[int]) -> int:
    """Flag active credentials whose tokens no key decrypts; returns how many changed.

    Each gets ``status = needs_reauth`` (reason ``undecryptable``), its tokens untouched,
    and ``credential_renewal_failed`` with ``permanent=True`` after commit. Raises
    :class:`ConfigurationError`, marking nobody, when this process's keys decrypt no stored
    credential at all (a wrong or missing key is not the users' fault).
    """
    fault = keyprobe.process_fault()
    if fault is not None:
        logger.critical("Refusing to mark credentials undecryptable: %s.", fault)
        raise ConfigurationError(
            f"This process cannot decrypt stored credentials ({fault}); nobody was marked.",
            code="fernet_keys",
        )
    now = timezone.now()
    changed = 0
    with transaction.atomic():
        rows = (
            SliceCredential.objects.select_for_update()
            .without_tokens()
            .filter(pk__in=list(pks), status=Status.ACTIVE)
        )
        for row in rows:
            _mark_needs_reauth(row, Reason.UNDECRYPTABLE, now)
            row.save(update_fields=STATUS_FIELDS)
            error = CredentialUnreadable(
                f"Credential {row.pk} cannot be decrypted.", reason=Reason.UNDECRYPTABLE
            )
            _failed(row, error, permanent=True)
            changed += 1
    return changed


def _needed(row: SliceCredential, now: datetime, force: bool, seen_version: int | None) -> bool:
    """Whether to renew ``row`` now; raises when it cannot be renewed at all."""
    _refuse_unusable(row, now)
    if seen_version is not None:
        return row.version == seen_version
    return force or row.needs_renewal(now)


def _renew(pk: int | None, *, force: bool, seen_version: int | None) -> RenewalResult:
    """Stamp the journal, then decide and renew under the lock; see :class:`Journal`."""
    if pk is None:
        raise NotLinked("This credential has not been saved (or was deleted).")
    try:
        stamp = _stamp(pk, timezone.now(), force=force, seen_version=seen_version)
        outcome = _settle(pk, stamp, force=force, seen_version=seen_version)
        while isinstance(outcome, _Stamped):
            # The stamp is committed now: renew, unless a sibling renewed meanwhile. (Only
            # a renewal or a marked link clears a stamp it does not own, so this runs once.)
            outcome = _settle(pk, outcome.stamp, force=False, seen_version=outcome.version)
        return outcome
    except SliceCredential.DoesNotExist:
        # Unlinked (or the user deleted) while this call was running.
        raise NotLinked(f"Credential {pk} was deleted.") from None


class Journal(enum.Enum):
    """What the journal (``renewal_started_at``, ``last_error_at``) says of the refresh token.

    A refresh token is posted only while the row holds a committed stamp, so that a
    process that dies after posting leaves the doubt on record. A renewal:

    1. stamps the row if it holds no stamp and a renewal looks due, in one conditional
       ``UPDATE`` committed at once (:func:`_stamp`), without reading it;
    2. locks and re-reads the row, decides (:func:`_needed`) and reads the journal:
       CLEAR (no stamp: the one it found belonged to a sibling, cleared since) means
       stamping under the lock, committing, and locking again to go on. Otherwise it posts
       and saves the outcome, and a renewal that finds nothing to do clears its own stamp.

    ==========  ============================================  =================================
    state       the row holds                                 meaning
    ==========  ============================================  =================================
    CLEAR       no stamp                                      the refresh token is unspent
    OWN         this attempt's stamp, no failure recorded     this attempt is about to spend it
                after it
    IN_DOUBT    a stamp this attempt did not set, or its own  an earlier attempt may have spent
                with a failure recorded after it              it: it died after posting, or its
                                                              answers were lost
    ==========  ============================================  =================================

    Transitions, from OWN or IN_DOUBT:

    ==================================================  =====================================
    outcome of the refresh                              the journal afterwards
    ==================================================  =====================================
    new tokens                                          CLEAR (stamp and failures cleared)
    ``invalid_grant``                                   link marked ``needs_reauth``; reason
                                                        ``invalid_grant`` from OWN,
                                                        ``lost_rotation`` from IN_DOUBT or
                                                        after a lost first answer
    answered without spending it (4xx, 429, redirect)   CLEAR from OWN, IN_DOUBT stays; a
    or never sent                                       failure is recorded
    the answer lost twice (timeout, reset, 5xx,         IN_DOUBT: the stamp stays, a failure
    unusable 200: one retry with the same token)        is recorded
    configuration error (``invalid_client``, ...)       CLEAR from OWN, no failure counted;
                                                        IN_DOUBT if in doubt
    ==================================================  =====================================

    The one label IN_DOUBT can get wrong: Slice revoking the link while a sibling attempt
    that stamped first has not posted yet.
    """

    CLEAR = "clear"
    OWN = "own"
    IN_DOUBT = "in_doubt"

    @classmethod
    def read(cls, row: SliceCredential, own_stamp: datetime | None) -> Journal:
        stamp = row.renewal_started_at
        if stamp is None:
            return cls.CLEAR
        if stamp != own_stamp:
            return cls.IN_DOUBT
        if row.last_error_at is not None and row.last_error_at >= stamp:
            return cls.IN_DOUBT
        return cls.OWN


@dataclass(frozen=True)
class _Stamped:
    """A renewal that had to stamp the row under its lock: the version it decided on."""

    version: int
    stamp: datetime


def _stamp(pk: int, now: datetime, *, force: bool, seen_version: int | None) -> datetime | None:
    """Stamp the journal if it is clear and a renewal looks due; return the stamp if set.

    One statement, committed at once (the caller has no transaction open: see
    :func:`renew_with_result`), that reads nothing back. "Looks due" is cheap to say in
    SQL: one of the tokens expires soon (within ``ACCESS_TOKEN_LEEWAY`` or
    ``RENEW_WITHIN``); with ``seen_version``, the row still holds it. The decision proper
    is taken under the lock (:func:`_needed`), where a renewal that finds nothing to do
    clears its stamp again.
    """
    with _lock_timeouts(pk):
        stamped = rows.stamp(pk, now, version=seen_version, due=not force)
    return now if stamped else None


def _settle(
    pk: int, own_stamp: datetime | None, *, force: bool, seen_version: int | None
) -> RenewalResult | _Stamped:
    """Decide on the row re-read under its lock, and renew it when needed (the single flight).

    Whoever holds the lock first spends the refresh token; the others then find the row
    renewed (not needed any more, or a new version) and return the sibling's tokens.
    """
    now = timezone.now()
    with _locked(pk) as row:
        try:
            needed = _needed(row, now, force, seen_version)
        except ConfigurationError:  # this process's keys are at fault, not the link
            _drop_stamp(row, own_stamp)
            raise
        if not needed:
            _drop_stamp(row, own_stamp)
            return RenewalResult(row, renewed=False)
        journal = Journal.read(row, own_stamp)
        if journal is Journal.CLEAR:
            row.renewal_started_at = now
            row.save(update_fields=["renewal_started_at"])
            return _Stamped(row.version, now)
        return _renewed(row, journal)


def _drop_stamp(row: SliceCredential, own_stamp: datetime | None) -> None:
    """Clear this call's stamp from ``row`` (nothing was posted), if it is still there."""
    if own_stamp is not None and row.renewal_started_at == own_stamp:
        row.renewal_started_at = None
        row.save(update_fields=["renewal_started_at"])


@sensitive_variables()  # every local, and the frames below (HTTP stack, ORM save)
def _renewed(row: SliceCredential, journal: Journal) -> RenewalResult:
    """Spend the refresh token and save what Slice answered, in the locked transaction."""
    tokens = _post_refresh(row, journal)
    _store(row, tokens)
    _send_on_commit(signals.credential_renewed, credential=row)
    return RenewalResult(row, renewed=True)


@sensitive_variables()  # the refresh token, and the HTTP stack's frames below
def _post_refresh(row: SliceCredential, journal: Journal) -> oauth.TokenSet:
    """POST the refresh (once more with the same token if the answer was lost).

    Every failure is recorded on the row and raised here, as the journal's table says.
    """
    in_doubt = journal is Journal.IN_DOUBT
    refresh_token = row.refresh_token
    assert isinstance(refresh_token, str)
    try:
        try:
            return oauth.refresh(refresh_token)
        except ResponseLost:
            # Slice may have rotated the token and we never saw the new one. Once more with
            # the same token: a server with a grace window answers; a strict one says
            # invalid_grant, which is then a lost rotation, not a revoked link.
            in_doubt = True
            return oauth.refresh(refresh_token)
    except TokenRequestFailed:
        _refused(row, lost=in_doubt)
    except ConfigurationError as exc:
        _misconfigured(row, exc, in_doubt=in_doubt)
    except (TransientError, InvalidTokenResponse) as exc:
        # ResponseLost included: a second lost answer keeps the journal in doubt.
        _not_renewed(row, exc, in_doubt=in_doubt or isinstance(exc, ResponseLost))


def _refused(row: SliceCredential, *, lost: bool) -> NoReturn:
    """Slice refused the refresh token: the link is dead, and why is recorded."""
    reason = Reason.LOST_ROTATION if lost else Reason.INVALID_GRANT
    error = NeedsReauth(
        f"Slice refused credential {row.pk}'s refresh token.", code=reason, reason=reason
    )
    now = timezone.now()
    _record_failure(row, error, now)
    _mark_needs_reauth(row, reason, now)
    row.save(update_fields=[*STATUS_FIELDS, "failure_count", "last_error_code"])
    (logger.error if lost else logger.warning)("Credential %s needs re-link: %s.", row.pk, reason)
    _failed(row, error, permanent=True)
    raise error


def _misconfigured(row: SliceCredential, error: ConfigurationError, *, in_doubt: bool) -> NoReturn:
    """Slice rejected our client: the site's fault, so no user is marked or signalled."""
    logger.critical(
        "Slice rejected our OAuth client (%s) while renewing credential %s: check "
        "SLICE_CONNECT['CLIENT_ID'] and ['CLIENT_SECRET']. No user was marked.",
        error.code,
        row.pk,
    )
    if in_doubt:
        # The token may be spent: keep the journal and record the failure, so the next
        # attempt knows the stamp is not a live one.
        _record_failure(row, error, timezone.now())
    else:
        row.renewal_started_at = None  # this attempt's own stamp: nothing was spent
    row.save(update_fields=BOOKKEEPING)
    raise error


def _not_renewed(row: SliceCredential, error: SliceConnectError, *, in_doubt: bool) -> NoReturn:
    """A failure that leaves the link as it was: recorded, and the journal kept or restored."""
    now = timezone.now()
    _record_failure(row, error, now)
    if not in_doubt:
        row.renewal_started_at = None  # this attempt's own stamp: answered or never sent
    elif row.renewal_started_at is None:
        row.renewal_started_at = now  # a sibling cleared the stamp meanwhile: set it again
    row.save(update_fields=BOOKKEEPING)
    _failed(row, error, permanent=False)
    raise error


#: What a renewal changes, besides the refresh token when Slice rotated it.
STORED_FIELDS = [
    "access_token",
    "refresh_token_expires_at",
    "token_type",
    "access_token_expires_at",
    "last_renewed_at",
    "version",
    *BOOKKEEPING,
    "updated_at",
]


def _store(row: SliceCredential, tokens: oauth.TokenSet) -> None:
    """Save the new tokens with the rotation, in the transaction that spent the old one."""
    now = timezone.now()
    row.access_token = tokens.access_token
    if tokens.refresh_token:
        row.refresh_token = tokens.refresh_token
        row.refresh_token_expires_at = tokens.refresh_token_expires_at
    else:
        # Not rotated: the old refresh token stays, with its expiry unless Slice stated a new
        # one; refresh_token_due() then keeps it from being renewed again for nothing.
        logger.info("Slice renewed credential %s without rotating its refresh token.", row.pk)
        if tokens.refresh_expires_in is not None:
            row.refresh_token_expires_at = tokens.refresh_token_expires_at
    row.token_type = tokens.token_type
    row.access_token_expires_at = tokens.access_token_expires_at
    row.last_renewed_at = now
    row.version += 1
    row.renewal_started_at = None
    row.failure_count = 0
    row.last_error_code = ""
    row.last_error_at = None
    rotated = ["refresh_token"] if tokens.refresh_token else []
    rows.save(row, [*STORED_FIELDS, *rotated])
    logger.info("Renewed Slice credential %s (version %s).", row.pk, row.version)


def _failed(row: SliceCredential, error: SliceConnectError, *, permanent: bool) -> None:
    _send_on_commit(
        signals.credential_renewal_failed, credential=row, error=error, permanent=permanent
    )
