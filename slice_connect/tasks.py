"""Celery tasks: thin wrappers around :mod:`slice_connect.services`. Arguments are ids only.

The package never creates a Celery app or a beat schedule; see the README for the entry.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from celery import shared_task
from django.utils import timezone

from . import services
from .conf import app_settings
from .exceptions import (
    ConfigurationError,
    InvalidTokenResponse,
    NeedsReauth,
    NotLinked,
    TransientError,
)
from .models import SliceCredential

logger = logging.getLogger(__name__)


def retry_delay(retries: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, at least ``Retry-After``, at most the cap."""
    base = app_settings.RENEW_RETRY_BACKOFF.total_seconds()
    cap = app_settings.RENEW_RETRY_BACKOFF_MAX.total_seconds()
    delay = min(cap, base * (2**retries))
    delay = random.uniform(delay / 2, delay)  # noqa: S311  (jitter, not a secret)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, cap)


@shared_task(
    name="slice_connect.renew_credential",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def renew_credential(self: Any, credential_id: int) -> str:
    """Renew one credential if it is still due; idempotent, so redelivery costs nothing."""
    try:
        result = services.renew_by_id(credential_id)
    except NotLinked:
        return "gone"
    except TransientError as exc:
        if self.request.retries >= app_settings.RENEW_MAX_RETRIES:
            logger.warning("Giving up renewing credential %s for now: %s", credential_id, exc.code)
            return "failed"
        raise self.retry(
            countdown=retry_delay(self.request.retries, exc.retry_after), exc=exc
        ) from None
    except NeedsReauth:
        return "needs_reauth"
    except (ConfigurationError, InvalidTokenResponse):
        return "failed"
    return "renewed" if result.renewed else "skipped"


@shared_task(name="slice_connect.renew_due_credentials", ignore_result=True)
def renew_due_credentials() -> int:
    """The beat entry: enqueue one renewal per due credential, spread at a capped rate.

    At most ``RENEW_RATE_LIMIT`` x ``RENEW_SPREAD`` credentials are scheduled per run, most
    urgent first, each at its own slot in the window plus jitter; the rest wait for the next
    run, so a backlog after an outage reaches Slice at a steady rate.

    Credentials whose refresh token has already expired are enqueued at once and take no
    slot: their task sends nothing to Slice (it only marks them needs_reauth), and as the
    most urgent they would otherwise push live credentials past their own deadlines.
    """
    rate = max(app_settings.RENEW_RATE_LIMIT, 0.001)
    capacity = max(1, int(rate * app_settings.RENEW_SPREAD.total_seconds()))
    now = timezone.now()
    due = SliceCredential.objects.due_for_renewal(now)
    expired = 0
    for credential_id in due.filter(refresh_token_expires_at__lte=now).iter_ids():
        renew_credential.apply_async((credential_id,), countdown=0)
        expired += 1
    scheduled = 0
    for credential_id in due.filter(refresh_token_expires_at__gt=now).iter_ids():
        if scheduled >= capacity:
            break
        countdown = (scheduled + random.random()) / rate  # noqa: S311
        renew_credential.apply_async((credential_id,), countdown=countdown)
        scheduled += 1
    logger.info(
        "Scheduled %s Slice credential renewals (and %s expired links).", scheduled, expired
    )
    return scheduled + expired
