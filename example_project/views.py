"""The example project's pages: the link status, the Slice profile and recent orders."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from slice_connect.client import SliceClient
from slice_connect.conf import app_settings
from slice_connect.exceptions import (
    ApiError,
    NeedsReauth,
    NotLinked,
    SliceConnectError,
    TransientError,
)
from slice_connect.models import SliceCredential

RECENT_ORDERS = 5


@dataclass
class Problem:
    """Why the Slice data could not be shown, in words for the user."""

    message: str
    reconnect: bool = False


@dataclass
class Order:
    """One Slice order, as the home page shows it."""

    title: str
    date: str
    total: str


def dollars(cents: Any) -> str:
    """Format an amount in cents (as Slice sends them) as dollars."""
    try:
        return f"${Decimal(int(cents)) / 100:,.2f}"
    except (TypeError, ValueError, InvalidOperation):
        return "-"


def in_words(duration: timedelta) -> str:
    """``timedelta(minutes=5)`` -> ``"5 minutes"``; the largest whole unit."""
    seconds = int(duration.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' * (count != 1)}"
    return f"{seconds} second{'s' * (seconds != 1)}"


def problem_for(error: SliceConnectError) -> Problem:
    """A friendly message for an error of the Slice client."""
    if isinstance(error, NotLinked):
        return Problem("Your Slice account is not linked.", reconnect=True)
    if isinstance(error, NeedsReauth):
        reason = dict(SliceCredential.Reason.choices).get(error.reason, "") if error.reason else ""
        detail = f" ({reason})" if reason else ""
        return Problem(
            f"Your Slice link stopped working{detail}. Connect Slice again to repair it.",
            reconnect=True,
        )
    if isinstance(error, TransientError):
        return Problem("Slice is not answering right now. Please reload in a moment.")
    if isinstance(error, ApiError):
        return Problem(
            f"Slice answered with an error (HTTP {error.status_code}). "
            "If it keeps happening, connect Slice again.",
            reconnect=True,
        )
    return Problem("Slice could not be used with this link. Connect Slice again.", reconnect=True)


def fetch_slice_data(user: Any) -> tuple[dict[str, Any] | None, list[Order], Problem | None]:
    """The user's Slice profile and recent orders, through ``SliceClient``."""
    try:
        with SliceClient(user) as client:
            profile = client.get("users/self").get("result") or {}
            rows = client.get("orders", limit=RECENT_ORDERS).get("result") or []
    except SliceConnectError as error:
        return None, [], problem_for(error)
    orders = [
        Order(
            title=str(row.get("orderTitle") or "(untitled)"),
            date=str(row.get("orderDate") or ""),
            total=dollars(row.get("orderTotal")),
        )
        for row in rows[:RECENT_ORDERS]
    ]
    # Slice lists the most recently updated first; show them newest order first.
    orders.sort(key=lambda order: order.date, reverse=True)
    return profile, orders, None


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The link status, with Connect/Unlink buttons, and the user's Slice data."""
    profile: dict[str, Any] | None = None
    orders: list[Order] = []
    problem: Problem | None = None
    credential = SliceCredential.objects.without_tokens().filter(user=request.user).first()
    if credential is not None and credential.is_active:
        profile, orders, problem = fetch_slice_data(request.user)
        # The client may just have renewed the tokens: show the row as it is now.
        credential = SliceCredential.objects.without_tokens().filter(user=request.user).first()
    elif credential is not None:
        problem = problem_for(NeedsReauth(reason=credential.status_reason))
    context = {
        "credential": credential,
        "profile": profile,
        "orders": orders,
        "problem": problem,
        "renew_within": in_words(app_settings.RENEW_WITHIN),
        "now": timezone.now(),
    }
    return render(request, "example/home.html", context)


@login_required
def spa(request: HttpRequest) -> HttpResponse:
    """The link page as a single-page app: static HTML whose script uses only ``fetch()``.

    It reads the status, starts linking and unlinks through slice_connect's JSON endpoints
    (``slice_connect:api-status``, ``api-authorize``, ``api-unlink``); nothing about the
    link is rendered on the server.
    """
    return render(request, "example/spa.html")
