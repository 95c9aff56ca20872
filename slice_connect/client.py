"""SliceClient: calls to the Slice REST API on a user's behalf, renewing tokens itself."""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from django.contrib.auth.models import AbstractBaseUser
from django.views.decorators.debug import sensitive_variables

from . import http, services
from .conf import app_settings
from .exceptions import ApiError, NeedsReauth, NotLinked, TransientError
from .fields import UnreadableToken
from .http import retry_after_seconds
from .models import SliceCredential

logger = logging.getLogger(__name__)

#: Collections that accept ``limit``/``offset``/``since``.
PAGED_COLLECTIONS = ("orders", "items", "shipments")
MAX_REDIRECTS = 3


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _timeout_pair(timeout: Any) -> tuple[float, float]:
    """A caller's ``timeout`` as (connect, read); the configured one when it is unusable."""
    parts = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    try:
        connect, read = (float(part) for part in parts)
    except (TypeError, ValueError):
        return app_settings.HTTP_TIMEOUT
    if not all(math.isfinite(t) and t > 0 for t in (connect, read)):
        return app_settings.HTTP_TIMEOUT
    return connect, read


class SliceClient:
    """Authorized access to ``API_BASE_URL`` for one user.

    ``SliceClient(user)`` or ``SliceClient(credential)``. Paths are relative to
    ``API_BASE_URL`` (absolute ``href`` values from Slice are accepted when they point at the
    same origin). The access token is renewed through :func:`services.renew` when it is about
    to expire, and once more if Slice answers 401.
    """

    def __init__(
        self,
        user_or_credential: AbstractBaseUser | SliceCredential | Any,
        *,
        session: requests.Session | None = None,
    ) -> None:
        if isinstance(user_or_credential, SliceCredential):
            self.credential = user_or_credential
        else:
            try:
                self.credential = SliceCredential.objects.get(user=user_or_credential)
            except SliceCredential.DoesNotExist:
                raise NotLinked("This user has not linked a Slice account.") from None
        # Every call goes through slice_connect.http: a wall-clock deadline, bodies decoded
        # and capped, redirects handled here (so the bearer token never goes off-origin).
        self.session = http.mount(session or requests.Session())

    def __repr__(self) -> str:
        return f"<SliceClient credential={self.credential.pk}>"

    def __enter__(self) -> SliceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session's pooled connections."""
        self.session.close()

    # -- public API --------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send an authorized request and return the (successful) response."""
        url = self.url_for(path)
        self._ensure_fresh()
        response = self._send(method, url, **kwargs)
        if response.status_code == 401:
            # Slice may have revoked the access token early; renew once (unless a sibling
            # already did) and retry once. Never more: no loops.
            response.close()
            services.renew_with_result(self.credential, seen_version=self._used_version)
            response = self._send(method, url, **kwargs)
        self._raise_for_status(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params``; return the decoded JSON body."""
        return self._json(self.request("GET", path, params=params or None))

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        """POST a form-encoded body (Slice ignores JSON bodies); return the decoded JSON."""
        return self._json(self.request("POST", path, data=data))

    def iter_collection(
        self, resource: str, *, since: int | None = None, limit: int = 100, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield every row of ``orders``, ``items`` or ``shipments``, page by page.

        Pages until one returns fewer than ``limit`` rows, as Slice's docs describe. Stops
        with :class:`ApiError` (code ``repeated_page``) when a page repeats the previous one
        (a server ignoring ``offset`` would loop for ever) and (code ``too_many_pages``)
        after ``API_MAX_PAGES`` pages.
        """
        if resource not in PAGED_COLLECTIONS:
            raise ValueError(f"{resource!r} is not one of {', '.join(PAGED_COLLECTIONS)}.")
        if not 0 < limit <= 1000:
            raise ValueError("limit must be between 1 and 1000.")
        max_pages = app_settings.API_MAX_PAGES
        offset = 0
        previous: str | None = None
        for _page in range(max_pages):
            query = dict(params, limit=limit, offset=offset)
            if since is not None:
                query["since"] = since
            response = self.request("GET", resource, params=query)
            rows = self._json(response)
            rows = rows.get("result") if isinstance(rows, dict) else None
            if not isinstance(rows, list):
                raise ApiError("Slice returned a page without a result list.", status_code=200)
            digest = hashlib.sha256(response.content).hexdigest()
            if rows and digest == previous:
                raise ApiError(
                    f"Slice returned the same page of {resource} twice; stopped paging.",
                    status_code=200,
                    code="repeated_page",
                )
            previous = digest
            yield from rows
            if len(rows) < limit:
                return
            offset += len(rows)
        raise ApiError(
            f"Stopped paging {resource} after {max_pages} pages (API_MAX_PAGES).",
            status_code=200,
            code="too_many_pages",
        )

    def url_for(self, path: str) -> str:
        """Resolve ``path`` against ``API_BASE_URL``; refuse URLs on any other origin."""
        base = app_settings.API_BASE_URL
        if path.startswith(("//", "\\")) or "\\" in path:
            raise ValueError("Refusing a scheme-relative or backslashed API path.")
        url = urljoin(base, path)
        if _origin(url) != _origin(base):
            raise ValueError("Refusing to send the Slice token to another origin.")
        return url

    # -- internals ---------------------------------------------------------------------

    def _ensure_fresh(self) -> None:
        credential = self.credential
        if not credential.is_active:
            raise NeedsReauth(
                "This Slice link needs the user to link again.", reason=credential.status_reason
            )
        if credential.access_token_expiring() or isinstance(
            credential.access_token, UnreadableToken
        ):
            services.renew(credential)

    @sensitive_variables()  # the token, the headers, and the HTTP stack's frames below
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        token = self.credential.access_token
        if not isinstance(token, str) or not token:
            services.renew(self.credential)
            token = self.credential.access_token
            if not isinstance(token, str) or not token:
                raise TransientError("Slice issued no usable access token.", code="no_access_token")
        self._used_version = self.credential.version
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = f"Bearer {token}"
        headers.setdefault("Accept", "application/json")
        if kwargs.pop("stream", False):
            raise TypeError("SliceClient reads every answer (capped); stream=True is refused.")
        kwargs.pop("allow_redirects", None)
        # One deadline for the whole call; never without one, even if timeout=None is passed.
        timeout = _timeout_pair(kwargs.pop("timeout", None))
        for _hop in range(MAX_REDIRECTS + 1):
            response = http.send(
                method,
                url,
                headers=headers,
                timeout=timeout,
                limit=app_settings.API_MAX_RESPONSE_BYTES,
                what="Slice API call",
                session=self.session,
                **kwargs,
            )
            if not response.is_redirect:
                return response
            target = urljoin(url, response.headers.get("Location", ""))
            if _origin(target) != _origin(app_settings.API_BASE_URL):
                raise ApiError(
                    "Slice redirected to another origin; not followed.",
                    status_code=response.status_code,
                    code="redirect_off_origin",
                )
            url = target
            if response.status_code == 303:
                method = "GET"
                kwargs.pop("data", None)
        raise ApiError("Too many redirects.", status_code=response.status_code, code="redirects")

    @staticmethod
    def _raise_for_status(response: requests.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        if status == 429 or status >= 500:
            raise TransientError(
                f"Slice API answered HTTP {status}.",
                code=f"http_{status}",
                retry_after=retry_after_seconds(response),
            )
        raise ApiError(f"Slice API answered HTTP {status}.", status_code=status)

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return http.decode_json(response.content)
        except ValueError:
            raise ApiError(
                "Slice API answered with invalid JSON.", status_code=response.status_code
            ) from None
