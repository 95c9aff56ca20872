from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from oauth2_provider.models import get_refresh_token_model
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.settings import oauth2_settings
from oauthlib.oauth2.rfc6749.errors import InvalidGrantError

from .conf import refresh_token_lifetime, sandbox_seconds, sandbox_setting


class SandboxOAuth2Validator(OAuth2Validator):
    """DOT's validator with Slice's token rules, reading the sandbox settings live."""

    def validate_refresh_token(
        self, refresh_token: str, client: Any, request: Any, *args: Any, **kwargs: Any
    ) -> bool:
        if not super().validate_refresh_token(refresh_token, client, request, *args, **kwargs):
            return False
        # DOT only expires a refresh token REFRESH_TOKEN_EXPIRE_SECONDS after its access
        # token expires (a sliding window); Slice counts from the refresh token's creation.
        lifetime = refresh_token_lifetime()
        instance = request.refresh_token_instance
        return lifetime is None or instance.created + lifetime > timezone.now()

    def is_pkce_required(self, client_id: str, request: Any) -> bool:
        required = sandbox_setting("PKCE_REQUIRED")
        return bool(required(client_id) if callable(required) else required)

    def _create_authorization_code(
        self, request: Any, code: dict[str, Any], expires: Any = None
    ) -> Any:
        if expires is None:
            expires = timezone.now() + timedelta(seconds=sandbox_seconds("CODE_SECONDS"))
        return super()._create_authorization_code(request, code, expires=expires)

    def _save_bearer_token(
        self, token: dict[str, Any], request: Any, *args: Any, **kwargs: Any
    ) -> Any:
        previous = getattr(request, "refresh_token_instance", None)
        if previous is not None and not oauth2_settings.REFRESH_TOKEN_GRACE_PERIOD_SECONDS:
            # Two requests can both pass validate_refresh_token with the same token; DOT
            # then hands the loser the winner's new pair. Slice's old token simply dies.
            # This runs inside save_bearer_token's transaction, so the row lock holds.
            locked = get_refresh_token_model().objects.select_for_update().get(pk=previous.pk)
            if locked.revoked is not None:
                raise InvalidGrantError(request=request)
        return super()._save_bearer_token(token, request, *args, **kwargs)
