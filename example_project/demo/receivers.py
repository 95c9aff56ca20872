"""Signal receivers of the example project."""

from __future__ import annotations

from typing import Any

from django.contrib import messages


def say_linked(sender: Any, request: Any = None, created: bool = True, **kwargs: Any) -> None:
    """Tell the user their account was linked (``credential_linked`` receiver)."""
    if request is not None:
        text = "Your Slice account is linked." if created else "Your Slice account is linked again."
        messages.success(request, text, fail_silently=True)
