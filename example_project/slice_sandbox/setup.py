"""Registering the client app (the django-slice-connect side) with the sandbox."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.hashers import check_password, identify_hasher
from django.db import transaction
from oauth2_provider.models import AbstractApplication, get_application_model

DEFAULT_NAME = "Slice Connect"


def _secret_matches(plaintext: str, stored: str) -> bool:
    try:
        identify_hasher(stored)
    except ValueError:
        return plaintext == stored
    return check_password(plaintext, stored)


def ensure_application(
    client_id: str,
    client_secret: str,
    redirect_uris: str | Iterable[str],
    user: Any = None,
    *,
    name: str = DEFAULT_NAME,
) -> AbstractApplication:
    """Create or update the confidential auth-code Application, idempotently.

    ``redirect_uris`` is one URI, a space-separated string or an iterable. DOT hashes
    the secret on save, so keep the plaintext you passed: only it works at /oauth/token.
    """
    uris = redirect_uris.split() if isinstance(redirect_uris, str) else list(redirect_uris)
    if not client_id or not client_secret or not uris:
        raise ValueError("client_id, client_secret and at least one redirect URI are required")
    application_model = get_application_model()
    wanted = {
        "name": name,
        "user": user,
        "redirect_uris": " ".join(uris),
        "client_type": application_model.CLIENT_CONFIDENTIAL,
        "authorization_grant_type": application_model.GRANT_AUTHORIZATION_CODE,
        "skip_authorization": False,
        "algorithm": application_model.NO_ALGORITHM,
        "hash_client_secret": True,
    }
    with transaction.atomic():
        application = (
            application_model.objects.select_for_update().filter(client_id=client_id).first()
        )
        if application is None:
            application = application_model(client_id=client_id, client_secret=client_secret)
            for field, value in wanted.items():
                setattr(application, field, value)
            application.save()
            return application
        changed = [f for f, value in wanted.items() if getattr(application, f) != value]
        for field in changed:
            setattr(application, field, wanted[field])
        # Re-hash only when the secret really changed: hashing is slow on purpose.
        if not _secret_matches(client_secret, application.client_secret):
            application.client_secret = client_secret
            changed.append("client_secret")
        if changed:
            application.save()
    return application
