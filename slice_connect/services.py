"""The one path for every change to a credential: link, unlink and renew.

Views, the admin, the API client, the Celery tasks and the management commands all call
these functions; nothing else writes tokens or sends slice_connect's signals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.http import HttpRequest
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from . import durable, keyprobe, oauth, signals
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
        return related.get_cached_value(user)  # type: ignore[no-any-return]
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
    credential._slice_connect_request = request  # type: ignore[attr-defined]
    credential.delete()


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
    request = getattr(instance, "_slice_connect_request", None)
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


# -- renew -----------------------------------------------------------------------------


@dataclass
class RenewalResult:
    """What :func:`renew_with_result` did."""

    credential: SliceCredential
    renewed: bool


@contextmanager
def _locked(pk: int) -> Iterator[SliceCredential]:
    """Lock the credential's row for the rest of a new transaction and yield it, re-read."""
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                millis = int(app_settings.LOCK_TIMEOUT.total_seconds() * 1000)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{millis}ms"])
            row = SliceCredential.objects.select_for_update().get(pk=pk)
            yield row
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":
            raise RenewalLockTimeout(f"Credential {pk} stayed locked too long.") from None
        raise


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


def _check_usable(row: SliceCredential, now: datetime) -> NeedsReauth | None:
    """Return the error when ``row`` cannot be renewed, marking it (unsaved) if it just broke."""
    if row.status != Status.ACTIVE:
        return NeedsReauth(
            f"Credential {row.pk} needs the user to link Slice again.", reason=row.status_reason
        )
    if isinstance(row.refresh_token, UnreadableToken) or isinstance(
        row.access_token, UnreadableToken
    ):
        _refuse_if_keys_are_at_fault(row)
        _mark_needs_reauth(row, Reason.UNDECRYPTABLE, now)
        logger.error("Credential %s cannot be decrypted with FERNET_KEYS.", row.pk)
        return CredentialUnreadable(
            f"Credential {row.pk} cannot be decrypted.", reason=Reason.UNDECRYPTABLE
        )
    if row.refresh_token_expires_at <= now:
        _mark_needs_reauth(row, Reason.REFRESH_EXPIRED, now)
        return NeedsReauth(
            f"Credential {row.pk}'s refresh token expired.",
            code=Reason.REFRESH_EXPIRED,
            reason=Reason.REFRESH_EXPIRED,
        )
    return None


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
    :class:`ConfigurationError` (see the README's error taxonomy).
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
    if seen_version is not None:
        return row.version == seen_version
    return force or row.needs_renewal(now)


def _renew(pk: int | None, *, force: bool, seen_version: int | None) -> RenewalResult:
    if pk is None:
        raise NotLinked("This credential has not been saved (or was deleted).")
    try:
        return _renew_row(pk, force=force, seen_version=seen_version)
    except SliceCredential.DoesNotExist:
        # Unlinked (or the user deleted) while this call was running.
        raise NotLinked(f"Credential {pk} was deleted.") from None


def _renew_row(pk: int, *, force: bool, seen_version: int | None) -> RenewalResult:
    # Phase 1: decide under the lock and journal the attempt, committed before any request,
    # so that a crash after the POST leaves a trace (renewal_started_at) for the next run.
    now = timezone.now()
    with _locked(pk) as row:
        was_active = row.status == Status.ACTIVE
        problem = _check_usable(row, now)
        if problem is None and not _needed(row, now, force, seen_version):
            return RenewalResult(row, renewed=False)
        if problem is None:
            started = row.renewal_started_at
            own_stamp = None
            if started is None:
                row.renewal_started_at = own_stamp = now
                row.save(update_fields=["renewal_started_at"])
            version = row.version
        elif was_active:
            row.save(update_fields=STATUS_FIELDS)
            _failed(row, problem, permanent=True)
    if problem is not None:
        raise problem

    # Phase 2: the single flight. Whoever holds the lock first spends the refresh token;
    # the others find a new version and return the sibling's tokens.
    with _locked(pk) as row:
        if row.status != Status.ACTIVE:
            raise NeedsReauth(
                f"Credential {pk} needs the user to link Slice again.", reason=row.status_reason
            )
        if row.version != version:
            return RenewalResult(row, renewed=False)
        lost = _maybe_spent(row, own_stamp)
        outcome = _spend_refresh_token(row, started_before=started, lost=lost)
        if outcome is None:
            _send_on_commit(signals.credential_renewed, credential=row)
        elif not isinstance(outcome, ConfigurationError):
            _failed(row, outcome, permanent=isinstance(outcome, NeedsReauth))
    if outcome is not None:
        raise outcome
    return RenewalResult(row, renewed=True)


def _maybe_spent(row: SliceCredential, own_stamp: datetime | None) -> bool:
    """Whether the journal says the row's refresh token may already have been spent.

    Read under the phase-2 lock, just before posting. A stamp this attempt did not set was
    left by an attempt that may have posted and then died (a worker killed after the POST,
    whose task Celery redelivers at once) or that is still waiting for the lock (it has not
    posted: the one case the label can get wrong, and only if Slice also revoked the token
    meanwhile). Our own stamp counts too once a sibling recorded a failure after it: its
    answers were lost and it kept the stamp on purpose.
    """
    stamp = row.renewal_started_at
    if stamp is None:
        return False
    if stamp != own_stamp:
        return True
    return row.last_error_at is not None and row.last_error_at >= stamp


def _failed(row: SliceCredential, error: SliceConnectError, *, permanent: bool) -> None:
    _send_on_commit(
        signals.credential_renewal_failed, credential=row, error=error, permanent=permanent
    )


@sensitive_variables()  # every local, and the frames below (HTTP stack, ORM save)
def _spend_refresh_token(
    row: SliceCredential, *, started_before: datetime | None, lost: bool
) -> SliceConnectError | None:
    """POST the refresh under the lock; save the outcome; return the error, if any."""
    refresh_token = row.refresh_token
    assert isinstance(refresh_token, str)
    retried = False
    while True:
        try:
            tokens = oauth.refresh(refresh_token)
            break
        except ResponseLost as exc:
            # Slice may have rotated the token and we never saw the new one. Try once more
            # with the same token: a server with a grace window answers; a strict one says
            # invalid_grant, which is then a lost rotation, not a revoked link.
            lost = True
            if retried:
                now = timezone.now()
                _record_failure(row, exc, now)
                row.renewal_started_at = row.renewal_started_at or now
                row.save(update_fields=BOOKKEEPING)
                return exc
            retried = True
        except TokenRequestFailed:
            now = timezone.now()
            reason = Reason.LOST_ROTATION if lost else Reason.INVALID_GRANT
            error = NeedsReauth(
                f"Slice refused credential {row.pk}'s refresh token.", code=reason, reason=reason
            )
            _record_failure(row, error, now)
            _mark_needs_reauth(row, reason, now)
            row.save(update_fields=[*STATUS_FIELDS, "failure_count", "last_error_code"])
            log = logger.error if lost else logger.warning
            log("Credential %s needs re-link: %s.", row.pk, reason)
            return error
        except ConfigurationError as exc:
            logger.critical(
                "Slice rejected our OAuth client (%s) while renewing credential %s: check "
                "SLICE_CONNECT['CLIENT_ID'] and ['CLIENT_SECRET']. No user was marked.",
                exc.code,
                row.pk,
            )
            if lost:
                # A lost first answer may have rotated the token: keep the journal, and
                # record the failure so the next attempt knows the stamp is not a live one.
                _record_failure(row, exc, timezone.now())
            else:
                row.renewal_started_at = started_before
            row.save(update_fields=BOOKKEEPING)
            return exc
        except (TransientError, InvalidTokenResponse) as exc:
            now = timezone.now()
            _record_failure(row, exc, now)
            # The request was answered or never sent, so the token was not spent by it.
            row.renewal_started_at = started_before if not lost else row.renewal_started_at
            row.save(update_fields=BOOKKEEPING)
            return exc
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
    row.save()
    logger.info("Renewed Slice credential %s (version %s).", row.pk, row.version)
    return None
