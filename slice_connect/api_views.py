"""JSON endpoints for single-page apps: the link's status, start linking, unlink.

Kept apart from :mod:`slice_connect.views` because these views speak another protocol over
the same flow. Every answer, errors included, is JSON marked ``Cache-Control: no-store``:
401 instead of a redirect to the login page, 405 for a wrong method, 403 instead of
Django's HTML CSRF page, 400 for bad input and 500 with a fixed text for anything
unexpected. The flow itself is not repeated here: an attempt starts in
:func:`slice_connect.views.start_authorization` (the HTML authorize view's own function,
with its ``safe_next`` rule) and ends in the same callback view, and unlinking goes
through :func:`slice_connect.services.unlink`.

Authentication is the Django session; POSTs need Django's CSRF token in the
``X-CSRFToken`` header (or a ``csrfmiddlewaretoken`` form field). The check is the one
``csrf_protect`` applies, so it holds with or without ``CsrfViewMiddleware`` installed.
Nothing here needs Django REST framework.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from datetime import timezone as dt_timezone
from functools import wraps
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.core.signals import got_request_exception
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware, get_token
from django.utils import timezone
from django.utils.log import log_response
from django.views.decorators.debug import sensitive_variables

from . import services
from .models import SliceCredential
from .views import safe_next, start_authorization

logger = logging.getLogger(__name__)
csrf_logger = logging.getLogger("django.security.csrf")

#: The status endpoint hands the (masked) CSRF token out in this header as well as in the
#: cookie, for a front end on another origin, which cannot read this site's cookies.
CSRF_HEADER = "X-CSRFToken"
#: Largest request body the authorize endpoint reads; a ``next`` path is at most 2048.
MAX_BODY = 8192

View = Callable[..., HttpResponse]


def error(status: int, code: str, detail: str, **headers: str) -> JsonResponse:
    """``{"error": code, "detail": detail}`` with ``status``; texts are fixed, never data."""
    response = JsonResponse({"error": code, "detail": detail}, status=status)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


class JsonCsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, answering a failure with JSON instead of the HTML page."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        response = error(
            403,
            "csrf_failed",
            f"CSRF check failed. Send the CSRF token in the {CSRF_HEADER} header.",
        )
        # As Django logs its own refusals (the reason names no secret).
        log_response(
            "Forbidden (%s): %s",
            reason,
            request.path,
            response=response,
            request=request,
            logger=csrf_logger,
        )
        return response


def csrf_protect_json(view: View) -> View:
    """``csrf_protect`` (Django's CSRF check as a decorator), refusing with JSON.

    ``csrf_protect`` is ``decorator_from_middleware(CsrfViewMiddleware)``, which does this
    with one middleware instance for the life of the process; a fresh one per request reads
    ``CSRF_TRUSTED_ORIGINS`` as it is now (the middleware caches it per instance).
    """

    @wraps(view)
    def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        check = JsonCsrfCheck(view)
        check.process_request(request)
        refusal = check.process_view(request, view, args, kwargs)
        if refusal is not None:
            return refusal
        response = view(request, *args, **kwargs)
        check.process_response(request, response)  # sets the CSRF cookie on it, if due
        return response

    return checked


def _roll_back_atomic_requests() -> None:
    """Undo the request's writes under ``ATOMIC_REQUESTS``, as if the error had propagated."""
    for conn in connections.all(initialized_only=True):
        if conn.settings_dict.get("ATOMIC_REQUESTS") and conn.in_atomic_block:
            conn.set_rollback(True)


def json_endpoint(*methods: str) -> Callable[[View], View]:
    """Allow ``methods``, require a logged-in user and a CSRF token, answer errors as JSON."""
    allowed = ", ".join(methods)

    def decorate(view: View) -> View:
        checked = csrf_protect_json(view)

        @wraps(view)
        def endpoint(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            response: HttpResponse
            if request.method not in methods:
                response = error(405, "method_not_allowed", f"Use {allowed}.", Allow=allowed)
            elif not request.user.is_authenticated:
                response = error(401, "not_authenticated", "Log in first.")
            else:
                try:
                    response = checked(request, *args, **kwargs)
                except Exception as exc:  # answered as JSON; reported as Django reports a 500
                    _roll_back_atomic_requests()
                    got_request_exception.send(sender=None, request=request)
                    response = error(500, "server_error", "Something went wrong. Please try again.")
                    log_response(
                        "Internal Server Error: %s",
                        request.path,
                        response=response,
                        request=request,
                        exception=exc,
                    )
            response["Cache-Control"] = "no-store"
            return response

        # CsrfViewMiddleware would refuse with its HTML page before the view runs; the
        # view makes the very same check itself (csrf_protect_json), after the login check.
        endpoint.csrf_exempt = True  # type: ignore[attr-defined]
        return endpoint

    return decorate


def iso(value: datetime | None) -> str | None:
    """ISO 8601 with the UTC offset (``2026-12-02T07:30:00.123456+00:00``), or ``None``."""
    if value is None:
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value.astimezone(dt_timezone.utc).isoformat()


def status_of(credential: SliceCredential | None) -> dict[str, Any]:
    """The status endpoint's body for ``credential`` (loaded without its tokens)."""
    if credential is None:
        return {
            "linked": False,
            "status": None,
            "reason": None,
            "linked_at": None,
            "access_token_expires_at": None,
            "refresh_token_expires_at": None,
            "last_renewed_at": None,
        }
    return {
        "linked": True,
        "status": str(credential.status),
        "reason": str(credential.status_reason) or None,
        "linked_at": iso(credential.linked_at),
        "access_token_expires_at": iso(credential.access_token_expires_at),
        "refresh_token_expires_at": iso(credential.refresh_token_expires_at),
        "last_renewed_at": iso(credential.last_renewed_at),
    }


@json_endpoint("GET")
def status(request: HttpRequest) -> HttpResponse:
    """GET: the user's link, never a token (the token columns are not even read)."""
    credential = services.credential_of(request.user)
    response = JsonResponse(status_of(credential))
    # Also sets the CSRF cookie when the browser has none yet.
    response[CSRF_HEADER] = get_token(request)
    return response


class BadInput(Exception):
    """A request body the authorize endpoint cannot use; the message is a fixed text."""


def _next_from(request: HttpRequest) -> str | None:
    """The optional ``next`` of a JSON object body or of a form."""
    content_type = request.content_type or ""
    if content_type == "application/json" or content_type.endswith("+json"):
        value = _json_next(request)
    else:
        value = _form_next(request)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput("next must be a string.")
    return value


def _json_next(request: HttpRequest) -> Any:
    """``next`` of a JSON object body (any JSON type: the caller checks it)."""
    try:
        raw = request.body
    except RequestDataTooBig:
        raise BadInput("The request body is too large.") from None
    if len(raw) > MAX_BODY:
        raise BadInput("The request body is too large.")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadInput("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadInput("The request body must be a JSON object.")
    return body.get("next")


def _form_next(request: HttpRequest) -> str | None:
    """``next`` of a form body, given at most once."""
    try:
        values = request.POST.getlist("next")
    except RequestDataTooBig:
        raise BadInput("The request body is too large.") from None
    if len(values) > 1:
        raise BadInput("Give next at most once.")
    return values[0] if values else None


@json_endpoint("POST")
@sensitive_variables("url")  # it carries the state
def authorize(request: HttpRequest) -> HttpResponse:
    """POST: start linking; the browser must then open ``authorize_url``.

    The callback sends it back to ``next`` (a same-site path, checked as the HTML view
    checks it; anything else is refused here with 400) or to ``LINK_SUCCESS_URL``.
    """
    try:
        next_url = _next_from(request)
    except BadInput as exc:
        return error(400, "invalid_request", str(exc))
    if next_url is not None and safe_next(request, next_url) is None:
        return error(400, "invalid_next", "next must be a path on this site, such as /account/.")
    url = start_authorization(request, next_url)
    return JsonResponse({"authorize_url": url})


@json_endpoint("POST")
def unlink(request: HttpRequest) -> HttpResponse:
    """POST: delete the user's link (revoked at Slice, best effort); fine when none exists."""
    if not services.unlink_user(request.user, request=request):
        logger.info("Unlink requested by user %s, who has no credential.", request.user.pk)
    return JsonResponse({"linked": False})
