"""SliceClient and AsyncSliceClient: the Slice REST API on a user's behalf.

Both renew tokens themselves through the one locked :func:`services.renew` (the async client
runs it off the event loop) and send every request through :mod:`slice_connect.http`: the
same wall-clock deadline, decoded and capped bodies, failure classification and same-origin
redirect rule. The sync client is built on ``requests``; the async one on ``httpx``, whose
``AsyncClient`` never blocks the event loop (see the docs for why httpx).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import requests
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.views.decorators.debug import sensitive_variables

from . import http, services
from .conf import app_settings
from .exceptions import ApiError, NeedsReauth, NotLinked, TransientError
from .http import retry_after_seconds
from .models import SliceCredential

logger = logging.getLogger(__name__)

#: Collections that accept ``limit``/``offset``/``since``.
PAGED_COLLECTIONS = ("orders", "items", "shipments")
MAX_REDIRECTS = 3
#: A relative path of plain segments (no scheme, query, dot segments or leading slash).
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")


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


class _Pager:
    """The paging rule of ``iter_collection``, shared by both clients.

    Pages with ``limit``/``offset`` until a page has fewer than ``limit`` rows, as Slice's
    docs describe; stops with :class:`ApiError` when a page repeats the previous one (a
    server ignoring ``offset`` would loop for ever) or after ``API_MAX_PAGES`` pages.
    """

    def __init__(self, resource: str, since: int | None, limit: int, params: Any) -> None:
        if resource not in PAGED_COLLECTIONS:
            raise ValueError(f"{resource!r} is not one of {', '.join(PAGED_COLLECTIONS)}.")
        if not 0 < limit <= 1000:
            raise ValueError("limit must be between 1 and 1000.")
        self.resource, self.since, self.limit, self.params = resource, since, limit, params
        self.offset = 0
        self.pages_left = app_settings.API_MAX_PAGES
        self.previous: str | None = None
        self.done = False

    def query(self) -> dict[str, Any]:
        """The next page's query, or :class:`ApiError` past ``API_MAX_PAGES``."""
        if self.pages_left == 0:
            raise ApiError(
                f"Stopped paging {self.resource} after {app_settings.API_MAX_PAGES} pages "
                "(API_MAX_PAGES).",
                status_code=200,
                code="too_many_pages",
            )
        self.pages_left -= 1
        query = dict(self.params, limit=self.limit, offset=self.offset)
        if self.since is not None:
            query["since"] = self.since
        return query

    def rows(self, content: bytes) -> list[Any]:
        """The page's rows; decides whether another page follows."""
        body = _decode(content, 200)
        rows = body.get("result") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise ApiError("Slice returned a page without a result list.", status_code=200)
        digest = hashlib.sha256(content).hexdigest()
        if rows and digest == self.previous:
            raise ApiError(
                f"Slice returned the same page of {self.resource} twice; stopped paging.",
                status_code=200,
                code="repeated_page",
            )
        self.previous = digest
        self.done = len(rows) < self.limit
        self.offset += len(rows)
        return rows


def _decode(content: bytes, status: int) -> Any:
    try:
        return http.decode_json(content)
    except ValueError:
        raise ApiError("Slice API answered with invalid JSON.", status_code=status) from None


def _raise_for_status(response: requests.Response | httpx.Response) -> None:
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


def _is_redirect(response: requests.Response | httpx.Response) -> bool:
    return response.status_code in (301, 302, 303, 307, 308) and "Location" in response.headers


class _BaseClient:
    """What both clients share: the credential, URLs, headers and the redirect rule."""

    credential: SliceCredential

    def __repr__(self) -> str:
        return f"<{type(self).__name__} credential={self.credential.pk}>"

    def url_for(self, path: str) -> str:
        """Resolve ``path`` against ``API_BASE_URL``; refuse URLs on any other origin."""
        base = app_settings.API_BASE_URL
        if path.startswith(("//", "\\")) or "\\" in path:
            raise ValueError("Refusing a scheme-relative or backslashed API path.")
        if _PLAIN_PATH.fullmatch(path):
            return base + path  # "orders", "users/self": the common case, no parsing
        url = urljoin(base, path)
        if _origin(url) != _origin(base):
            raise ValueError("Refusing to send the Slice token to another origin.")
        return url

    def _needs_renewal(self) -> bool:
        credential = self.credential
        if not credential.is_active:
            raise NeedsReauth(
                "This Slice link needs the user to link again.", reason=credential.status_reason
            )
        token = credential.access_token
        return credential.access_token_expiring() or not isinstance(token, str) or not token

    @sensitive_variables()  # the token and the headers
    def _prepare(self, kwargs: dict[str, Any]) -> tuple[dict[str, str], tuple[float, float]]:
        """Headers (with the bearer token) and the (connect, read) timeout of a call."""
        token = self.credential.access_token
        if not isinstance(token, str) or not token:
            raise TransientError("Slice issued no usable access token.", code="no_access_token")
        self._used_version = self.credential.version
        headers = dict(kwargs.pop("headers", None) or {})
        headers["Authorization"] = f"Bearer {token}"
        headers.setdefault("Accept", "application/json")
        if kwargs.pop("stream", False):
            raise TypeError("Slice clients read every answer (capped); stream=True is refused.")
        kwargs.pop("allow_redirects", None)
        kwargs.pop("follow_redirects", None)
        # Never without a deadline, even if timeout=None is passed.
        return headers, _timeout_pair(kwargs.pop("timeout", None))

    @staticmethod
    def _next_hop(
        url: str, method: str, response: requests.Response | httpx.Response, kwargs: Any
    ) -> tuple[str, str]:
        """Where a redirect leads (same origin only) and with which method."""
        target = urljoin(url, response.headers.get("Location", ""))
        if _origin(target) != _origin(app_settings.API_BASE_URL):
            raise ApiError(
                "Slice redirected to another origin; not followed.",
                status_code=response.status_code,
                code="redirect_off_origin",
            )
        if response.status_code == 303:
            method = "GET"
            kwargs.pop("data", None)
        return target, method


class SliceClient(_BaseClient):
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
                self.credential = SliceCredential.objects.get(user_id=user_or_credential.pk)
            except SliceCredential.DoesNotExist:
                raise NotLinked("This user has not linked a Slice account.") from None
        # Every call goes through slice_connect.http: a wall-clock deadline, bodies decoded
        # and capped, redirects handled here (so the bearer token never goes off-origin).
        self.session = http.mount(session or requests.Session())
        # Settings from the environment (proxies, .netrc, a CA bundle) are the site's to give
        # explicitly on a session it passes in; reading them costs every call.
        self.session.trust_env = False

    def __enter__(self) -> SliceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP session's pooled connections."""
        self.session.close()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send an authorized request and return the (successful) response."""
        url = self.url_for(path)
        if self._needs_renewal():
            services.renew(self.credential)
        response = self._send(method, url, **kwargs)
        if response.status_code == 401:
            # Slice may have revoked the access token early; renew once (unless a sibling
            # already did) and retry once. Never more: no loops.
            services.renew_with_result(self.credential, seen_version=self._used_version)
            response = self._send(method, url, **kwargs)
        _raise_for_status(response)
        return response

    def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params``; return the decoded JSON body."""
        response = self.request("GET", path, params=params or None)
        return _decode(response.content, response.status_code)

    def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        """POST a form-encoded body (Slice ignores JSON bodies); return the decoded JSON."""
        response = self.request("POST", path, data=data)
        return _decode(response.content, response.status_code)

    def iter_collection(
        self, resource: str, *, since: int | None = None, limit: int = 100, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Yield every row of ``orders``, ``items`` or ``shipments``, page by page.

        Pages until one returns fewer than ``limit`` rows, as Slice's docs describe. Stops
        with :class:`ApiError` (code ``repeated_page``) when a page repeats the previous one
        (a server ignoring ``offset`` would loop for ever) and (code ``too_many_pages``)
        after ``API_MAX_PAGES`` pages.
        """
        pager = _Pager(resource, since, limit, params)
        while not pager.done:
            yield from pager.rows(self.request("GET", resource, params=pager.query()).content)

    @sensitive_variables()  # the token, the headers, and the HTTP stack's frames below
    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers, timeout = self._prepare(kwargs)
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
            if not _is_redirect(response):
                return response
            url, method = self._next_hop(url, method, response, kwargs)
        raise ApiError("Too many redirects.", status_code=response.status_code, code="redirects")


class AsyncSliceClient(_BaseClient):
    """:class:`SliceClient` for async code: ``async with AsyncSliceClient(user) as slice``.

    The same semantics, errors, same-origin rule, size cap and wall-clock deadline; HTTP
    never blocks the event loop, and renewal goes through the one locked
    :func:`services.renew`, run in a worker thread, so sync and async callers together
    cause one refresh per rotation. A user (``await request.auser()``) or a credential
    loaded in async code works.
    """

    def __init__(
        self,
        user_or_credential: AbstractBaseUser | SliceCredential | Any,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._target = user_or_credential
        self._own_client = client is None
        self._client = client
        if isinstance(user_or_credential, SliceCredential):
            self.credential = user_or_credential

    @property
    def client(self) -> httpx.AsyncClient:
        """The ``httpx.AsyncClient`` (made by ``async with`` unless one was passed in)."""
        if self._client is None:
            raise RuntimeError("Use AsyncSliceClient as `async with AsyncSliceClient(...)`.")
        return self._client

    async def __aenter__(self) -> AsyncSliceClient:
        if self._client is None:
            self._client = await http.new_async_client()
        if not hasattr(self, "credential"):
            try:
                self.credential = await SliceCredential.objects.aget(user_id=self._target.pk)
            except SliceCredential.DoesNotExist:
                raise NotLinked("This user has not linked a Slice account.") from None
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client's pooled connections (unless it was passed in)."""
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send an authorized request and return the (successful) response."""
        if not hasattr(self, "credential") or self._client is None:
            raise RuntimeError("Use AsyncSliceClient as `async with AsyncSliceClient(...)`.")
        url = self.url_for(path)
        if self._needs_renewal():
            await sync_to_async(services.renew)(self.credential)
        response = await self._send(method, url, **kwargs)
        if response.status_code == 401:
            await sync_to_async(services.renew_with_result)(
                self.credential, seen_version=self._used_version
            )
            response = await self._send(method, url, **kwargs)
        _raise_for_status(response)
        return response

    async def get(self, path: str, **params: Any) -> Any:
        """GET ``path`` with query ``params``; return the decoded JSON body."""
        response = await self.request("GET", path, params=params or None)
        return _decode(response.content, response.status_code)

    async def post(self, path: str, data: dict[str, Any] | None = None) -> Any:
        """POST a form-encoded body (Slice ignores JSON bodies); return the decoded JSON."""
        response = await self.request("POST", path, data=data)
        return _decode(response.content, response.status_code)

    async def aiter_collection(
        self, resource: str, *, since: int | None = None, limit: int = 100, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """``async for row in client.aiter_collection("orders")``: see ``iter_collection``."""
        pager = _Pager(resource, since, limit, params)
        while not pager.done:
            response = await self.request("GET", resource, params=pager.query())
            for row in pager.rows(response.content):
                yield row

    @sensitive_variables()  # the token, the headers, and the HTTP stack's frames below
    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers, timeout = self._prepare(kwargs)
        for _hop in range(MAX_REDIRECTS + 1):
            response = await http.asend(
                method,
                url,
                headers=headers,
                timeout=timeout,
                limit=app_settings.API_MAX_RESPONSE_BYTES,
                what="Slice API call",
                client=self.client,
                **kwargs,
            )
            if not _is_redirect(response):
                return response
            url, method = self._next_hop(url, method, response, kwargs)
        raise ApiError("Too many redirects.", status_code=response.status_code, code="redirects")
