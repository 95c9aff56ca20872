"""The OAuth 2.0 endpoints: django-oauth-toolkit's views with Slice's behaviour."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

from django.db import connections, router
from django.http import HttpRequest, HttpResponse, JsonResponse
from oauth2_provider.models import get_access_token_model
from oauth2_provider.settings import oauth2_settings
from oauth2_provider.views import AuthorizationView, RevokeTokenView, TokenView

from .conf import access_token_expires_in, sandbox_seconds
from .models import GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN, TokenRequest
from .validators import SandboxOAuth2Validator

SUPPORTED_GRANT_TYPES = (GRANT_AUTHORIZATION_CODE, GRANT_REFRESH_TOKEN)

_shared_connection_lock = threading.Lock()


def _serialize_writes() -> contextlib.AbstractContextManager[Any]:
    """Serialize token writes when live_server shares one in-memory SQLite connection.

    Every request thread then uses the same connection, so two interleaved
    transactions corrupt each other (IntegrityError, TransactionManagementError).
    """
    connection = connections[router.db_for_write(get_access_token_model())]
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        return _shared_connection_lock
    return contextlib.nullcontext()


class SandboxOAuthLibMixin:
    """Pins the sandbox validator, whatever OAUTH2_PROVIDER names."""

    validator_class = SandboxOAuth2Validator

    @classmethod
    def get_server(cls) -> Any:
        # A callable lifetime is read per token, so override_settings applies at once.
        kwargs = {**oauth2_settings.server_kwargs, "token_expires_in": access_token_expires_in}
        return cls.get_server_class()(cls.get_validator_class()(), **kwargs)  # type: ignore[attr-defined]

    @classmethod
    def get_oauthlib_core(cls) -> Any:
        # DOT caches with hasattr(), which would also pick up a parent view's cache.
        if "_oauthlib_core" not in cls.__dict__ or oauth2_settings.ALWAYS_RELOAD_OAUTHLIB_CORE:
            core_class = cls.get_oauthlib_backend_class()  # type: ignore[attr-defined]
            cls._oauthlib_core = core_class(cls.get_server())
        return cls._oauthlib_core


class SandboxAuthorizationView(SandboxOAuthLibMixin, AuthorizationView):
    """GET shows the consent page; POST with ``allow`` grants, without it denies."""

    template_name = "slice_sandbox/authorize.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with _serialize_writes():
            return super().post(request, *args, **kwargs)


class SandboxTokenView(SandboxOAuthLibMixin, TokenView):
    """The token endpoint; logs every request in ``TokenRequest``."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        grant_type = request.POST.get("grant_type", "")
        if grant_type not in SUPPORTED_GRANT_TYPES:
            response: HttpResponse = JsonResponse({"error": "unsupported_grant_type"}, status=400)
            response["Cache-Control"] = "no-store"
            self._record(request, grant_type, response)
            return response
        if grant_type == GRANT_REFRESH_TOKEN:
            # A real server takes time; an instant fake can hide client-side races.
            delay = sandbox_seconds("TOKEN_DELAY_SECONDS")
            if delay > 0:
                time.sleep(delay)
        with _serialize_writes():
            try:
                response = super().post(request, *args, **kwargs)
            except Exception:
                self._record(request, grant_type, None)
                raise
            self._record(request, grant_type, response)
        return response

    @staticmethod
    def _record(request: HttpRequest, grant_type: str, response: HttpResponse | None) -> None:
        status_code = 500 if response is None else response.status_code
        error = "server_error" if response is None else ""
        if response is not None and status_code != 200:
            try:
                error = str(json.loads(response.content).get("error", ""))
            except (ValueError, AttributeError):
                error = "unknown"
        TokenRequest.objects.create(
            grant_type=grant_type[:64],
            client_id=request.POST.get("client_id", "")[:255],
            status_code=status_code,
            error=error[:64],
        )


class SandboxRevokeTokenView(SandboxOAuthLibMixin, RevokeTokenView):
    """RFC 7009 revocation with client credentials in the form body."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        with _serialize_writes():
            return super().post(request, *args, **kwargs)
