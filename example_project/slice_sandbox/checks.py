from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

from .conf import DEFAULTS


@checks.register()
def check_sandbox_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    configured = getattr(settings, "SLICE_SANDBOX", None) or {}
    provider = getattr(settings, "OAUTH2_PROVIDER", None) or {}

    unknown = sorted(set(configured) - set(DEFAULTS))
    if unknown:
        messages.append(
            checks.Error(
                f"Unknown SLICE_SANDBOX key(s): {', '.join(unknown)}.",
                hint=f"Known keys: {', '.join(DEFAULTS)}.",
                id="slice_sandbox.E001",
            )
        )
    if provider.get("ROTATE_REFRESH_TOKEN") is False:
        messages.append(
            checks.Warning(
                "OAUTH2_PROVIDER['ROTATE_REFRESH_TOKEN'] is False, but Slice rotates refresh "
                "tokens.",
                hint="Build OAUTH2_PROVIDER with slice_sandbox.conf.oauth2_provider_settings().",
                id="slice_sandbox.W001",
            )
        )
    # DOT enforces the grace period from OAUTH2_PROVIDER alone, so the two must agree.
    if "GRACE_SECONDS" in configured and configured["GRACE_SECONDS"] != provider.get(
        "REFRESH_TOKEN_GRACE_PERIOD_SECONDS", 0
    ):
        messages.append(
            checks.Warning(
                "SLICE_SANDBOX['GRACE_SECONDS'] differs from "
                "OAUTH2_PROVIDER['REFRESH_TOKEN_GRACE_PERIOD_SECONDS']; the latter wins.",
                hint="Use OAUTH2_PROVIDER = oauth2_provider_settings(**SLICE_SANDBOX).",
                id="slice_sandbox.W002",
            )
        )
    return messages
