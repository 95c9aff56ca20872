"""Middleware of the example project."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect


class CanonicalHostMiddleware:
    """Send visitors of ``localhost`` to ``127.0.0.1``.

    The OAuth redirect URI registered with the sandbox is on 127.0.0.1, and the session
    cookie that holds the link attempt is per host: starting on localhost and coming back
    on 127.0.0.1 would lose the attempt.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name, _sep, port = request.get_host().partition(":")
        if name == "localhost" and request.method in ("GET", "HEAD"):
            host = getattr(settings, "DEMO_HOST", "127.0.0.1")
            netloc = f"{host}:{port}" if port else host
            return HttpResponseRedirect(f"{request.scheme}://{netloc}{request.get_full_path()}")
        return self.get_response(request)
