"""Authorize, callback and unlink views."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.mixins import LoginRequiredMixin
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.utils.decorators import method_decorator
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _
from django.views import View
from django.views.decorators.clickjacking import xframe_options_deny
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_variables

from . import oauth, services, states
from .conf import app_settings

logger = logging.getLogger(__name__)

MAX_NEXT_LENGTH = 2048
MAX_STATE_LENGTH = services.MAX_STATE_LENGTH
MAX_CODE_LENGTH = services.MAX_CODE_LENGTH
SINGLE_VALUED = services.SINGLE_VALUED

#: Fixed texts for the error codes Slice documents (and RFC 6749 section 4.1.2.1 lists).
#: ``error_description`` is never shown: it comes from the URL and anyone can forge it.
ERROR_MESSAGES = {
    "access_denied": _("You chose not to give this site access to your Slice account."),
    "invalid_request": _("Slice could not understand the request to link your account."),
    "unsupported_response_type": _("Slice refused the kind of request this site sent."),
    "unauthorized_client": _("Slice does not allow this site to link accounts right now."),
    "invalid_scope": _("Slice refused the access this site asked for."),
    "server_error": _("Slice had a problem and could not link your account."),
    "temporarily_unavailable": _("Slice is busy right now."),
}
GENERIC_ERROR = _("Slice could not link your account.")
ALREADY_USED = _(
    "This link request was already used, for example by a double click or a reload. "
    "If your Slice account is not linked yet, please start again."
)


def safe_next(request: HttpRequest, target: str | None) -> str | None:
    """Return ``target`` if it is a same-site relative path, else ``None``."""
    if not target or len(target) > MAX_NEXT_LENGTH:
        return None
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return None
    if "\\" in target or not target.isprintable():  # control, format and separator chars
        return None
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return None
    return target


def default_next() -> str:
    """Where to go when no valid ``next`` was given."""
    return services.link_success_url()


def redirect_uri_for(request: HttpRequest) -> str:
    """The configured ``REDIRECT_URI``, else the absolute URL of the callback view."""
    return app_settings.REDIRECT_URI or request.build_absolute_uri(
        reverse("slice_connect:callback")
    )


@sensitive_variables("state")
def start_authorization(request: HttpRequest, next_url: str | None = None) -> str:
    """Start an authorization attempt for ``request.user``; return Slice's authorization URL.

    Creates a single-use state, remembers it in the session (with the redirect URI, PKCE
    and ``next_url`` if :func:`safe_next` accepts it, else nothing) and builds the URL the
    browser must open. The authorize view and the JSON endpoint both start here, so the
    callback treats their attempts alike.
    """
    state = states.new_state()
    attempt = states.remember(
        request,
        state,
        redirect_uri=redirect_uri_for(request),
        use_pkce=app_settings.USE_PKCE,
        next_url=safe_next(request, next_url),
    )
    return oauth.authorization_url(
        state=state, redirect_uri=attempt.redirect_uri, use_pkce=attempt.use_pkce
    )


#: A view function, as Django's view decorators take and return it.
ViewFunction = Callable[..., HttpResponseBase]


def no_store(view: ViewFunction) -> ViewFunction:
    """Mark every answer of ``view`` ``Cache-Control: no-store`` (it shows link state)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        patch_cache_control(response, no_store=True)
        return response

    return wrapped


#: Our pages protect themselves whatever middleware the site runs: Django's CSRF check on
#: every POST (``csrf_protect``, also needed for ``{% csrf_token %}`` without the
#: middleware), ``no-store`` on every answer (login redirects and CSRF refusals included),
#: and no framing (clickjacking the "Continue to Slice" or "Unlink" button).
SELF_PROTECTED: list[Callable[[ViewFunction], ViewFunction]] = [
    xframe_options_deny,
    no_store,
    csrf_protect,
]
#: The callback takes no POST (405) and its pages have no form: no CSRF check to make.
SELF_PROTECTED_GET_ONLY: list[Callable[[ViewFunction], ViewFunction]] = [
    xframe_options_deny,
    no_store,
]


@method_decorator(SELF_PROTECTED, name="dispatch")
class AuthorizeView(LoginRequiredMixin, View):
    """Start linking: GET shows a confirmation page, POST sends the user to Slice.

    Starting on POST only (with CSRF) keeps another site from starting a flow for the user.
    """

    http_method_names = ["get", "post"]
    template_name = "slice_connect/authorize.html"

    def get(self, request: HttpRequest) -> HttpResponse:
        next_url = safe_next(request, request.GET.get("next"))
        context = {
            "next": next_url or "",
            "cancel_url": next_url or default_next(),
            "credential": services.credential_of(request.user),
        }
        return render(request, self.template_name, context)

    @method_decorator(sensitive_variables("url"))  # it carries the state
    def post(self, request: HttpRequest) -> HttpResponse:
        url = start_authorization(request, request.POST.get("next") or request.GET.get("next"))
        response = HttpResponseRedirect(url)
        response["Cache-Control"] = "no-store"
        response["Referrer-Policy"] = "no-referrer"
        return response


@dataclass(frozen=True)
class RefusalPage:
    """The page a refused callback answers with: a fixed message, never the request's text."""

    message: Any
    status: int = 400
    retry: bool = True
    #: The user declined at Slice's consent page: not an error.
    denied: bool = False


MALFORMED = _("The link request was malformed.")
Refusal = services.Refusal
#: What the user sees for each reason :func:`services.complete_link` gives.
REFUSAL_PAGES: dict[services.Refusal, RefusalPage] = {
    Refusal.NOT_LOGGED_IN: RefusalPage(
        _("Please log in, then link your Slice account again."), 403
    ),
    Refusal.MALFORMED: RefusalPage(MALFORMED),
    Refusal.NO_STATE: RefusalPage(_("The link request is missing its security check.")),
    Refusal.UNKNOWN_ATTEMPT: RefusalPage(
        _("This link request is unknown or was already used. Please start again.")
    ),
    Refusal.OTHER_USER: RefusalPage(_("This link request was started by someone else."), 403),
    Refusal.EXPIRED: RefusalPage(_("This link request expired. Please start again.")),
    Refusal.WRONG_ISSUER: RefusalPage(_("The link request came from an unexpected server.")),
    Refusal.BAD_CODE: RefusalPage(_("The authorization code is malformed.")),
    Refusal.DENIED: RefusalPage(ERROR_MESSAGES["access_denied"], 200, denied=True),
    Refusal.NO_CODE: RefusalPage(_("Slice sent you back without an authorization code.")),
    Refusal.ALREADY_USED: RefusalPage(ALREADY_USED, 409),
    Refusal.CODE_REFUSED: RefusalPage(
        _("The authorization from Slice expired before it could be used. Please try again.")
    ),
    Refusal.MISCONFIGURED: RefusalPage(
        _("This site's connection to Slice is misconfigured. Please tell the site owner."),
        502,
        retry=False,
    ),
    Refusal.UNAVAILABLE: RefusalPage(
        _("Slice is not available right now. Please try again in a moment."), 502
    ),
    Refusal.UNUSABLE_ANSWER: RefusalPage(_("Slice sent an answer this site cannot use."), 502),
}


def refusal_page(refused: services.LinkRefused) -> RefusalPage:
    if refused.reason is Refusal.SLICE_ERROR:
        return RefusalPage(ERROR_MESSAGES.get(refused.error, GENERIC_ERROR))
    return REFUSAL_PAGES[refused.reason]


@method_decorator(SELF_PROTECTED_GET_ONLY, name="dispatch")
class CallbackView(View):
    """Slice sends the user back here with ``code`` and ``state`` (or ``error``).

    :func:`services.complete_link` does the work; this view turns its answer into a
    redirect or an error page.
    """

    http_method_names = ["get"]
    template_name = "slice_connect/error.html"

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = super().dispatch(request, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        response["Referrer-Policy"] = "no-referrer"
        return response

    def get(self, request: HttpRequest) -> HttpResponse:
        try:
            target = services.complete_link(request, request.GET)
        except services.LinkRefused as refused:
            return self.error_page(request, refusal_page(refused))
        return HttpResponseRedirect(target)

    def error_page(self, request: HttpRequest, page: RefusalPage) -> HttpResponse:
        """Render the error page: a fixed message and a way to try again."""
        context = {
            "message": page.message,
            "denied": page.denied,
            "retry": page.retry and request.user.is_authenticated,
            "home_url": default_next(),
        }
        return render(request, self.template_name, context, status=page.status)


@method_decorator(SELF_PROTECTED, name="dispatch")
class UnlinkView(LoginRequiredMixin, View):
    """POST (with CSRF) to unlink the user's Slice account.

    Any other method answers 405; for GET (a person who followed a link) the 405 carries a
    confirmation page with the POST form, so nothing changes without a deliberate click.
    """

    http_method_names = ["post"]
    template_name = "slice_connect/unlink.html"

    def http_method_not_allowed(
        self, request: HttpRequest, *args: Any, **kwargs: Any
    ) -> HttpResponse:
        response = super().http_method_not_allowed(request, *args, **kwargs)
        if request.method not in ("GET", "HEAD"):
            return response
        next_url = safe_next(request, request.GET.get("next"))
        context = {
            "next": next_url or "",
            "cancel_url": next_url or default_next(),
            "credential": services.credential_of(request.user),
        }
        page = render(request, self.template_name, context, status=405)
        page["Allow"] = response["Allow"]
        return page

    def post(self, request: HttpRequest) -> HttpResponse:
        if not services.unlink_user(request.user, request=request):
            logger.info("Unlink requested by user %s, who has no credential.", request.user.pk)
            messages.info(request, _("Your Slice account was not linked."), fail_silently=True)
        else:
            messages.success(
                request, _("Your Slice account is no longer linked."), fail_silently=True
            )
        target = safe_next(request, request.POST.get("next")) or default_next()
        return HttpResponseRedirect(target)
