"""Compress the sandbox's answers the way infrastructure in front of Slice may.

``SLICE_SANDBOX["COMPRESS"]`` (read on every request, so tests can switch it):

* ``""`` -- off (the default);
* ``"django"`` -- Django's own ``GZipMiddleware``: gzip when the client accepts it and the
  body is 200 bytes or more (what a site or nginx with ``gzip on`` does);
* ``"gzip"`` / ``"deflate"`` -- every answer of the OAuth and API endpoints, however small,
  whatever the client asked for (what some CDNs and proxies do).

Only the sandbox's own endpoints (``/oauth/`` and ``/api/``) are compressed.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.middleware.gzip import GZipMiddleware

from .conf import sandbox_setting

PREFIXES = ("/oauth/", "/api/")


class CompressAnswersMiddleware:
    """See the module docstring."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.django_gzip = GZipMiddleware(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        mode = sandbox_setting("COMPRESS") or ""
        if not mode or not request.path.startswith(PREFIXES):
            return self.get_response(request)
        if mode == "django":
            return self.django_gzip(request)
        response = self.get_response(request)
        if response.streaming or response.has_header("Content-Encoding"):
            return response
        if mode == "gzip":
            response.content = gzip.compress(response.content, mtime=0)
        elif mode == "deflate":
            response.content = zlib.compress(response.content)
        else:
            raise ValueError(f"Unknown SLICE_SANDBOX['COMPRESS']: {mode!r}")
        response["Content-Encoding"] = mode
        response["Content-Length"] = str(len(response.content))
        return response
