"""Template tags for showing a user's Slice link: ``{% load slice_connect %}``.

* ``{% slice_connect_control %}`` renders the right control for the current user: a
  Connect button, a Reconnect button with the reason in words, or an Unlink button, each a
  POST form with a CSRF token (nothing for an anonymous user).
* ``{{ user|slice_linked }}`` is ``True`` when the user has a working link.
* ``{{ user|slice_credential }}`` is the user's credential (its tokens not loaded) or ``None``.

All three share one query per user object (see :func:`slice_connect.services.credential_of`).
"""

from __future__ import annotations

from typing import Any

from django import template

from slice_connect import services
from slice_connect.models import SliceCredential

register = template.Library()


@register.filter
def slice_linked(user: Any) -> bool:
    """``{{ user|slice_linked }}``: whether the user has a working Slice link."""
    return services.is_linked(user)


@register.filter
def slice_credential(user: Any) -> SliceCredential | None:
    """``{{ user|slice_credential }}``: the user's credential without its tokens, or ``None``."""
    return services.credential_of(user)


@register.inclusion_tag("slice_connect/control.html", takes_context=True)
def slice_connect_control(context: template.Context, next: str | None = None) -> dict[str, Any]:
    """Render Connect, Reconnect (with the reason) or Unlink for the current user.

    ``next`` is where to come back to after linking or unlinking; it defaults to the current
    page and is validated by the views (only same-site paths are kept).
    """
    request = context.get("request")
    user = context.get("user")
    if user is None and request is not None:
        user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"state": "anonymous"}
    if next is None and request is not None:
        next = request.get_full_path()
    credential = services.credential_of(user)
    if credential is None:
        state = "not_linked"
    elif credential.is_active:
        state = "linked"
    else:
        state = "needs_reauth"
    return {"state": state, "credential": credential, "next": next or ""}
